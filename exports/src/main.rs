//! The `exports` command line: model import, tiny test models, format checks.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use exports::init::{init, InitConfig};
use exports::{Head, ModelType};

#[derive(Parser)]
#[command(
    name = "exports",
    version,
    about = "Model and data formats for the PCO pipeline"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write a small random model folder (config, weights, tokenizer) for tests and CI.
    Init(InitArgs),
    /// Import a llama.cpp GGUF (Llama or Qwen3 architecture) as a Hugging Face model folder: fp32
    /// safetensors, config, tokenizer and generation config.
    Import {
        /// The `.gguf` file.
        #[arg(long)]
        gguf: PathBuf,
        /// The model folder to write (replaced if it exists; untouched on error).
        #[arg(long)]
        out: PathBuf,
    },
    /// Print a model folder's validated configuration and parameter count.
    Inspect {
        /// A Hugging Face model folder.
        #[arg(long)]
        model: PathBuf,
    },
    /// Export a model folder as an ONNX decoder with a KV cache (plus genai_config.json and tokenizer).
    Onnx(OnnxArgs),
    /// Build training/evaluation data sets.
    #[command(subcommand)]
    Dataset(DatasetCommand),
}

#[derive(Subcommand)]
enum DatasetCommand {
    /// The paper's repetition task from a folder of one-document-per-file `.txt` text: contexts of
    /// K sentences with the human next sentence as `reference`, split by document into
    /// train.jsonl, unlabeled.jsonl and test.jsonl.
    Continuation(ContinuationArgs),
}

#[derive(clap::Args)]
struct ContinuationArgs {
    #[arg(long)]
    text_dir: PathBuf,
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value_t = 3)]
    context_sentences: usize,
    /// Fractions of documents per split: `train=0.6,unlabeled=0.2,test=0.2` or `0.6,0.2,0.2`.
    #[arg(long, default_value = "0.6,0.2,0.2")]
    split: String,
    /// Most examples kept per split after a seeded shuffle, e.g. `train=200,unlabeled=200,test=100`.
    #[arg(long)]
    limit: Option<String>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Sentences shorter than this (characters) are merged into the next.
    #[arg(long, default_value_t = 20)]
    min_sentence_chars: usize,
    /// Windows holding a sentence longer than this (characters) are skipped.
    #[arg(long, default_value_t = 400)]
    max_sentence_chars: usize,
}

#[derive(Clone, Copy, ValueEnum)]
enum FlavorArg {
    /// ONNX Runtime contrib ops (GroupQueryAttention); batches must be right-padded.
    Ort,
    /// Standard ONNX ops only; takes position_ids, any padding.
    Portable,
}

#[derive(Clone, Copy, ValueEnum)]
enum DTypeArg {
    Fp32,
    Fp16,
    Bf16,
}

#[derive(clap::Args)]
struct OnnxArgs {
    /// A Hugging Face model folder.
    #[arg(long)]
    model: PathBuf,
    /// Output folder (replaced).
    #[arg(long)]
    out: PathBuf,
    /// Default: ort for the Llama family, portable for GPT-2.
    #[arg(long, value_enum)]
    flavor: Option<FlavorArg>,
    #[arg(long, value_enum, default_value = "fp32")]
    dtype: DTypeArg,
    #[arg(long, value_enum, default_value = "lm")]
    head: HeadArg,
    /// Logits only at each row's last real token.
    #[arg(long)]
    last_logits_only: bool,
    /// Llama family, for timing: the fusions to use instead of the flavor's (comma-separated
    /// packed-qkv, skip-norm, gqa; or none).
    #[arg(long, value_enum, value_delimiter = ',')]
    fusions: Option<Vec<FusionArg>>,
    /// A PEFT LoRA adapter folder (adapter_config.json + adapter_model.safetensors, as
    /// `training fit --lora-r` writes) to merge into --model's weights first.
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// Llama family, fp32: int8 stores the projections and the LM head as int8 (per-column
    /// scales; int8 products on activations quantized per row, so outputs stay independent of
    /// the batch); float keeps them in --dtype.
    #[arg(long, value_enum, default_value = "float")]
    weights: WeightsArg,
    /// int8 keeps the KV cache in int8 (ONNX Runtime's quantized GroupQueryAttention cache, a
    /// quarter of fp32's bytes) with the static per-channel scales of --kv-scales; float keeps it
    /// in --dtype. With int8 the folder also holds `prefill.onnx` (the same graph with a float
    /// cache, which `engine generate` runs prompts through on CPU, quantizing what it wrote) and
    /// `kv_scales.safetensors`.
    #[arg(long, value_enum, default_value = "float")]
    kv_cache: KvCacheArg,
    /// The int8 cache's scales, as `engine kv-scales` writes them (safetensors).
    #[arg(long, value_name = "FILE")]
    kv_scales: Option<PathBuf>,
    /// The decode graph's attention over an int8 cache: engine = the engine's own
    /// `ai.pco:Int8CacheAttention` (faster on CPU; the graph then runs only in `engine`), ort =
    /// ONNX Runtime's GroupQueryAttention (any ONNX Runtime runs it).
    #[arg(long, value_enum, default_value = "engine")]
    kv_attention: KvAttentionArg,
}

#[derive(Clone, Copy, ValueEnum)]
enum KvAttentionArg {
    Engine,
    Ort,
}

#[derive(Clone, Copy, ValueEnum)]
enum WeightsArg {
    Float,
    Int8,
}

#[derive(Clone, Copy, ValueEnum)]
enum KvCacheArg {
    Float,
    Int8,
}

#[derive(Clone, Copy, PartialEq, ValueEnum)]
enum FusionArg {
    None,
    PackedQkv,
    SkipNorm,
    Gqa,
}

#[derive(Clone, Copy, ValueEnum)]
enum Arch {
    Llama,
    Mistral,
    Qwen2,
    Qwen3,
    Smollm3,
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
    /// Hidden size instead of the preset's (e.g. 64 with 4 heads gives head_dim 16, which the
    /// ONNX `ort` flavor needs).
    #[arg(long)]
    hidden_size: Option<usize>,
    /// Attention heads instead of the preset's.
    #[arg(long)]
    heads: Option<usize>,
    /// Per-head dimension instead of hidden / heads (Llama family; the qwen3 preset uses 16).
    #[arg(long)]
    head_dim: Option<usize>,
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
                Arch::Qwen3 => ModelType::Qwen3,
                Arch::Smollm3 => ModelType::SmolLM3,
                Arch::Gpt2 => ModelType::Gpt2,
            };
            let Preset::Tiny = a.preset;
            let mut cfg = InitConfig::tiny(ty, a.seed);
            if let Some(k) = a.kv_heads {
                cfg.kv_heads = k;
            }
            if let Some(h) = a.hidden_size {
                cfg.hidden_size = h;
            }
            if let Some(n) = a.heads {
                cfg.heads = n;
            }
            if let Some(d) = a.head_dim {
                cfg.head_dim = Some(d);
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
        Command::Onnx(a) => {
            use exports::onnx::{Elem, Flavor, OnnxExportConfig};
            let mut cfg = OnnxExportConfig::new(&a.model, &a.out);
            cfg.flavor = a.flavor.map(|f| match f {
                FlavorArg::Ort => Flavor::Ort,
                FlavorArg::Portable => Flavor::Portable,
            });
            cfg.dtype = match a.dtype {
                DTypeArg::Fp32 => Elem::F32,
                DTypeArg::Fp16 => Elem::F16,
                DTypeArg::Bf16 => Elem::BF16,
            };
            cfg.head = match a.head {
                HeadArg::Lm => Head::Lm,
                HeadArg::Reward => Head::Reward,
            };
            cfg.last_logits_only = a.last_logits_only;
            cfg.adapter = a.adapter.clone();
            cfg.weights = match a.weights {
                WeightsArg::Float => exports::onnx::WeightFormat::Float,
                WeightsArg::Int8 => exports::onnx::WeightFormat::Int8,
            };
            cfg.kv_cache = match (a.kv_cache, &a.kv_scales) {
                (KvCacheArg::Float, None) => exports::onnx::KvCache::Float,
                (KvCacheArg::Float, Some(_)) => {
                    anyhow::bail!("--kv-scales goes with --kv-cache int8")
                }
                (KvCacheArg::Int8, None) => anyhow::bail!(
                    "--kv-cache int8 needs --kv-scales FILE (written by `engine kv-scales` from the fp32 graph)"
                ),
                (KvCacheArg::Int8, Some(file)) => {
                    let model = exports::ModelConfig::load(&a.model)?;
                    exports::onnx::KvCache::Int8(exports::onnx::KvScales::read(file, &model)?)
                }
            };
            cfg.kv_attention = match a.kv_attention {
                KvAttentionArg::Engine => exports::onnx::KvAttention::Engine,
                KvAttentionArg::Ort => exports::onnx::KvAttention::Ort,
            };
            cfg.fusions = a.fusions.map(|list| exports::onnx::Fusions {
                packed_qkv: list.contains(&FusionArg::PackedQkv),
                skip_norm: list.contains(&FusionArg::SkipNorm),
                gqa: list.contains(&FusionArg::Gqa),
            });
            let s = exports::onnx::export(&cfg)
                .with_context(|| format!("exporting {}", a.model.display()))?;
            println!(
                "wrote {} ({} flavor, {:?}, {:?}, {} weights, {} KV cache, {} nodes, {:.1} MB of weights): {}",
                s.out.display(),
                s.flavor.as_str(),
                s.fusions,
                s.dtype,
                s.weights.as_str(),
                s.kv_cache,
                s.nodes,
                s.weight_bytes as f64 / 1e6,
                s.files.join(", ")
            );
        }
        Command::Dataset(DatasetCommand::Continuation(a)) => {
            use exports::dataset::{
                build_continuation, parse_split_values, ContinuationConfig, SPLITS,
            };
            let mut cfg = ContinuationConfig::new(&a.text_dir, &a.out);
            cfg.context_sentences = a.context_sentences;
            let split: [Option<f64>; 3] = parse_split_values(&a.split, "--split")?;
            cfg.split = split.map(|v| v.unwrap_or(0.0));
            if let Some(limit) = &a.limit {
                cfg.limit = parse_split_values(limit, "--limit")?;
            }
            cfg.seed = a.seed;
            cfg.min_sentence_chars = a.min_sentence_chars;
            cfg.max_sentence_chars = a.max_sentence_chars;
            let s = build_continuation(&cfg)?;
            for (i, split) in SPLITS.iter().enumerate() {
                println!(
                    "{:<10} {:>5} documents {:>7} examples -> {}",
                    split,
                    s.documents[i],
                    s.examples[i],
                    a.out.join(format!("{split}.jsonl")).display()
                );
            }
        }
        Command::Import { gguf, out } => {
            let started = std::time::Instant::now();
            let r = exports::gguf::import_gguf(&gguf, &out)
                .with_context(|| format!("importing {} into {}", gguf.display(), out.display()))?;
            println!(
                "wrote {} ({} tensors from {:?}, {} parameters, tied embeddings: {}) in {:.1}s",
                out.display(),
                r.tensors,
                r.source_types,
                r.config.parameter_count(),
                r.config.tie_word_embeddings,
                started.elapsed().as_secs_f64()
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
    exports::cli::main_with(|| run(Cli::parse()))
}
