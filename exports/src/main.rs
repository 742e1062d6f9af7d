//! The `exports` command line: model import, tiny test models, format checks.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use exports::init::{init, InitConfig};
use exports::{Head, ModelType};

#[derive(Parser)]
#[command(name = "exports", version, about = "Model and data formats for the PCO pipeline")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write a small random model folder (config, weights, tokenizer) for tests and CI.
    Init(InitArgs),
    /// Print a model folder's validated configuration and parameter count.
    Inspect {
        /// A Hugging Face model folder.
        #[arg(long)]
        model: PathBuf,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Arch {
    Llama,
    Mistral,
    Qwen2,
    Gpt2,
}

#[derive(Clone, Copy, ValueEnum)]
enum Preset {
    Tiny,
}

#[derive(Clone, Copy, ValueEnum)]
enum HeadArg {
    Lm,
    Reward,
}

#[derive(clap::Args)]
struct InitArgs {
    #[arg(long, value_enum)]
    arch: Arch,
    #[arg(long, value_enum, default_value = "tiny")]
    preset: Preset,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long)]
    out: PathBuf,
    /// Key/value heads (grouped-query attention); Llama family only.
    #[arg(long)]
    kv_heads: Option<usize>,
    /// Separate output head instead of tying it to the input embedding.
    #[arg(long)]
    untied: bool,
    /// Biases on the attention projections (implied for qwen2 and gpt2).
    #[arg(long)]
    attention_bias: bool,
    /// `lm` for a causal LM, `reward` for a reward model with a `score` head.
    #[arg(long, value_enum, default_value = "lm")]
    head: HeadArg,
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Init(a) => {
            let ty = match a.arch {
                Arch::Llama => ModelType::Llama,
                Arch::Mistral => ModelType::Mistral,
                Arch::Qwen2 => ModelType::Qwen2,
                Arch::Gpt2 => ModelType::Gpt2,
            };
            let Preset::Tiny = a.preset;
            let mut cfg = InitConfig::tiny(ty, a.seed);
            if let Some(k) = a.kv_heads {
                cfg.kv_heads = k;
            }
            cfg.tied = !a.untied;
            cfg.attention_bias = a.attention_bias;
            cfg.head = match a.head {
                HeadArg::Lm => Head::Lm,
                HeadArg::Reward => Head::Reward,
            };
            let m = init(&cfg, &a.out).with_context(|| format!("writing {}", a.out.display()))?;
            println!(
                "wrote {} ({} {} parameters)",
                a.out.display(),
                m.model_type.as_str(),
                m.parameter_count()
            );
        }
        Command::Inspect { model } => {
            let cfg = exports::ModelConfig::load(&model)?;
            println!("{cfg:#?}\nparameters: {}", cfg.parameter_count());
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
