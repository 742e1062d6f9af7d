//! `engine generate`: bulk generation from a prompts file over an exported ONNX decoder, with a
//! KV cache shared in place by GroupQueryAttention, continuous batching, and output that is
//! identical whatever the batch size, thread count, shard split or resume point.
//!
//! `engine merge`: shard outputs joined back into the prompts file's order.

pub mod backend;
pub mod beam;
pub mod budget;
pub mod cli;
pub mod config;
pub mod device;
mod float_prefill;
pub mod kv;
pub(crate) mod kv_quant;
pub mod pipeline;
pub mod prompts;
pub mod scheduler;
pub mod stop;

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use exports::records::{GenerationRecord, JsonlAppender};
use exports::{ModelConfig, Tokenizer};

pub use config::{BatchSize, ChatTemplateMode, Device, GenerateConfig, MergeConfig, Shard};
use pipeline::{Counters, StageCtx};

use crate::runtime::Runtime;

/// What a run did (printed as the final line on stderr).
#[derive(Debug, Clone)]
pub struct Summary {
    pub prompts: usize,
    pub resumed: usize,
    pub invalid: usize,
    pub truncated: usize,
    pub new_tokens: u64,
    /// Wall time of the run, session loading included.
    pub seconds: f64,
    /// Session loading (the longest of the devices'), excluded from tokens/s.
    pub load_seconds: f64,
    /// Cache slots per device (the largest of the devices' when `--batch-size auto` chose).
    pub batch_size: usize,
    /// Whether `--batch-size auto` chose `batch_size`.
    pub batch_auto: bool,
    pub threads: usize,
    pub devices: usize,
    /// The copy counter (`--verbose`).
    pub transfers: Option<backend::TransferLog>,
}

impl Summary {
    pub fn tokens_per_second(&self) -> f64 {
        self.new_tokens as f64 / (self.seconds - self.load_seconds).max(1e-9)
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "generated {} prompts, {} new tokens in {:.1}s + {:.1}s loading ({:.1} tokens/s), batch size {}{}, {} threads, {} device(s)",
            self.prompts,
            self.new_tokens,
            self.seconds - self.load_seconds,
            self.load_seconds,
            self.tokens_per_second(),
            self.batch_size,
            if self.batch_auto { " (auto)" } else { "" },
            self.threads,
            self.devices
        )?;
        if self.resumed > 0 {
            write!(f, "; {} already done (resumed)", self.resumed)?;
        }
        if self.invalid > 0 {
            write!(f, "; {} invalid prompts skipped", self.invalid)?;
        }
        if self.truncated > 0 {
            write!(f, "; {} prompts truncated from the left", self.truncated)?;
        }
        if let Some(t) = &self.transfers {
            write!(f, "; {t}")?;
        }
        Ok(())
    }
}

fn progress_bar(cfg: &GenerateConfig, total: u64) -> indicatif::ProgressBar {
    if !cfg.progress {
        return indicatif::ProgressBar::hidden();
    }
    // `stderr()` draws nothing when stderr is not a terminal (logs, batch jobs).
    let bar = indicatif::ProgressBar::with_draw_target(
        Some(total),
        indicatif::ProgressDrawTarget::stderr(),
    );
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:30} {pos}/{len} prompts  {msg}  {elapsed} (ETA {eta})",
        )
        .expect("a valid template"),
    );
    bar.enable_steady_tick(Duration::from_millis(500));
    bar
}

/// Generate responses for every prompt of `cfg.prompts` into `cfg.out`.
pub fn run(cfg: &GenerateConfig) -> Result<Summary> {
    cfg.validate()?;
    let rt = Runtime::shared(cfg.ort_lib.as_deref())?;
    run_with(rt, cfg)
}

/// [`run`] on an already started runtime (ONNX Runtime allows one environment per process, so a
/// process that generates more than once shares it).
pub fn run_with(rt: &Runtime, cfg: &GenerateConfig) -> Result<Summary> {
    cfg.validate()?;
    let started = Instant::now();
    let tokenizer = Tokenizer::load(&cfg.model)?;
    // The whole prompt file, before anything expensive loads.
    let checked = prompts::check(cfg, &tokenizer)?;
    let model_cfg = if cfg.model.join("config.json").is_file() {
        Some(ModelConfig::load(&cfg.model)?)
    } else {
        None
    };
    let context = model_cfg
        .as_ref()
        .map_or(usize::MAX / 2, |c| c.max_position_embeddings);
    if cfg.max_new_tokens >= context {
        bail!(
            "--max-new-tokens {} leaves no room for a prompt in the model's context of {context}",
            cfg.max_new_tokens
        );
    }
    // The EOS set of the one token policy (`exports::encode::TokenPolicy`).
    let eos = tokenizer.policy().stop.clone();
    // Opening the appender first drops a torn last line, so resume sees whole records only.
    if !cfg.resume
        && cfg.out.exists()
        && std::fs::metadata(&cfg.out)
            .map(|m| m.len() > 0)
            .unwrap_or(false)
    {
        bail!(
            "{}: exists and is not empty; pass --resume to continue it, or remove it",
            cfg.out.display()
        );
    }
    let out = JsonlAppender::open(&cfg.out)?;
    let done = if cfg.resume {
        pipeline::existing_ids(&cfg.out)?
    } else {
        Default::default()
    };
    // What the cache must hold: `--batch-size auto` sizes the slots by it, and the cache never
    // grows past its length (fixed-shape decoding allocates the whole context up front).
    let fixed_shape = cfg.fixed_shape || cfg.cuda.cuda_graph;
    // Sequences per prompt, and the fewest slots that can run one prompt (its beams).
    let (per_prompt, min_slots) = match cfg.sampling.decoding {
        crate::sampling::Decoding::Beam { beams } => (beams, beams),
        _ => (cfg.n, 1),
    };
    let demand = budget::Demand {
        seq_len: if checked.longest > 0 && !fixed_shape {
            (checked.longest + cfg.max_new_tokens.max(1)).min(context)
        } else {
            context
        },
        // The devices share the prompts (each takes the next one as a slot frees).
        sequences: (checked.prompts.saturating_sub(done.len()).max(1) * per_prompt)
            .div_ceil(cfg.devices.len()),
        min_slots,
    };
    let counters = Counters::default();
    counters.invalid.store(checked.invalid, Ordering::Relaxed);
    let ctx = StageCtx {
        cfg,
        tokenizer: &tokenizer,
        eos,
        context,
        demand,
        counters: &counters,
    };
    let total = (checked.prompts as u64).saturating_sub(done.len() as u64);
    let bar = progress_bar(cfg, total);
    let results: Vec<Result<()>> = std::thread::scope(|s| {
        let (line_tx, line_rx) = crossbeam_channel::bounded(256);
        let (job_tx, job_rx) = crossbeam_channel::bounded(64);
        let (order_tx, order_rx) = crossbeam_channel::unbounded();
        let (fin_tx, fin_rx) = crossbeam_channel::bounded(64);
        let (rec_tx, rec_rx) = crossbeam_channel::bounded(64);
        let ctx = &ctx;
        let mut handles = vec![
            s.spawn(|| pipeline::read_stage(ctx, &checked, &done, line_tx)),
            s.spawn(move || pipeline::tokenize_stage(ctx, line_rx, job_tx, order_tx)),
        ];
        for &device in &cfg.devices {
            let (rx, tx) = (job_rx.clone(), fin_tx.clone());
            handles.push(s.spawn(move || pipeline::run_stage(ctx, rt, device, rx, tx)));
        }
        drop((job_rx, fin_tx));
        handles.push(s.spawn(move || pipeline::detokenize_stage(ctx, fin_rx, rec_tx)));
        let bar = &bar;
        handles.push(s.spawn(move || pipeline::write_stage(ctx, out, order_rx, rec_rx, bar)));
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a generate stage panicked")))
            })
            .collect()
    });
    bar.finish_and_clear();
    for r in results {
        r?;
    }
    Ok(Summary {
        prompts: counters.written.load(Ordering::Relaxed),
        resumed: counters.resumed.load(Ordering::Relaxed),
        invalid: counters.invalid.load(Ordering::Relaxed),
        truncated: counters.truncated.load(Ordering::Relaxed),
        new_tokens: counters.tokens.load(Ordering::Relaxed),
        seconds: started.elapsed().as_secs_f64(),
        load_seconds: counters.load_ms.load(Ordering::Relaxed) as f64 / 1e3,
        batch_size: counters.slots.load(Ordering::Relaxed),
        batch_auto: cfg.batch_size == BatchSize::Auto,
        threads: cfg.threads(),
        devices: cfg.devices.len(),
        transfers: cfg
            .verbose
            .then(|| *counters.transfers.lock().unwrap_or_else(|p| p.into_inner())),
    })
}

/// What a merge wrote.
#[derive(Debug, Clone)]
pub struct MergeSummary {
    pub records: usize,
    pub missing: usize,
}

impl fmt::Display for MergeSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "merged {} records", self.records)?;
        if self.missing > 0 {
            write!(f, "; {} prompts have no output in any shard", self.missing)?;
        }
        Ok(())
    }
}

/// Join shard outputs into the prompts file's order (ids looked up in `cfg.prompts`; prompt
/// lines that do not parse are passed over, as `--skip-invalid` did).
pub fn merge(cfg: &MergeConfig) -> Result<MergeSummary> {
    let mut by_id: HashMap<String, GenerationRecord> = HashMap::new();
    for shard in &cfg.shards {
        for r in exports::records::read_jsonl::<GenerationRecord>(shard)? {
            if by_id.contains_key(&r.id) {
                bail!(
                    "{}: id `{}` appears in more than one shard output",
                    shard.display(),
                    r.id
                );
            }
            by_id.insert(r.id.clone(), r);
        }
    }
    let mut ordered = Vec::with_capacity(by_id.len());
    let mut missing = 0;
    exports::records::for_each_parsed::<exports::PromptRecord>(
        &cfg.prompts,
        |_, p| {
            match by_id.remove(&p.id) {
                Some(r) => ordered.push(r),
                None => missing += 1,
            }
            Ok(())
        },
        |_, _| Ok(()),
    )
    .with_context(|| format!("reading {}", cfg.prompts.display()))?;
    if let Some(id) = by_id.keys().next() {
        bail!(
            "shard outputs hold id `{id}`, which is not in {}",
            cfg.prompts.display()
        );
    }
    exports::records::write_jsonl(&cfg.out, &ordered)?;
    Ok(MergeSummary {
        records: ordered.len(),
        missing,
    })
}
