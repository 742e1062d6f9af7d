//! `training fit` and `training eval`: the training loop (gradient accumulation, AdamW, schedule,
//! clipping, checkpoints, exact resume, metrics) and whole-file evaluation of a loss.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use exports::{Head, Tokenizer};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::amp::Precision;
use crate::data::{collate, plan, CollateConfig, Dataset, EncodeConfig, Item, MicroBatch};
use crate::metrics_log::{metrics_line, MetricsLine, MetricsLog, Progress, StepInfo};
use crate::model::{LoraConfig, Model, Recompute};
use crate::objectives::{
    lm_loss, reward_loss, seq_terms_fused, CringeInputs, FusedTerms, HeadInputs, Layout,
    Normalizers, ObjectiveConfig, StatSums, StepStats, StopGuard,
};
use crate::optim::{AdamW, OptimConfig};
use crate::reference::{self, ReferenceConfig};
use crate::trainer_state::{
    self, CheckpointParts, TrainerState, FINAL_DIR, OPTIMIZER_FILE, RNG_SCHEME, STATE_DIR,
};

/// Everything `training fit` needs; loadable from TOML (`[objective]` and `[optim]` tables).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FitConfig {
    /// Starting model (Hugging Face folder); also the DPO reference and the tokenizer source.
    pub model: PathBuf,
    pub data: Vec<PathBuf>,
    pub out: PathBuf,
    /// Examples per optimizer step (a pair counts once).
    pub batch_size: usize,
    /// Examples per forward/backward pass; gradients are accumulated up to `batch_size`.
    pub micro_batch_size: usize,
    pub epochs: u64,
    /// Stop after this many optimizer steps (overrides `epochs`).
    pub max_steps: Option<u64>,
    pub seed: u64,
    pub device: String,
    /// Write `checkpoint-<step>` every this many steps (the end always writes `final`).
    pub save_every: Option<u64>,
    /// Keep only the newest this many `checkpoint-<step>` folders: each holds the weights and
    /// the optimizer state (three copies of the model), so a long run would otherwise fill the
    /// disk. An older one is deleted only after a newer one is complete; `final` is never deleted.
    pub save_total_limit: Option<usize>,
    /// Longest sequence; defaults to the model's context size capped at 2048.
    pub max_length: Option<usize>,
    pub train_on_prompt: bool,
    /// Continue from the latest checkpoint in `out`.
    pub resume: bool,
    /// fp32, or bf16 autocast (fp32 weights, optimizer and reductions); `auto`: bf16 on CUDA only.
    pub precision: Precision,
    /// Keep only each block's input in the forward and recompute the block in the backward.
    pub gradient_checkpointing: bool,
    pub objective: ObjectiveConfig,
    pub optim: OptimConfig,
    /// LoRA (`[lora]`, `r > 0`): train adapters on the frozen model and save them as PEFT does.
    pub lora: LoraConfig,
}

impl Default for FitConfig {
    fn default() -> Self {
        FitConfig {
            model: PathBuf::new(),
            data: Vec::new(),
            out: PathBuf::new(),
            batch_size: 16,
            micro_batch_size: 4,
            epochs: 1,
            max_steps: None,
            seed: 0,
            device: "cpu".into(),
            save_every: None,
            save_total_limit: None,
            max_length: None,
            train_on_prompt: false,
            resume: false,
            precision: Precision::Auto,
            gradient_checkpointing: false,
            objective: ObjectiveConfig::default(),
            optim: OptimConfig::default(),
            lora: LoraConfig::default(),
        }
    }
}

impl FitConfig {
    /// Read a TOML file; an unknown or mistyped key is an error naming it.
    pub fn load_toml(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
    }

    pub fn validate(&self) -> Result<()> {
        if self.model.as_os_str().is_empty() {
            bail!("no model: pass --model DIR (or `model` in the config file)");
        }
        if self.data.is_empty() {
            bail!("no data: pass --data FILE (or `data` in the config file)");
        }
        if self.out.as_os_str().is_empty() {
            bail!("no output folder: pass --out DIR (or `out` in the config file)");
        }
        if self.batch_size == 0 || self.micro_batch_size == 0 {
            bail!("batch_size and micro_batch_size must be positive");
        }
        if self.save_every == Some(0) {
            bail!("save_every must be positive");
        }
        if self.save_total_limit == Some(0) {
            bail!("save_total_limit must be positive (leave it unset to keep every checkpoint)");
        }
        self.objective.validate()?;
        self.lora.validate()?;
        self.optim.validate()
    }
}

/// Settings of `training eval`.
#[derive(Debug, Clone)]
pub struct EvalConfig {
    pub model: PathBuf,
    pub data: Vec<PathBuf>,
    pub objective: ObjectiveConfig,
    /// Examples per forward pass.
    pub batch_size: usize,
    pub device: String,
    pub max_length: Option<usize>,
    pub train_on_prompt: bool,
    /// DPO reference model (default: the evaluated model itself).
    pub reference: Option<PathBuf>,
    /// Seed of the cringe draws (irrelevant with `cringe_k = 1`).
    pub seed: u64,
    pub precision: Precision,
    /// A PEFT LoRA adapter folder applied to `model`; DPO's reference is then `model` with the
    /// adapters off, unless `reference` names a model to load.
    pub adapter: Option<PathBuf>,
}

/// What a finished run reports.
#[derive(Debug, Clone, Serialize)]
pub struct FitSummary {
    pub steps: u64,
    pub final_dir: PathBuf,
    pub last: Option<MetricsLine>,
}

fn head_of(obj: &ObjectiveConfig) -> Head {
    if obj.name.is_reward() {
        Head::Reward
    } else {
        Head::Lm
    }
}

/// The model, objective and numeric settings shared by training and evaluation.
struct LossRunner<'a> {
    model: &'a Model,
    objective: &'a ObjectiveConfig,
    device: Device,
    autocast: bool,
    /// Gradient checkpointing (training only).
    checkpointing: bool,
    /// The tokenizer's EOS set, int64 on `device`: what `--cringe-exclude-stop` keeps out of the
    /// cringe candidates and what `--stop-unlikelihood` guards against.
    stop_ids: Tensor,
}

/// The EOS set (the one token policy's stop ids) as an int64 tensor on `device`.
fn stop_ids(tok: &Tokenizer, device: Device) -> Tensor {
    let ids: Vec<i64> = tok.policy().stop.iter().map(|t| t.as_i64()).collect();
    Tensor::from_slice(&ids).to_device(device)
}

/// A micro-batch's loss contribution, its statistics, and how to backpropagate it.
struct MicroLoss<'a> {
    loss: Tensor,
    sums: StatSums,
    /// LM objectives: the chunked head computation that owns the gradient path to the model.
    fused: Option<FusedTerms>,
    /// Gradient checkpointing: the rest of the backward pass, through the blocks.
    recompute: Option<Recompute<'a>>,
}

impl MicroLoss<'_> {
    /// Accumulate this micro-batch's gradient into the parameters' `.grad`.
    fn backward(self) {
        match self.fused {
            Some(f) => f.backward(&self.loss),
            None => self.loss.backward(),
        }
        if let Some(r) = self.recompute {
            r.backward();
        }
    }
}

impl<'a> LossRunner<'a> {
    /// Final hidden states, checkpointed when training with gradient checkpointing.
    fn hidden(&self, mb: &MicroBatch) -> (Tensor, Option<Recompute<'a>>) {
        if self.checkpointing {
            let (h, r) = self
                .model
                .hidden_states_checkpointed(&mb.input_ids, &mb.attention_mask);
            (h, Some(r))
        } else {
            (
                self.model.hidden_states(&mb.input_ids, &mb.attention_mask),
                None,
            )
        }
    }

    /// Loss contribution and statistics of one micro-batch.
    fn micro(&self, mb: &MicroBatch, norms: &Normalizers) -> Result<MicroLoss<'a>> {
        crate::amp::autocast(self.device, self.autocast, || {
            let (hidden, recompute) = self.hidden(mb);
            if self.objective.name.is_reward() {
                let rewards = self
                    .model
                    .score_of(&hidden, &mb.attention_mask)
                    .to_kind(Kind::Float);
                let (loss, sums) = reward_loss(&mb.layout, &rewards, norms)?;
                return Ok(MicroLoss {
                    loss,
                    sums,
                    fused: None,
                    recompute,
                });
            }
            // Hidden states, not logits: the head runs chunked over response positions only.
            let cringe = mb.uniforms.as_ref().map(|u| CringeInputs {
                rows: mb.layout.cringe_rows() as i64,
                uniforms: u,
                k: self.objective.cringe_k as i64,
                detach_positive: self.objective.cringe_detach_positive,
                exclude: self.objective.cringe_exclude_stop.then_some(&self.stop_ids),
            });
            let stop = (self.objective.stop_unlikelihood > 0.0).then(|| StopGuard {
                ids: &self.stop_ids,
                from_row: mb.layout.chosen_start() as i64,
            });
            let fused = seq_terms_fused(&HeadInputs {
                hidden: &hidden,
                weight: self.model.head_weight(),
                input_ids: &mb.input_ids,
                response_mask: &mb.response_mask,
                cringe: cringe.as_ref(),
                stop: stop.as_ref(),
            })?;
            let (loss, sums) = lm_loss(
                self.objective,
                &mb.layout,
                &fused.terms,
                mb.reference.as_ref(),
                norms,
            )?;
            Ok(MicroLoss {
                loss,
                sums,
                fused: Some(fused),
                recompute,
            })
        })
    }
}

fn layout_of<'a>(items: impl IntoIterator<Item = &'a Item>) -> Layout {
    let mut l = Layout::default();
    for item in items {
        match item {
            Item::Pair { .. } => l.pairs += 1,
            Item::Binary { label: false, .. } => l.negatives += 1,
            Item::Binary { label: true, .. } => l.positives += 1,
        }
    }
    l
}

fn load_data(
    files: &[PathBuf],
    tok: &Tokenizer,
    obj: &ObjectiveConfig,
    max_length: usize,
) -> Result<Dataset> {
    for f in files {
        crate::data::check_data_file(f)?;
    }
    let ds = Dataset::load(
        files,
        tok,
        &EncodeConfig {
            objective: obj.name,
            max_length: Some(max_length),
        },
    )?;
    let r = &ds.report;
    tracing::info!(
        records = r.records,
        pairs = r.pairs,
        positives = r.positives,
        negatives = r.negatives,
        skipped_too_long = r.too_long,
        unused = r.unused,
        prompt_truncated = r.truncated,
        max_length,
        "loaded {}",
        crate::data::display_files(files)
    );
    if r.too_long > 0 {
        tracing::warn!(
            "{} records skipped: response longer than max_length {max_length}",
            r.too_long
        );
    }
    Ok(ds)
}

fn ensure_f32(vs: &mut tch::nn::VarStore) {
    if vs.variables().values().any(|t| t.kind() != Kind::Float) {
        vs.float();
    }
}

/// Train as `cfg` says; returns once `final/` is written.
pub fn run(cfg: &FitConfig) -> Result<FitSummary> {
    cfg.validate()?;
    let device = crate::device::parse_device(&cfg.device)?;
    let autocast = cfg.precision.autocast(device);
    let head = head_of(&cfg.objective);
    let tok = Tokenizer::load(&cfg.model)
        .with_context(|| format!("loading the tokenizer of {}", cfg.model.display()))?;

    let resume_from = if cfg.resume {
        trainer_state::latest(&cfg.out)?
    } else {
        None
    };
    if !cfg.resume {
        if let Some((p, _)) = trainer_state::latest(&cfg.out)? {
            bail!(
                "{} already holds checkpoint {}; pass --resume to continue it or choose another --out",
                cfg.out.display(),
                p.display()
            );
        }
    }
    if let Some((dir, state)) = &resume_from {
        check_resumable(cfg, state, dir)?;
    }
    let lora = cfg.lora.enabled();
    // With LoRA a checkpoint holds only the adapters: the base is always the starting model.
    let weights_dir = match &resume_from {
        Some((p, _)) if !lora => p.as_path(),
        _ => cfg.model.as_path(),
    };
    let (mut vs, mut model) = crate::weights::load_model(weights_dir, device, head)?;
    ensure_f32(&mut vs);
    if lora {
        model.add_lora(&cfg.lora, cfg.seed)?;
        if let Some((dir, _)) = &resume_from {
            let adapter = exports::lora::Adapter::load(dir)?;
            model.load_adapter(&adapter)?;
        }
        let n: i64 = model
            .trainable()
            .iter()
            .map(|(_, t)| t.numel() as i64)
            .sum();
        tracing::info!(
            r = cfg.lora.r,
            alpha = cfg.lora.alpha,
            trainable = n,
            "LoRA adapters on {}",
            cfg.lora.targets.join(",")
        );
    }
    let max_length = cfg
        .max_length
        .unwrap_or_else(|| crate::data::default_max_length(model.config().max_position_embeddings));
    let mut ds = load_data(&cfg.data, &tok, &cfg.objective, max_length)?;
    let reference_caches = if cfg.objective.name == crate::objectives::Objective::Dpo {
        let rcfg = ReferenceConfig {
            model_dir: cfg.model.clone(),
            device,
            max_length: Some(max_length),
            train_on_prompt: cfg.train_on_prompt,
            batch_size: cfg.micro_batch_size,
            autocast,
        };
        // Before any update the model in memory is the reference itself; with LoRA it is too,
        // with its adapters off (no second copy).
        let reuse = resume_from.is_none() || lora;
        reference::attach(&mut ds, &rcfg, reuse.then_some(&model))?
    } else {
        Vec::new()
    };

    let lengths = ds.lengths();
    let spe = plan::steps_per_epoch(ds.len(), cfg.batch_size) as u64;
    let total = cfg.max_steps.unwrap_or(cfg.epochs * spe);
    // Every parameter, or with LoRA only the adapters (no AdamW state for the frozen base).
    let mut opt = AdamW::new(model.trainable());
    let config_json = serde_json::to_value(cfg)?;
    let mut start = 0;
    if let Some((dir, state)) = &resume_from {
        opt.load(&dir.join(STATE_DIR).join(OPTIMIZER_FILE), state.step)?;
        start = state.step;
        tracing::info!(step = start, checkpoint = %dir.display(), "resuming");
    }
    std::fs::create_dir_all(&cfg.out).with_context(|| format!("creating {}", cfg.out.display()))?;
    let mut metrics = MetricsLog::open(&cfg.out.join("metrics.jsonl"), start)?;
    let runner = LossRunner {
        model: &model,
        objective: &cfg.objective,
        device,
        autocast,
        checkpointing: cfg.gradient_checkpointing,
        stop_ids: stop_ids(&tok, device),
    };
    let pad = tok.pad().as_i64();
    let progress = Progress::new(total, start);
    let mut last_good: Option<PathBuf> = resume_from.as_ref().map(|(p, _)| p.clone());
    let mut last_line = None;
    let state_at = |step: u64| TrainerState {
        step,
        total_steps: total,
        epoch: step / spe,
        batch_in_epoch: step % spe,
        seed: cfg.seed,
        rng: RNG_SCHEME.into(),
        config: config_json.clone(),
        reference_caches: reference_caches.clone(),
    };

    for step in start..total {
        let t0 = Instant::now();
        let batch = plan::step_batch(&lengths, cfg.batch_size, cfg.seed, step);
        let items: Vec<(usize, &Item)> = batch
            .iter()
            .enumerate()
            .map(|(pos, &i)| (pos, &ds.items[i]))
            .collect();
        let norms = Normalizers::from_layout(&layout_of(items.iter().map(|(_, it)| *it)));
        let ccfg = CollateConfig {
            objective: cfg.objective.name,
            pad,
            device,
            seed: cfg.seed,
            step,
            train_on_prompt: cfg.train_on_prompt,
        };
        opt.zero_grad();
        let mut sums = StatSums::default();
        let mut tokens = 0;
        model.set_training(true);
        for (mi, micro) in items.chunks(cfg.micro_batch_size).enumerate() {
            let mb = collate(micro, &ccfg)?;
            if lora && cfg.lora.dropout > 0.0 {
                // Adapter dropout draws from libtorch's generator, seeded per micro-batch so a
                // resumed run draws the same masks.
                tch::manual_seed(dropout_seed(cfg.seed, step, mi as u64));
            }
            tokens += mb.tokens;
            let out = runner.micro(&mb, &norms)?;
            let s = out.sums.clone();
            if !s.loss.is_finite() {
                bail!(
                    "step {}: the loss is {} — stopping; the last good checkpoint is {}",
                    step + 1,
                    s.loss,
                    last_good
                        .as_ref()
                        .map_or("none (no checkpoint written yet)".into(), |p| p
                            .display()
                            .to_string())
                );
            }
            out.backward();
            sums.add(&s);
        }
        model.set_training(false);
        let grad_norm = opt.clip_grad_norm(cfg.optim.grad_clip);
        if !grad_norm.is_finite() {
            bail!(
                "step {}: the gradient norm is {grad_norm} — stopping; the last good checkpoint is {}",
                step + 1,
                last_good.as_ref().map_or("none (no checkpoint written yet)".into(), |p| p.display().to_string())
            );
        }
        let lr = cfg.optim.lr_at(step, total);
        opt.apply(lr, &cfg.optim);
        let info = StepInfo {
            step: step + 1,
            epoch: (step + 1) as f64 / spe as f64,
            tokens,
            lr,
            grad_norm,
            seconds: t0.elapsed().as_secs_f64(),
        };
        let line = metrics_line(&sums.means(cfg.objective.name), &info);
        metrics.append(&line)?;
        progress.update(&line);
        tracing::debug!(step = step + 1, loss = line.loss, grad_norm, lr, "step");
        last_line = Some(line);
        let done = step + 1;
        if cfg.save_every.is_some_and(|n| done % n == 0) && done < total {
            let dir = trainer_state::checkpoint_dir(&cfg.out, done);
            save_checkpoint(&dir, &vs, &model, cfg, &opt, &state_at(done))?;
            tracing::info!(step = done, dir = %dir.display(), "checkpoint");
            last_good = Some(dir);
            if let Some(keep) = cfg.save_total_limit {
                trainer_state::prune_checkpoints(&cfg.out, keep)?;
            }
        }
    }
    progress.finish();
    let final_dir = cfg.out.join(FINAL_DIR);
    let steps = total.max(start);
    save_checkpoint(&final_dir, &vs, &model, cfg, &opt, &state_at(steps))?;
    tracing::info!(steps, dir = %final_dir.display(), "finished");
    Ok(FitSummary {
        steps,
        final_dir,
        last: last_line,
    })
}

fn save_checkpoint(
    dir: &Path,
    vs: &tch::nn::VarStore,
    model: &Model,
    cfg: &FitConfig,
    opt: &AdamW,
    state: &TrainerState,
) -> Result<()> {
    trainer_state::save(
        dir,
        &CheckpointParts {
            vs,
            model,
            tokenizer_src: &cfg.model,
            optimizer: opt,
            state,
        },
    )
}

/// A resumed run must see the same examples in the same order: same data, seed and batch size.
fn check_resumable(cfg: &FitConfig, state: &TrainerState, dir: &Path) -> Result<()> {
    let before: FitConfig = serde_json::from_value(state.config.clone())
        .with_context(|| format!("reading the settings saved in {}", dir.display()))?;
    let mut diffs = Vec::new();
    if before.data != cfg.data {
        diffs.push("data");
    }
    if before.seed != cfg.seed {
        diffs.push("seed");
    }
    if before.batch_size != cfg.batch_size {
        diffs.push("batch_size");
    }
    if before.objective.name != cfg.objective.name {
        diffs.push("objective");
    }
    if before.lora != cfg.lora {
        diffs.push("lora");
    }
    if !diffs.is_empty() {
        bail!(
            "cannot resume {}: {} differ from the checkpointed run",
            dir.display(),
            diffs.join(", ")
        );
    }
    if before.objective != cfg.objective
        || before.optim != cfg.optim
        || before.micro_batch_size != cfg.micro_batch_size
    {
        tracing::warn!("resuming with different loss/optimizer settings than the checkpointed run");
    }
    Ok(())
}

/// Loss components of `cfg.objective` over whole files, without updating the model.
pub fn evaluate(cfg: &EvalConfig) -> Result<StepStats> {
    cfg.objective.validate()?;
    let device = crate::device::parse_device(&cfg.device)?;
    let autocast = cfg.precision.autocast(device);
    let tok = Tokenizer::load(&cfg.model)
        .with_context(|| format!("loading the tokenizer of {}", cfg.model.display()))?;
    let (_vs, mut model) = crate::weights::load_model(&cfg.model, device, head_of(&cfg.objective))?;
    if let Some(dir) = &cfg.adapter {
        let adapter = exports::lora::Adapter::load(dir)?;
        model.add_lora(&LoraConfig::from_adapter(&adapter.config), 0)?;
        model.load_adapter(&adapter)?;
    }
    let max_length = cfg
        .max_length
        .unwrap_or_else(|| crate::data::default_max_length(model.config().max_position_embeddings));
    let mut ds = load_data(&cfg.data, &tok, &cfg.objective, max_length)?;
    if cfg.objective.name == crate::objectives::Objective::Dpo {
        let reference = cfg.reference.clone().unwrap_or_else(|| cfg.model.clone());
        let rcfg = ReferenceConfig {
            model_dir: reference.clone(),
            device,
            max_length: Some(max_length),
            train_on_prompt: cfg.train_on_prompt,
            batch_size: cfg.batch_size,
            autocast,
        };
        // Without an adapter, the model itself when it is the reference; with one, the same
        // model with its adapters off unless a reference was named.
        let same = match &cfg.adapter {
            None => reference == cfg.model,
            Some(_) => cfg.reference.is_none(),
        };
        reference::attach(&mut ds, &rcfg, same.then_some(&model))?;
    }
    let norms = Normalizers::from_layout(&layout_of(&ds.items));
    let runner = LossRunner {
        model: &model,
        objective: &cfg.objective,
        device,
        autocast,
        checkpointing: false,
        stop_ids: stop_ids(&tok, device),
    };
    let ccfg = CollateConfig {
        objective: cfg.objective.name,
        pad: tok.pad().as_i64(),
        device,
        seed: cfg.seed,
        step: 0,
        train_on_prompt: cfg.train_on_prompt,
    };
    // Longest first so that batches hold similar lengths; the sums do not depend on the order.
    let mut order: Vec<usize> = (0..ds.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(ds.items[i].padded_len()));
    let _guard = tch::no_grad_guard();
    let mut sums = StatSums::default();
    for chunk in order.chunks(cfg.batch_size.max(1)) {
        let items: Vec<(usize, &Item)> = chunk.iter().map(|&i| (i, &ds.items[i])).collect();
        let mb = collate(&items, &ccfg)?;
        sums.add(&runner.micro(&mb, &norms)?.sums);
    }
    Ok(sums.means(cfg.objective.name))
}

/// The libtorch seed of adapter dropout in micro-batch `micro` of step `step`.
fn dropout_seed(seed: u64, step: u64, micro: u64) -> i64 {
    let mut h = (seed ^ 0x4C6F_5241).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    for v in [step, micro] {
        h = (h ^ v).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        h ^= h >> 31;
    }
    (h >> 1) as i64
}

/// The device a run will use, for callers that want to report it.
pub fn describe_device(d: Device) -> String {
    match d {
        Device::Cpu => "cpu".into(),
        Device::Cuda(i) => format!("cuda:{i}"),
        other => format!("{other:?}"),
    }
}
