//! `exports onnx`: write a Hugging Face model folder as an ONNX decoder with a KV cache
//! (`model.onnx` + `model.onnx.data`), with `genai_config.json` and the tokenizer files, so the
//! folder runs under plain ONNX Runtime sessions (the engine) and under onnxruntime-genai.
//!
//! Graph contract (Optimum / onnxruntime-genai names):
//! * inputs `input_ids` `[batch, seq]` i64, `attention_mask` `[batch, past + seq]` i64,
//!   `position_ids` `[batch, seq]` i64 (portable flavor only), `past_key_values.{i}.key|value`
//!   `[batch, kv_heads, past, head_dim]` (past = 0 for the prefill);
//! * outputs `logits` `[batch, seq | 1, vocab]` f32 (or `score` `[batch]` f32 for a reward head)
//!   and `present.{i}.key|value` `[batch, kv_heads, past + seq, head_dim]`.
//!
//! Padding: the portable graph accepts any padding given `position_ids = cumsum(mask) − 1`. The
//! `ort` graph (GroupQueryAttention) needs RIGHT padding: it takes each row's length from
//! `Σ attention_mask` and assumes the row's tokens are its first positions.

mod builder;
mod genai_config;
mod gpt2;
mod layers;
mod llama;
mod proto;

use std::path::{Path, PathBuf};

pub use builder::Elem;
pub use layers::HeadKind;

use crate::checkpoint::Checkpoint;
use crate::config::ModelConfig;
use crate::error::{Error, IoContext, Result};
use crate::fsutil;
use crate::layout::Head;

/// ONNX Runtime 1.31 reads IR ≤ 13; 10 is what onnxruntime-genai writes and covers opset 21.
pub const IR_VERSION: i64 = 10;
pub const PRODUCER: &str = "pco-exports";
pub const MODEL_FILE: &str = "model.onnx";

/// Which operator set the graph uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// ONNX Runtime contrib ops in onnxruntime-genai's CPU form (Llama family only).
    Ort,
    /// Standard ONNX ops only (opset 21).
    Portable,
}

impl Flavor {
    pub fn as_str(self) -> &'static str {
        match self {
            Flavor::Ort => "ort",
            Flavor::Portable => "portable",
        }
    }
}

/// Settings of one export.
#[derive(Debug, Clone)]
pub struct OnnxExportConfig {
    /// Hugging Face model folder (config.json, safetensors, tokenizer files).
    pub model: PathBuf,
    /// Output folder; replaced atomically.
    pub out: PathBuf,
    /// `None`: `Ort` for the Llama family, `Portable` for GPT-2.
    pub flavor: Option<Flavor>,
    /// Weight and io type (F32, F16 or BF16); logits and scores are always f32.
    pub dtype: Elem,
    pub head: Head,
    /// Logits only at each row's last real token of the step (`[batch, 1, vocab]`).
    pub last_logits_only: bool,
}

impl OnnxExportConfig {
    pub fn new(model: impl Into<PathBuf>, out: impl Into<PathBuf>) -> Self {
        OnnxExportConfig {
            model: model.into(),
            out: out.into(),
            flavor: None,
            dtype: Elem::F32,
            head: Head::Lm,
            last_logits_only: false,
        }
    }
}

/// What an export wrote.
#[derive(Debug, Clone)]
pub struct ExportSummary {
    pub out: PathBuf,
    pub flavor: Flavor,
    pub dtype: Elem,
    pub nodes: usize,
    pub weight_bytes: usize,
    pub files: Vec<String>,
}

/// Tokenizer and config files copied next to the graph when present.
const COPIED: &[&str] = &[
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "vocab.json",
    "merges.txt",
];

/// Export `cfg.model` to `cfg.out`.
pub fn export(cfg: &OnnxExportConfig) -> Result<ExportSummary> {
    let model = ModelConfig::load(&cfg.model)?;
    let ckpt = Checkpoint::load(&cfg.model)?;
    let flavor = cfg.flavor.unwrap_or(if model.model_type.is_llama_family() {
        Flavor::Ort
    } else {
        Flavor::Portable
    });
    if !cfg.dtype.is_float() {
        return Err(Error::Invalid(format!(
            "--dtype must be a float type, got {:?}",
            cfg.dtype
        )));
    }
    let head = match (cfg.head, cfg.last_logits_only) {
        (Head::Reward, true) => {
            return Err(Error::Invalid(
                "--last-logits-only applies to the lm head only".into(),
            ));
        }
        (Head::Reward, false) => HeadKind::Reward,
        (Head::Lm, true) => HeadKind::LmLast,
        (Head::Lm, false) => HeadKind::Lm,
    };
    if flavor == Flavor::Ort && model.head_dim % 16 != 0 {
        // ONNX Runtime's CPU GroupQueryAttention kernel refuses other head sizes at run time.
        return Err(Error::Invalid(format!(
            "--flavor ort needs head_dim to be a multiple of 16 (GroupQueryAttention), got {}; use --flavor portable",
            model.head_dim
        )));
    }
    let graph = if model.model_type.is_llama_family() {
        let spec = llama::LlamaSpec {
            flavor,
            elem: cfg.dtype,
            head,
        };
        llama::build(&model, &ckpt, &spec)?
    } else {
        if flavor == Flavor::Ort {
            return Err(Error::Invalid(
                "GPT-2 is exported with --flavor portable only".into(),
            ));
        }
        gpt2::build(&model, &ckpt, cfg.dtype, head)?
    };
    drop(ckpt);
    let nodes = graph.node_count();
    let weight_bytes = graph.weight_bytes();
    let mut files = vec![MODEL_FILE.to_string(), format!("{MODEL_FILE}.data")];
    let src = cfg.model.clone();
    fsutil::write_dir_atomic(&cfg.out, |dir| {
        graph.save(dir, MODEL_FILE)?;
        if head != HeadKind::Reward {
            let text = serde_json::to_string_pretty(&genai_config::genai_config(
                &model, flavor, MODEL_FILE,
            ))
            .expect("a JSON value always serializes");
            fsutil::write_atomic(&dir.join("genai_config.json"), text.as_bytes())?;
            files.push("genai_config.json".into());
        }
        for name in COPIED {
            let from = src.join(name);
            if from.is_file() {
                copy(&from, &dir.join(name))?;
                files.push((*name).to_string());
            }
        }
        Ok(())
    })?;
    Ok(ExportSummary {
        out: cfg.out.clone(),
        flavor,
        dtype: cfg.dtype,
        nodes,
        weight_bytes,
        files,
    })
}

fn copy(from: &Path, to: &Path) -> Result<()> {
    let bytes = std::fs::read(from).at(from)?;
    fsutil::write_atomic(to, &bytes)
}
