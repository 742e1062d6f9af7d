//! The `engine` command: inference-side stages of the PCO pipeline. Each subcommand parses its
//! flags into a library config and makes one library call; summaries go to stderr, results to
//! files (or stdout for `eval`).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{ArgGroup, Args, Parser, Subcommand, ValueEnum};
use engine::bootstrap::{BootstrapConfig, DEFAULT_RESAMPLES};
use engine::eval::{EvalConfig, Metric, ResponseSelection, WinRateConfig};
use engine::label::{BinaryFeedback, LabelConfig, RewardSpec};
use engine::pair::PairConfig;
use engine::reward::RewardModelConfig;
use engine::session::{Device, SessionOptions};

#[derive(Parser)]
#[command(
    name = "engine",
    version,
    about = "Inference with ONNX Runtime: labeling, pairing and evaluation"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Label(LabelArgs),
    Pair(PairArgs),
    Eval(EvalArgs),
    Verify(VerifyArgs),
    Generate(engine::generate::cli::GenerateArgs),
    KvScales(KvScalesArgs),
    Merge(engine::generate::cli::MergeArgs),
    /// Summarise a `scripts/pco` run folder: results.json, results.md and plots/*.png.
    Report {
        /// The run folder (e.g. runs/default).
        #[arg(long)]
        run: std::path::PathBuf,
    },
}

/// Check an exported ONNX folder against the probe training saved beside its checkpoint
/// (probe.safetensors): fails when max |Δ| over real positions exceeds the tolerance
/// (1e-3 for fp32 graphs).
#[derive(Args)]
struct VerifyArgs {
    /// Folder written by `exports onnx`.
    #[arg(long)]
    onnx: PathBuf,
    /// probe.safetensors (input_ids, attention_mask, and logits or scores).
    #[arg(long)]
    probe: PathBuf,
    /// Largest accepted |Δ| (default: 1e-3 fp32, 0.5 fp16, 2.0 bf16).
    #[arg(long)]
    tolerance: Option<f32>,
    /// Where to run the graph: `cpu` or `cuda:N`.
    #[arg(long, default_value = "cpu")]
    device: Device,
    /// ONNX Runtime library (default: ORT_DYLIB_PATH, then the project's .venv).
    #[arg(long)]
    ort_lib: Option<PathBuf>,
}

/// Score each prompt's responses and keep the best and the worst as a preference pair.
///
/// Responses are ranked by reward (higher first); equal rewards by length in METRICS.md word
/// tokens (longer first, so an empty or cut-short response never wins a tie just by repeating
/// nothing), then by position (earlier first). Chosen = first, rejected = last. No pair when all
/// rewards tie, when chosen − rejected < --min-gap, when both texts are equal, or with fewer than
/// two responses.
#[derive(Args)]
#[command(group(ArgGroup::new("scorer").required(true).args(["reward", "reward_model"])))]
struct LabelArgs {
    /// Generation records (JSONL, `engine generate` output).
    #[arg(long)]
    generations: PathBuf,
    /// Where to write the pairs (JSONL).
    #[arg(long)]
    out: PathBuf,
    /// Programmatic reward: `repetition[:N]` = −Repeat@N(response | prompt), N defaults to 3.
    #[arg(long, value_name = "SPEC")]
    reward: Option<RewardSpec>,
    #[command(flatten)]
    model: RewardModelArgs,
    /// Smallest chosen − rejected reward gap that makes a pair.
    #[arg(long, default_value_t = 0.0, value_name = "X")]
    min_gap: f64,
    /// Also write `{"id","scores":[...]}` per prompt, scores in response order.
    #[arg(long, value_name = "FILE")]
    scores_out: Option<PathBuf>,
    /// Also write binary feedback (JSONL): every response that did not go into its prompt's pair,
    /// labeled `true` when its reward ≥ --binary-threshold, for mixed pairwise + binary training.
    #[arg(long, value_name = "FILE")]
    binary_out: Option<PathBuf>,
    /// The reward at or above which a response is binary feedback `label: true`.
    #[arg(long, default_value_t = 0.0, value_name = "X", requires = "binary_out")]
    binary_threshold: f64,
}

impl LabelArgs {
    fn into_config(self) -> LabelConfig {
        LabelConfig {
            generations: self.generations,
            out: self.out,
            reward: reward_spec(self.reward, self.model).expect("clap requires one scorer"),
            min_gap: self.min_gap,
            scores_out: self.scores_out,
            binary: self.binary_out.map(|out| BinaryFeedback {
                out,
                threshold: self.binary_threshold,
            }),
        }
    }
}

/// The reward-model scorer's flags, shared by `label` and `eval`.
#[derive(Args)]
struct RewardModelArgs {
    /// Reward-model folder (ONNX, `exports onnx --head reward`) to score with.
    #[arg(long, value_name = "DIR")]
    reward_model: Option<PathBuf>,
    /// Sequences per reward-model forward pass.
    #[arg(long, default_value_t = 16, value_name = "N")]
    batch_size: usize,
    /// Intra-op threads of the reward model (0: one per physical core).
    #[arg(long, default_value_t = 0, value_name = "N")]
    threads: usize,
    /// Where the reward model runs: `cpu` or `cuda:N`.
    #[arg(long, default_value = "cpu")]
    device: Device,
    /// ONNX Runtime library (default: ORT_DYLIB_PATH, then the project's .venv).
    #[arg(long)]
    ort_lib: Option<PathBuf>,
}

fn reward_spec(reward: Option<RewardSpec>, model: RewardModelArgs) -> Option<RewardSpec> {
    reward.or(model.reward_model.map(|dir| {
        RewardSpec::Model(RewardModelConfig {
            batch_size: model.batch_size,
            session: SessionOptions {
                threads: model.threads,
                device: model.device,
                ..SessionOptions::default()
            },
            ort_lib: model.ort_lib,
            ..RewardModelConfig::new(dir)
        })
    }))
}

/// Join two generation files by prompt id into pairs (chosen = first response of --chosen,
/// rejected = first response of --rejected): the paper's iteration-1 repetition pairs.
#[derive(Args)]
struct PairArgs {
    /// Winning generations (e.g. beam search with n-gram blocking).
    #[arg(long)]
    chosen: PathBuf,
    /// Losing generations (e.g. greedy decoding).
    #[arg(long)]
    rejected: PathBuf,
    /// Where to write the pairs (JSONL).
    #[arg(long)]
    out: PathBuf,
    /// Keep a pair only if the rejected response repeats an N-gram of itself or its context.
    #[arg(long, value_name = "N")]
    require_repeat: Option<usize>,
}

/// Which responses of each record to evaluate.
#[derive(Clone, Copy, ValueEnum)]
enum ResponseArg {
    /// The first response of each record.
    First,
    /// Every response, each one example.
    All,
}

/// Measure the static scales of an int8 KV cache on an fp32 export: each prompt prefilled alone,
/// max |key| and |value| per layer, kv head and channel, / 127. For `exports onnx --kv-cache int8
/// --kv-scales FILE`.
#[derive(Args)]
struct KvScalesArgs {
    /// The fp32 `exports onnx` folder.
    #[arg(long)]
    model: PathBuf,
    /// Calibration prompts (JSONL or Parquet prompt records, as `engine generate` reads them).
    #[arg(long)]
    prompts: PathBuf,
    /// Where to write the scales (safetensors).
    #[arg(long)]
    out: PathBuf,
    /// At most this many prompts, in file order.
    #[arg(long, default_value_t = 64)]
    limit: usize,
    /// Intra-op threads (0: one per physical core).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// ONNX Runtime library (default: ORT_DYLIB_PATH, then the project's .venv).
    #[arg(long)]
    ort_lib: Option<PathBuf>,
}

/// Repeat@n, F1 against each record's `reference`, and win rate against another generation file.
#[derive(Args)]
#[command(group(ArgGroup::new("scorer").args(["reward", "reward_model"]).requires("against")))]
struct EvalArgs {
    /// Generation records (JSONL).
    #[arg(long)]
    generations: PathBuf,
    /// Comma-separated metrics: repeat@N, f1; or `none`.
    #[arg(long, default_value = "repeat@3,f1", value_parser = parse_metrics)]
    metrics: Metrics,
    /// Evaluate the first response of each record, or all of them.
    #[arg(long, value_enum, default_value = "first")]
    response: ResponseArg,
    /// The reward model that scores both sides for the win rate.
    #[command(flatten)]
    model: RewardModelArgs,
    /// Programmatic reward for the win rate instead of a model, e.g. `repetition:3`.
    #[arg(long, value_name = "SPEC")]
    reward: Option<RewardSpec>,
    /// Generations to compare against (joined by id, first responses), for the win rate.
    #[arg(long, value_name = "FILE", requires = "scorer")]
    against: Option<PathBuf>,
    /// Bootstrap resamples for the win-rate interval.
    #[arg(long, default_value_t = DEFAULT_RESAMPLES)]
    bootstrap_resamples: usize,
    /// Seed of the bootstrap.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Clone)]
struct Metrics(Vec<Metric>);

fn parse_metrics(s: &str) -> std::result::Result<Metrics, String> {
    if s.trim() == "none" {
        return Ok(Metrics(Vec::new()));
    }
    Metric::parse_list(s).map(Metrics)
}

impl EvalArgs {
    fn into_config(self) -> EvalConfig {
        let win_rate = match (reward_spec(self.reward, self.model), self.against) {
            (Some(reward), Some(against)) => Some(WinRateConfig { reward, against }),
            _ => None,
        };
        EvalConfig {
            generations: self.generations,
            metrics: self.metrics.0,
            responses: match self.response {
                ResponseArg::First => ResponseSelection::First,
                ResponseArg::All => ResponseSelection::All,
            },
            win_rate,
            bootstrap: BootstrapConfig {
                resamples: self.bootstrap_resamples,
                seed: self.seed,
                ..BootstrapConfig::default()
            },
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Generate(args) => {
            let summary = engine::generate::run(&args.into_config()?)?;
            eprintln!("{summary}");
        }
        Command::Report { run } => {
            print!("{}", engine::report::run(&run)?);
        }
        Command::Merge(args) => {
            let summary = engine::generate::merge(&args.into_config())?;
            eprintln!("{summary}");
        }
        Command::Verify(args) => {
            let rt = engine::runtime::Runtime::shared(args.ort_lib.as_deref())?;
            let opts = SessionOptions {
                device: args.device,
                ..SessionOptions::default()
            };
            let r = engine::verify::verify_dir(rt, &args.onnx, &args.probe, args.tolerance, &opts)?;
            eprintln!(
                "{}: ok, max |Δ| = {:.3e} ≤ {:.0e} over {} values",
                args.onnx.display(),
                r.max_abs_diff,
                r.tolerance,
                r.compared
            );
        }
        Command::KvScales(args) => {
            let rt = engine::runtime::Runtime::shared(args.ort_lib.as_deref())?;
            let cfg = engine::kv_scales::KvScalesConfig {
                model: args.model,
                prompts: args.prompts,
                out: args.out,
                limit: args.limit,
                session: SessionOptions {
                    threads: args.threads,
                    ..SessionOptions::default()
                },
            };
            let summary = engine::kv_scales::run(rt, &cfg)?;
            eprintln!("{summary}: {}", cfg.out.display());
        }
        Command::Label(args) => {
            let summary = engine::label::run(&args.into_config())?;
            eprintln!("{summary}");
        }
        Command::Pair(args) => {
            let cfg = PairConfig {
                chosen: args.chosen,
                rejected: args.rejected,
                out: args.out,
                require_repeat: args.require_repeat,
            };
            let summary = engine::pair::run(&cfg)?;
            eprintln!("{summary}");
        }
        Command::Eval(args) => {
            let json = args.json;
            let report = engine::eval::run(&args.into_config())?;
            if json {
                println!("{}", report.to_json());
            } else {
                print!("{report}");
            }
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    exports::cli::main_with(|| run(Cli::parse()))
}
