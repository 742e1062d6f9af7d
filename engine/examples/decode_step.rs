//! The decode step of several exported folders, alternated in one process (a benchmark, not the
//! product): every slot prefilled with the same pseudo-random prompt of `--past` tokens, then
//! rounds of `--steps` decode steps per folder in turn, all rows moving one position a step.
//! Prints the median and the rounds' ms per step for each folder, and each one's ratio to the
//! first. One process, interleaved rounds: this VM's speed drifts by ±15 % between runs.
//!
//! cargo run --release -p engine --example decode_step -- [--batch 64] [--past 250] \
//!     [--steps 4] [--rounds 7] [--threads 2] DIR...

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use engine::generate::backend::{Backend, BackendConfig, StepRow};
use engine::generate::device::MoverChoice;
use engine::runtime::Runtime;
use engine::session::SessionOptions;
use exports::TokenId;

fn main() -> Result<()> {
    let (mut batch, mut past, mut steps, mut rounds, mut threads) = (64, 250, 4, 7, 2);
    let mut dirs = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut num = |name: &str| -> Result<usize> {
            args.next()
                .with_context(|| format!("{name} needs a value"))?
                .parse()
                .with_context(|| format!("{name} takes a number"))
        };
        match a.as_str() {
            "--batch" => batch = num("--batch")?,
            "--past" => past = num("--past")?,
            "--steps" => steps = num("--steps")?,
            "--rounds" => rounds = num("--rounds")?,
            "--threads" => threads = num("--threads")?,
            _ if a.starts_with("--") => bail!("unknown flag {a}"),
            _ => dirs.push(PathBuf::from(a)),
        }
    }
    if dirs.is_empty() {
        bail!("name at least one exported folder");
    }
    let rt = Runtime::shared(None)?;
    let max_len = past + steps * (rounds + 1) + 1;
    let prompt: Vec<TokenId> = (0..past as u32)
        .map(|i| TokenId((i.wrapping_mul(2_654_435_761) >> 8) % 20_000 + 100))
        .collect();
    let mut sides = Vec::new();
    for dir in &dirs {
        let mut b = Backend::load(
            rt,
            &BackendConfig {
                model: dir.clone(),
                session: SessionOptions {
                    threads,
                    ..SessionOptions::default()
                },
                slots: batch,
                max_len,
                fixed_shape: false,
                mover: MoverChoice::Auto,
            },
        )
        .with_context(|| format!("loading {}", dir.display()))?;
        for slot in 0..batch {
            b.prefill(slot, &prompt)?;
        }
        let rows: Vec<Option<StepRow>> = (0..batch)
            .map(|_| {
                Some(StepRow {
                    token: TokenId(42),
                    pos: past,
                })
            })
            .collect();
        b.decode(&rows)?; // warm-up
        sides.push((b, rows, Vec::new()));
    }
    for _ in 0..rounds {
        for (b, rows, times) in &mut sides {
            let t0 = Instant::now();
            for _ in 0..steps {
                for r in rows.iter_mut().flatten() {
                    r.pos += 1;
                }
                b.decode(rows)?;
            }
            times.push(t0.elapsed().as_secs_f64() * 1e3 / steps as f64);
        }
    }
    let median = |t: &[f64]| {
        let mut t = t.to_vec();
        t.sort_by(f64::total_cmp);
        t[t.len() / 2]
    };
    let base = median(&sides[0].2);
    for (dir, (_, _, times)) in dirs.iter().zip(&sides) {
        let m = median(times);
        let rounds: Vec<String> = times.iter().map(|t| format!("{t:.1}")).collect();
        println!(
            "{}: batch {batch}, past {past}: {m:.1} ms/step median ({}), {:.2}x the first",
            dir.display(),
            rounds.join(" "),
            base / m
        );
    }
    Ok(())
}
