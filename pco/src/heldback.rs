//! `scripts/eval-heldback`: every model of a run on held-back contexts — test-split contexts
//! (documents never trained on) that are not among the run's own test examples — with the run's
//! own settings from `run.toml` (corpus, context size, split, generation), as resumable stages.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use exports::records::GenerationRecord;
use exports::run_layout::RunLayout;

use crate::settings::Settings;
use crate::stages::{Bin, Cmd, Resource, Stage, Work};

pub struct Heldback {
    pub split_dir: PathBuf,
    pub prompts: PathBuf,
    /// (model name, ONNX folder, generations, metrics)
    pub models: Vec<(String, PathBuf, PathBuf, PathBuf)>,
}

pub fn layout(run: &RunLayout, st: &Settings) -> Heldback {
    let dir = run.heldback_dir(&st.eval.heldback_out);
    let mut models = vec![("sft".to_string(), run.sft_onnx())];
    for (_, its) in run.evaluated() {
        for it in its {
            models.push((it.stage_prefix(), it.onnx()));
        }
    }
    Heldback {
        split_dir: dir.join("split"),
        prompts: dir.join("prompts.jsonl"),
        models: models
            .into_iter()
            .map(|(n, onnx)| {
                let gen = dir.join(format!("{n}.gen.jsonl"));
                let m = dir.join(format!("{n}.metrics.json"));
                (n, onnx, gen, m)
            })
            .collect(),
    }
}

/// The corpus of the held-back contexts: `eval.heldback_text_dir`, else the run's own.
pub fn corpus(st: &Settings) -> &Path {
    if st.eval.heldback_text_dir.as_os_str().is_empty() {
        &st.data.text_dir
    } else {
        &st.eval.heldback_text_dir
    }
}

/// The split stage: the run's own dataset settings, every test context kept.
pub fn split_stage(st: &Settings, h: &Heldback) -> Stage {
    let d = &st.data;
    let args: Vec<String> = vec![
        "dataset".into(),
        "continuation".into(),
        "--text-dir".into(),
        corpus(st).display().to_string(),
        "--out".into(),
        h.split_dir.display().to_string(),
        "--context-sentences".into(),
        d.context_sentences.to_string(),
        "--split".into(),
        format!("{},{},{}", d.split[0], d.split[1], d.split[2]),
        "--limit".into(),
        "train=1,unlabeled=1,test=1000000".into(),
        "--seed".into(),
        d.seed.to_string(),
    ];
    Stage {
        name: format!("{}-split", st.eval.heldback_out),
        settings: args[6..].join(" "),
        inputs: vec![corpus(st).to_path_buf()],
        bins: vec![Bin::Exports],
        outputs: vec![h.split_dir.clone()],
        work: Work::Commands(vec![Cmd {
            bin: Bin::Exports,
            args,
            stdout: None,
        }]),
        resource: Resource::Light,
    }
}

fn id_of(line: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    Some(v.get("id")?.as_str()?.to_string())
}

/// Drop the run's own test ids from the full test split, keep every `every`-th of the rest, at
/// most `count`.
pub fn select_prompts(
    full_test: &Path,
    run_test: &Path,
    every: u32,
    count: u32,
    out: &Path,
) -> Result<usize> {
    let read =
        |p: &Path| std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()));
    let used: HashSet<String> = read(run_test)?.lines().filter_map(id_of).collect();
    let mut text = String::new();
    let mut n = 0;
    let unused = read(full_test)?;
    let unused = unused
        .lines()
        .filter(|l| id_of(l).is_some_and(|id| !used.contains(&id)));
    for (i, line) in unused.enumerate() {
        if (i + 1) % every.max(1) as usize == 0 && n < count as usize {
            text.push_str(line);
            text.push('\n');
            n += 1;
        }
    }
    exports::fsutil::write_atomic(out, text.as_bytes())?;
    Ok(n)
}

/// The results table: Repeat@3, F1 and the count of empty responses per model.
pub fn results_md(run: &RunLayout, st: &Settings, h: &Heldback, n: usize) -> Result<String> {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# Held-back evaluation of `{}`\n\n{n} test-split contexts of `{}` not among the run's test examples; greedy, {} new tokens.\n\n| model | Repeat@3 | F1 | empty responses |\n|---|---:|---:|---:|",
        run.root.display(),
        corpus(st).display(),
        st.generation.max_new_tokens
    );
    for (name, _, gen, metrics) in &h.models {
        let Ok(text) = std::fs::read_to_string(metrics) else {
            continue;
        };
        let m: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{}: not JSON", metrics.display()))?;
        let empty = exports::records::read_jsonl::<GenerationRecord>(gen)?
            .iter()
            .filter(|r| {
                r.responses
                    .first()
                    .is_some_and(|x| x.text.trim().is_empty())
            })
            .count();
        let f = |k: &str| m.get(k).and_then(|v| v.as_f64()).unwrap_or(f64::NAN);
        let _ = writeln!(
            s,
            "| {name} | {:.3} | {:.4} | {empty} |",
            f("repeat@3"),
            f("f1")
        );
    }
    Ok(s)
}
