//! The `training` command line: `training fit` (train a model with one of the LOSSES.md
//! objectives) and `training eval` (the loss components over a whole file, no update).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use training::amp::Precision;
use training::fit::{self, EvalConfig, FitConfig};
use training::objectives::{Gate, MarginReduction, Objective, ObjectiveConfig};
use training::optim::Schedule;

#[derive(Parser)]
#[command(
    name = "training",
    version,
    about = "Training with libtorch: the Pairwise Cringe objectives and baselines"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a model folder on pairs / binary feedback and write checkpoints to --out.
    Fit(Box<FitArgs>),
    /// Loss components of an objective over whole data files, without updating the model.
    Eval(Box<EvalArgs>),
    /// Merge a PEFT LoRA adapter (as `fit --lora-r` writes) into its base model and write a
    /// Hugging Face folder (fp32 weights `W + scaling · B @ A`, the base's config and tokenizer).
    Merge(MergeArgs),
}

#[derive(Args, Debug)]
struct MergeArgs {
    /// The adapter folder (adapter_config.json + adapter_model.safetensors).
    #[arg(long)]
    adapter: PathBuf,
    /// The base model folder (default: the adapter's base_model_name_or_path).
    #[arg(long)]
    model: Option<PathBuf>,
    /// The merged model folder to write (replaced).
    #[arg(long)]
    out: PathBuf,
}

/// The knobs of the objectives (LOSSES.md); unset flags keep the config file's or default values.
#[derive(Args, Debug, Default)]
struct LossArgs {
    /// sft | binary-cringe | pairwise-cringe | dpo | reward.
    #[arg(long, value_enum)]
    objective: Option<Objective>,
    /// Weight of the cringe term.
    #[arg(long)]
    alpha: Option<f64>,
    /// Gate bias b.
    #[arg(long)]
    b: Option<f64>,
    /// Gate temperature tau.
    #[arg(long)]
    tau: Option<f64>,
    /// Candidates the cringe positive is drawn from (1 = deterministic).
    #[arg(long)]
    cringe_k: Option<usize>,
    #[arg(long, value_enum)]
    gate: Option<Gate>,
    #[arg(long, value_enum)]
    margin_reduction: Option<MarginReduction>,
    /// No gradient through the gate (ablation).
    #[arg(long)]
    gate_detach: bool,
    /// No gradient into the sampled positive logit.
    #[arg(long)]
    cringe_detach_positive: bool,
    /// Leave EOS (every id that ends a response) out of the cringe candidates.
    #[arg(long)]
    cringe_exclude_stop: bool,
    /// Weight of the stop guard, -log(1 - p(EOS)) at every non-final position of chosen responses
    /// and positives (0 = off).
    #[arg(long)]
    stop_unlikelihood: Option<f64>,
    /// DPO beta.
    #[arg(long)]
    beta: Option<f64>,
}

impl LossArgs {
    fn apply(&self, o: &mut ObjectiveConfig) {
        if let Some(v) = self.objective {
            o.name = v;
        }
        macro_rules! set {
            ($($f:ident),*) => { $( if let Some(v) = self.$f { o.$f = v; } )* };
        }
        set!(
            alpha,
            b,
            tau,
            cringe_k,
            gate,
            margin_reduction,
            stop_unlikelihood,
            beta
        );
        o.gate_detach |= self.gate_detach;
        o.cringe_detach_positive |= self.cringe_detach_positive;
        o.cringe_exclude_stop |= self.cringe_exclude_stop;
    }
}

#[derive(Args, Debug)]
struct FitArgs {
    /// TOML file with any of the settings below (CLI flags override it).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Starting model folder (Hugging Face layout).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Training data (JSONL pairs and/or binary feedback); repeatable.
    #[arg(long)]
    data: Vec<PathBuf>,
    /// Output folder: checkpoint-<step>/, final/, metrics.jsonl.
    #[arg(long)]
    out: Option<PathBuf>,
    #[command(flatten)]
    loss: LossArgs,
    /// Examples per optimizer step.
    #[arg(long)]
    batch_size: Option<usize>,
    /// Examples per forward pass (gradients are accumulated).
    #[arg(long)]
    micro_batch_size: Option<usize>,
    #[arg(long)]
    epochs: Option<u64>,
    #[arg(long)]
    max_steps: Option<u64>,
    #[arg(long)]
    seed: Option<u64>,
    /// cpu | cuda | cuda:N.
    #[arg(long)]
    device: Option<String>,
    /// fp32 | bf16 (autocast: bf16 matrix products, fp32 weights, optimizer and reductions) |
    /// auto (bf16 on CUDA, fp32 on CPU; the default).
    #[arg(long, value_enum)]
    precision: Option<Precision>,
    /// Recompute each block's activations in the backward pass instead of keeping them.
    #[arg(long)]
    gradient_checkpointing: bool,
    #[arg(long)]
    save_every: Option<u64>,
    /// Keep only the newest N checkpoint-<step> folders (final is always kept).
    #[arg(long, value_name = "N")]
    save_total_limit: Option<usize>,
    #[arg(long)]
    max_length: Option<usize>,
    /// Include prompt tokens in every sum.
    #[arg(long)]
    train_on_prompt: bool,
    /// Continue from the latest checkpoint in --out.
    #[arg(long)]
    resume: bool,
    #[arg(long)]
    lr: Option<f64>,
    #[arg(long)]
    beta1: Option<f64>,
    #[arg(long)]
    beta2: Option<f64>,
    #[arg(long)]
    eps: Option<f64>,
    #[arg(long)]
    weight_decay: Option<f64>,
    #[arg(long)]
    warmup_steps: Option<u64>,
    #[arg(long, value_enum)]
    schedule: Option<Schedule>,
    /// Clip the global gradient norm (0 = off).
    #[arg(long)]
    grad_clip: Option<f64>,
    /// LoRA rank: train adapters on the frozen model (0 = full fine-tuning); saved as PEFT does.
    #[arg(long, value_name = "R")]
    lora_r: Option<usize>,
    /// lora_alpha: the update is scaled by alpha / r (PEFT's default 8).
    #[arg(long, value_name = "A")]
    lora_alpha: Option<f64>,
    /// Dropout on each adapter's input while training.
    #[arg(long, value_name = "P")]
    lora_dropout: Option<f64>,
    /// Projections with adapters (default: q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj).
    #[arg(long, value_delimiter = ',', value_name = "NAMES")]
    lora_targets: Option<Vec<String>>,
    /// How lora_A starts, as PEFT: kaiming (init_lora_weights=True) or gaussian; lora_B is zero.
    #[arg(long, value_enum)]
    lora_init: Option<exports::lora::LoraInit>,
    /// rsLoRA: scale by alpha / sqrt(r).
    #[arg(long)]
    lora_rslora: bool,
}

impl FitArgs {
    /// Config file (or defaults) overlaid with the flags that were given.
    fn into_config(self) -> anyhow::Result<FitConfig> {
        let mut c = match &self.config {
            Some(p) => FitConfig::load_toml(p)?,
            None => FitConfig::default(),
        };
        if let Some(v) = self.model {
            c.model = v;
        }
        if !self.data.is_empty() {
            c.data = self.data;
        }
        if let Some(v) = self.out {
            c.out = v;
        }
        self.loss.apply(&mut c.objective);
        macro_rules! set {
            ($t:expr; $($f:ident),*) => { $( if let Some(v) = self.$f { $t.$f = v; } )* };
        }
        set!(c; batch_size, micro_batch_size, epochs, seed, device, precision);
        set!(c.optim; lr, beta1, beta2, eps, weight_decay, warmup_steps, schedule, grad_clip);
        if self.max_steps.is_some() {
            c.max_steps = self.max_steps;
        }
        if self.save_every.is_some() {
            c.save_every = self.save_every;
        }
        if self.save_total_limit.is_some() {
            c.save_total_limit = self.save_total_limit;
        }
        if self.max_length.is_some() {
            c.max_length = self.max_length;
        }
        if let Some(v) = self.lora_r {
            c.lora.r = v;
        }
        if let Some(v) = self.lora_alpha {
            c.lora.alpha = v;
        }
        if let Some(v) = self.lora_dropout {
            c.lora.dropout = v;
        }
        if let Some(v) = self.lora_targets {
            c.lora.targets = v;
        }
        if let Some(v) = self.lora_init {
            c.lora.init = v;
        }
        c.lora.rslora |= self.lora_rslora;
        c.train_on_prompt |= self.train_on_prompt;
        c.resume |= self.resume;
        c.gradient_checkpointing |= self.gradient_checkpointing;
        c.validate()?;
        Ok(c)
    }
}

#[derive(Args, Debug)]
struct EvalArgs {
    #[arg(long)]
    model: PathBuf,
    /// Data files (JSONL); repeatable.
    #[arg(long, required = true)]
    data: Vec<PathBuf>,
    #[command(flatten)]
    loss: LossArgs,
    /// Examples per forward pass.
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    #[arg(long, default_value = "cpu")]
    device: String,
    #[arg(long)]
    max_length: Option<usize>,
    #[arg(long)]
    train_on_prompt: bool,
    /// DPO reference model (default: --model itself; with --adapter, --model with the adapters off).
    #[arg(long)]
    reference: Option<PathBuf>,
    /// A PEFT LoRA adapter folder applied to --model.
    #[arg(long)]
    adapter: Option<PathBuf>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// fp32 | bf16 | auto (bf16 on CUDA, fp32 on CPU).
    #[arg(long, value_enum, default_value = "auto")]
    precision: Precision,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Fit(args) => {
            let cfg = args.into_config()?;
            let summary = fit::run(&cfg)?;
            eprintln!(
                "trained {} steps; model in {}",
                summary.steps,
                summary.final_dir.display()
            );
            Ok(())
        }
        Command::Eval(args) => {
            let Some(name) = args.loss.objective else {
                anyhow::bail!("--objective is required");
            };
            let mut objective = ObjectiveConfig::new(name);
            args.loss.apply(&mut objective);
            let cfg = EvalConfig {
                model: args.model,
                data: args.data,
                objective,
                batch_size: args.batch_size,
                device: args.device,
                max_length: args.max_length,
                train_on_prompt: args.train_on_prompt,
                reference: args.reference,
                seed: args.seed,
                precision: args.precision,
                adapter: args.adapter,
            };
            let stats = fit::evaluate(&cfg)?;
            let mut v = serde_json::to_value(&stats)?;
            if let Some(m) = v.as_object_mut() {
                // `training eval` prints the loss components only.
                m.remove("chosen_logp");
                m.remove("rejected_logp");
            }
            if args.json {
                println!("{v}");
            } else if let Some(m) = v.as_object() {
                for (k, x) in m {
                    println!("{k:>10}  {x}");
                }
            }
            Ok(())
        }
        Command::Merge(a) => {
            let s = exports::lora::merge_folder(&a.adapter, a.model.as_deref(), &a.out)
                .with_context(|| format!("merging {}", a.adapter.display()))?;
            eprintln!(
                "merged {} adapted modules ({} saved tensors) into {}",
                s.modules,
                s.replaced,
                a.out.display()
            );
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    exports::cli::main_with(|| run(Cli::parse()))
}

/// jemalloc as the allocator of the whole process: Rust's allocations through `#[global_allocator]`,
/// libtorch's because the crate exports unprefixed `malloc`, `free` and `posix_memalign`, which the
/// dynamic linker binds ahead of glibc's.
///
/// Why: a training step allocates and frees about 3.7 GB of multi-megabyte activations and
/// gradient temporaries (`scripts/bench-train`'s step: 8 × 128 tokens, SmolLM2-135M). glibc by
/// default raises its mmap threshold after large frees and serves them from the heap, whose freed
/// holes stay resident: peak RSS 4.3–4.7 GB with thresholds of 4–16 MiB against 3.45 GB at 1 MiB;
/// at 1 MiB every such tensor is a fresh mapping, about 940 000 page faults a step. jemalloc reuses
/// freed extents by size class and returns idle ones on a timer: about 714 000 faults a step at
/// the same peak (3.39–3.49 GB) and about 9 % more tokens/s. Measured in BENCHMARKS.md ("The
/// allocator").
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
