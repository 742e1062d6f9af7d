//! The stages of `engine generate`, linked by bounded channels so the model never waits on I/O:
//! read → tokenize → run (one per device; owns its session) → detokenize → write.
//! A stage whose downstream has gone stops quietly; the error that made it go is the one reported.

use std::cell::Cell;
use std::collections::{BTreeMap, HashSet, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use anyhow::{anyhow, Context, Result};
use crossbeam_channel::{Receiver, Sender, TryRecvError};
use exports::records::{for_each_parsed, GenerationRecord, JsonlAppender, Location, Response};
use exports::{PromptRecord, TokenId, Tokenizer, Truncation};

use super::backend::{Backend, BackendConfig};
use super::budget;
use super::config::{BatchSize, ChatTemplateMode, Device, GenerateConfig};
use super::prompts::Checked;
use super::scheduler::{Finished, Job, Scheduler, SchedulerConfig};
use super::stop::{response_text, Stopper};
use crate::runtime::Runtime;

/// A prompt record that parsed, with where it came from.
pub struct Line {
    pub index: usize,
    pub at: Location,
    pub record: PromptRecord,
}

/// Counters shared by the stages.
#[derive(Default)]
pub struct Counters {
    pub invalid: AtomicUsize,
    pub resumed: AtomicUsize,
    pub truncated: AtomicUsize,
    pub written: AtomicUsize,
    pub tokens: AtomicU64,
    /// Cache slots of the devices' backends (the largest).
    pub slots: AtomicUsize,
    /// Longest session load of any device (ms), kept apart from generation time.
    pub load_ms: AtomicU64,
    /// The copy counters of the devices' backends, summed as each stage ends.
    pub transfers: std::sync::Mutex<super::backend::TransferLog>,
}

/// Everything the stages read.
pub struct StageCtx<'a> {
    pub cfg: &'a GenerateConfig,
    pub tokenizer: &'a Tokenizer,
    pub eos: Vec<TokenId>,
    /// Longest sequence the model takes (its position table).
    pub context: usize,
    /// What the job asks of the cache (its longest sequence bounds the cache's growth).
    pub demand: super::budget::Demand,
    pub counters: &'a Counters,
}

/// Ids already in the output (for `--resume`).
pub fn existing_ids(out: &Path) -> Result<HashSet<String>> {
    if !out.exists() {
        return Ok(HashSet::new());
    }
    let records: Vec<GenerationRecord> = exports::records::read_jsonl(out)?;
    Ok(records.into_iter().map(|r| r.id).collect())
}

/// Stage 1: read prompt records (JSON Lines or Parquet), keep this shard's, skip the ones
/// checking set aside (`--skip-invalid`) and resumed ids.
pub fn read_stage(
    ctx: &StageCtx<'_>,
    checked: &Checked,
    done: &HashSet<String>,
    tx: Sender<Line>,
) -> Result<()> {
    let path = &ctx.cfg.prompts;
    let index = Cell::new(0usize);
    let stopped = Cell::new(false);
    // Each record, good or bad, takes the next input index (shards are cut by it).
    let next = || index.replace(index.get() + 1);
    let outcome = for_each_parsed::<PromptRecord>(
        path,
        |at, record| {
            let this = next();
            if checked.skip.contains(&at) || ctx.cfg.shard.is_some_and(|s| !s.keeps(this)) {
                return Ok(());
            }
            if done.contains(&record.id) {
                ctx.counters.resumed.fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
            if tx
                .send(Line {
                    index: this,
                    at,
                    record,
                })
                .is_err()
            {
                stopped.set(true);
                return Err(exports::Error::Invalid("downstream stopped".into()));
            }
            Ok(())
        },
        |at, message| {
            next();
            if checked.skip.contains(&at) {
                Ok(())
            } else {
                // Checked before the model loaded; only a file changed since then gets here.
                Err(exports::Error::Record {
                    path: path.clone(),
                    at,
                    message,
                })
            }
        },
    );
    match outcome {
        Err(_) if stopped.get() => Ok(()),
        other => Ok(other?),
    }
}

/// Stage 2: token ids by the DATA.md rule, truncated from the left to leave room for the
/// response. Announces each kept index to the writer, which emits in that order.
pub fn tokenize_stage(
    ctx: &StageCtx<'_>,
    rx: Receiver<Line>,
    tx: Sender<Job>,
    order: Sender<usize>,
) -> Result<()> {
    let path = &ctx.cfg.prompts;
    for Line { index, at, record } in rx {
        let prompt = record.to_prompt();
        let ids = if record.messages.is_some() && ctx.cfg.chat_template == ChatTemplateMode::None {
            Err("`messages` prompt but --chat-template none".to_string())
        } else {
            ctx.tokenizer.prompt_ids(&prompt).map_err(|e| e.to_string())
        };
        let mut ids = match ids {
            Ok(ids) if ids.is_empty() => Err("prompt has no tokens".to_string()),
            other => other,
        }
        .or_else(|message| {
            if ctx.cfg.skip_invalid {
                tracing::warn!("{}{at}: skipped: {message}", path.display());
                ctx.counters.invalid.fetch_add(1, Ordering::Relaxed);
                Ok(Vec::new())
            } else {
                Err(anyhow!("{}{at}: {message}", path.display()))
            }
        })?;
        if ids.is_empty() {
            continue;
        }
        // The one truncation policy: prompt tokens from the left, leaving room for the response.
        let drop = Truncation::Prompt
            .cut(ids.len(), ctx.cfg.max_new_tokens, ctx.context)
            .context("--max-new-tokens leaves no room for a prompt")?;
        if drop > 0 {
            ids.drain(..drop);
            ctx.counters.truncated.fetch_add(1, Ordering::Relaxed);
        }
        if order.send(index).is_err() || tx.send(Job { index, record, ids }).is_err() {
            break;
        }
    }
    Ok(())
}

/// Stage 3: one per device. Owns the session; keeps its slots full while prompts arrive.
pub fn run_stage(
    ctx: &StageCtx<'_>,
    rt: &Runtime,
    device: Device,
    rx: Receiver<Job>,
    tx: Sender<Finished>,
) -> Result<()> {
    let cfg = ctx.cfg;
    let loading = std::time::Instant::now();
    let backend_cfg = BackendConfig {
        model: cfg.model.clone(),
        session: crate::session::SessionOptions {
            device,
            threads: cfg.threads(),
            cuda: cfg.cuda.clone(),
            ..Default::default()
        },
        slots: 0,
        max_len: ctx.demand.seq_len,
        fixed_shape: cfg.fixed_shape,
        mover: Default::default(),
    };
    let backend = Backend::load_with(rt, &backend_cfg, |io| match cfg.batch_size {
        BatchSize::Fixed(n) => Ok(n),
        BatchSize::Auto => {
            // Measured once the weights are in memory, so what is left is what the cache can use.
            let (budget, source) = budget::budget(device, cfg.memory_budget, cfg.cuda.mem_limit)?;
            let plan = budget::choose(
                Backend::kv_bytes_per_token(io)?,
                ctx.demand,
                budget,
                source,
                budget::cap(device),
            )?;
            if cfg.progress {
                eprintln!("{device}: {plan}");
            }
            Ok(plan.slots)
        }
    })?;
    ctx.counters
        .slots
        .fetch_max(backend.slots(), Ordering::Relaxed);
    ctx.counters
        .load_ms
        .fetch_max(loading.elapsed().as_millis() as u64, Ordering::Relaxed);
    let stopper = Stopper::new(
        ctx.tokenizer,
        ctx.eos.clone(),
        cfg.ignore_eos,
        cfg.stop.clone(),
        cfg.max_new_tokens,
    );
    let mut sched = Scheduler::new(
        backend,
        SchedulerConfig {
            sampling: cfg.sampling.clone(),
            n: cfg.n,
            seed: cfg.seed,
            stopper,
        },
    );
    let mut open = true;
    let mut done = Vec::new();
    let mut reported = 0u64;
    'run: loop {
        sched.admit_waiting(&mut done);
        // Start what can start; prompts gathered together share one prefill run.
        loop {
            let capacity = sched.admit_capacity();
            let mut jobs = Vec::new();
            while open && jobs.len() < capacity {
                // Block only when nothing is generating or gathered; else take what has arrived.
                let job = if !sched.busy() && jobs.is_empty() {
                    match rx.recv() {
                        Ok(j) => j,
                        Err(_) => {
                            open = false;
                            break;
                        }
                    }
                } else {
                    match rx.try_recv() {
                        Ok(j) => j,
                        Err(TryRecvError::Empty) => break,
                        Err(TryRecvError::Disconnected) => {
                            open = false;
                            break;
                        }
                    }
                };
                jobs.push(job);
            }
            if jobs.is_empty() {
                break;
            }
            sched.admit_all(jobs, &mut done)?;
        }
        if sched.busy() {
            sched.step(&mut done)?;
        }
        ctx.counters
            .tokens
            .fetch_add(sched.tokens - reported, Ordering::Relaxed);
        reported = sched.tokens;
        for f in done.drain(..) {
            if tx.send(f).is_err() {
                break 'run;
            }
        }
        // Only after the drain: prompts whose responses all ended at admission (their first
        // token, or --max-new-tokens 0 or 1) finish without a decode step, and the last of them
        // would otherwise be dropped with the input's end.
        if !sched.busy() && !open {
            break;
        }
    }
    let t = sched.backend.transfers();
    let mut sum = ctx
        .counters
        .transfers
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    sum.prefill += t.prefill;
    sum.decode += t.decode;
    sum.decode_steps += t.decode_steps;
    sum.last_decode = t.last_decode;
    Ok(())
}

/// Stage 4: token ids to text, cut at stop strings.
pub fn detokenize_stage(
    ctx: &StageCtx<'_>,
    rx: Receiver<Finished>,
    tx: Sender<(usize, GenerationRecord)>,
) -> Result<()> {
    for f in rx {
        let responses = f
            .samples
            .iter()
            .map(|s| {
                Ok(Response {
                    text: response_text(ctx.tokenizer, &s.tokens, s.finish, &ctx.cfg.stop)?,
                    tokens: s.tokens.len(),
                    finish_reason: s.finish,
                    extra: Default::default(),
                })
            })
            .collect::<exports::Result<Vec<_>>>()?;
        // The prompt record's own extra fields are carried into its output record.
        let seconds = if ctx.cfg.timings { f.seconds } else { 0.0 };
        let record = GenerationRecord::of(f.record, responses, seconds);
        if tx.send((f.index, record)).is_err() {
            break;
        }
    }
    Ok(())
}

/// Stage 5: append one flushed line per prompt, in input order (completions that arrive early
/// wait in a buffer).
pub fn write_stage(
    ctx: &StageCtx<'_>,
    mut out: JsonlAppender,
    order: Receiver<usize>,
    rx: Receiver<(usize, GenerationRecord)>,
    bar: &indicatif::ProgressBar,
) -> Result<()> {
    let mut expected: VecDeque<usize> = VecDeque::new();
    let mut waiting: BTreeMap<usize, GenerationRecord> = BTreeMap::new();
    for (index, record) in rx {
        waiting.insert(index, record);
        expected.extend(order.try_iter());
        while let Some(next) = expected.front() {
            let Some(record) = waiting.remove(next) else {
                break;
            };
            out.append(&record)?;
            expected.pop_front();
            ctx.counters.written.fetch_add(1, Ordering::Relaxed);
            bar.inc(1);
        }
        let tokens = ctx.counters.tokens.load(Ordering::Relaxed);
        let secs = bar.elapsed().as_secs_f64().max(1e-9);
        bar.set_message(format!("{:.1} tok/s", tokens as f64 / secs));
    }
    Ok(())
}
