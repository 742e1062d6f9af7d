//! Command-line flags of `engine generate` and `engine merge` (clap), turned into the validated
//! library configs.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, ValueEnum};

use super::config::{
    parse_devices, BatchSize, ChatTemplateMode, Device, GenerateConfig, MergeConfig, Shard,
};
use crate::sampling::{Decoding, SamplingConfig};

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum DecodingArg {
    /// Draw from the filtered distribution (temperature, top-k, top-p, min-p).
    Sample,
    /// Take the most likely token.
    Greedy,
    /// Hugging Face beam search (length penalty 1, early_stopping=False); the best beam.
    Beam,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum ChatTemplateArg {
    /// `messages` prompts go through the model's chat template.
    Auto,
    /// Refuse `messages` prompts.
    None,
}

/// Generate responses for a prompts file (JSONL) with an exported ONNX model.
///
/// Output: one line per prompt, in input order: {"id", "prompt" | "messages", "reference",
/// "responses": [{"text", "tokens", "finish_reason"}], "seconds"}. `tokens` counts generated
/// tokens, the EOS token included when the response ended on it. Identical for any
/// --batch-size, --threads, --shard split or --resume point.
#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// Exported ONNX folder (`exports onnx`), with tokenizer files.
    #[arg(long)]
    pub model: PathBuf,
    /// Prompt records (JSON Lines, or Parquet by the `.parquet` extension): {"id", "prompt"} or
    /// {"id", "messages"}, optional "reference"; other fields are copied into the output. The
    /// whole file is checked before the model loads.
    #[arg(long)]
    pub prompts: PathBuf,
    /// Output file (JSONL), appended one flushed line per prompt.
    #[arg(long)]
    pub out: PathBuf,
    /// Responses per prompt.
    #[arg(long, default_value_t = 1)]
    pub n: usize,
    #[arg(long, default_value_t = 256)]
    pub max_new_tokens: usize,
    /// EOS cannot end a response before this many new tokens.
    #[arg(long, default_value_t = 0)]
    pub min_new_tokens: usize,
    /// Keep generating past EOS (for benchmarks).
    #[arg(long)]
    pub ignore_eos: bool,
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f32,
    /// 0 disables.
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// 1 disables.
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    /// 0 disables.
    #[arg(long, default_value_t = 0.0)]
    pub min_p: f32,
    /// 1 disables (HF: positive logits divided, negative multiplied, over prompt + response).
    #[arg(long, default_value_t = 1.0)]
    pub repetition_penalty: f32,
    /// End a response at the first occurrence of this string (cut before it). Repeatable.
    #[arg(long = "stop", value_name = "STRING")]
    pub stop: Vec<String>,
    #[arg(long, value_enum, default_value = "sample")]
    pub decoding: DecodingArg,
    /// Beams for --decoding beam.
    #[arg(long, default_value_t = 4)]
    pub beams: usize,
    /// Never emit an n-gram already in prompt + response (0 disables).
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub no_repeat_ngram: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Cache slots per device (rows decoded together): `auto` takes as many as the memory budget
    /// holds for the job's longest sequence (prompt + --max-new-tokens), at most 64 on CPU and 256
    /// on CUDA, and no more than the job's sequences; a number is taken exactly. Output is the
    /// same for any value.
    #[arg(long, default_value = "auto", value_name = "auto|N")]
    pub batch_size: BatchSize,
    /// Bytes the KV cache may take per device with --batch-size auto, e.g. `2G` (default: half of
    /// the available RAM on CPU, half of the free GPU memory on CUDA).
    #[arg(long, value_name = "SIZE", value_parser = crate::session::parse_bytes)]
    pub memory_budget: Option<usize>,
    /// Intra-op threads (0 or no flag: one per physical core).
    #[arg(long)]
    pub threads: Option<usize>,
    /// `cpu`, or `cuda:0[,cuda:1…]` (one session per GPU).
    #[arg(long, default_value = "cpu", value_parser = parse_devices)]
    pub device: std::vec::Vec<Device>,
    /// Capture decode steps as CUDA graphs (`enable_cuda_graph`; implies --fixed-shape).
    #[arg(long)]
    pub cuda_graph: bool,
    /// Limit of the CUDA allocator's arena, e.g. `20G`, `512M` or bytes; the KV cache must fit
    /// in half of it (checked before any work).
    #[arg(long, value_name = "SIZE", value_parser = crate::session::parse_bytes)]
    pub cuda_mem_limit: Option<usize>,
    /// Decode every step over all slots and the full context, with persistent step inputs
    /// (what CUDA graphs need; `ort`-flavor exports only).
    #[arg(long)]
    pub fixed_shape: bool,
    /// Add the copy counter (host↔device bytes per decode step) to the summary line.
    #[arg(long)]
    pub verbose: bool,
    #[arg(long, value_enum, default_value = "auto")]
    pub chat_template: ChatTemplateArg,
    /// Skip prompts whose id is already in --out and append the rest.
    #[arg(long)]
    pub resume: bool,
    /// Count and skip malformed prompt records (and repeated ids) instead of failing.
    #[arg(long)]
    pub skip_invalid: bool,
    /// Take every N-th prompt, starting at the I-th (0-based), e.g. `--shard 0/4`.
    #[arg(long, value_name = "I/N")]
    pub shard: Option<Shard>,
    /// Write `"seconds": 0` so that outputs of different runs compare byte for byte.
    #[arg(long)]
    pub no_timings: bool,
    /// ONNX Runtime library (default: ORT_DYLIB_PATH, then the project's .venv).
    #[arg(long, value_name = "PATH")]
    pub ort_lib: Option<PathBuf>,
}

impl GenerateArgs {
    pub fn into_config(self) -> Result<GenerateConfig> {
        let decoding = match self.decoding {
            DecodingArg::Sample => Decoding::Sample,
            DecodingArg::Greedy => Decoding::Greedy,
            DecodingArg::Beam => Decoding::Beam { beams: self.beams },
        };
        let cfg = GenerateConfig {
            sampling: SamplingConfig {
                decoding,
                temperature: self.temperature,
                top_k: self.top_k,
                top_p: self.top_p,
                min_p: self.min_p,
                repetition_penalty: self.repetition_penalty,
                no_repeat_ngram: self.no_repeat_ngram,
                min_new_tokens: self.min_new_tokens,
            },
            n: self.n,
            max_new_tokens: self.max_new_tokens,
            ignore_eos: self.ignore_eos,
            stop: self.stop,
            seed: self.seed,
            batch_size: self.batch_size,
            memory_budget: self.memory_budget,
            threads: self.threads,
            devices: self.device,
            cuda: crate::session::CudaOptions {
                cuda_graph: self.cuda_graph,
                mem_limit: self.cuda_mem_limit,
            },
            fixed_shape: self.fixed_shape,
            verbose: self.verbose,
            chat_template: match self.chat_template {
                ChatTemplateArg::Auto => ChatTemplateMode::Auto,
                ChatTemplateArg::None => ChatTemplateMode::None,
            },
            resume: self.resume,
            skip_invalid: self.skip_invalid,
            shard: self.shard,
            timings: !self.no_timings,
            ort_lib: self.ort_lib,
            progress: true,
            ..GenerateConfig::new(self.model, self.prompts, self.out)
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

/// Join `engine generate --shard` outputs back into the prompts file's order.
#[derive(Args, Debug)]
pub struct MergeArgs {
    /// The prompts file the shards were generated from (gives the order).
    #[arg(long)]
    pub prompts: PathBuf,
    /// Merged output (JSONL).
    #[arg(long)]
    pub out: PathBuf,
    /// Shard outputs.
    #[arg(required = true)]
    pub shards: Vec<PathBuf>,
}

impl MergeArgs {
    pub fn into_config(self) -> MergeConfig {
        MergeConfig {
            prompts: self.prompts,
            shards: self.shards,
            out: self.out,
        }
    }
}
