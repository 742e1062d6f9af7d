//! `ModelConfig`: a validated Hugging Face `config.json` for the model families this project trains
//! and exports (Llama, Mistral, Qwen2, Qwen3 and GPT-2), as transformers 4 and 5 write it.
//!
//! Strict about math, lenient about bookkeeping:
//! * every key that changes the computation is either implemented (parsed into a typed field) or
//!   refused with the field and the reason — the refused keys are listed once, in [`REFUSED`];
//! * every other key (`_name_or_path`, `unk_token_id`, `initializer_range`, keys a later
//!   transformers adds …) is kept in [`ModelConfig::extra`], logged at debug level when we do not
//!   know it, and written back by [`ModelConfig::to_json`], so a checkpoint we write carries it.
//!
//! Both rope layouts are read: transformers 5's `rope_parameters` (`rope_type`, `rope_theta`,
//! `factor`, …) and transformers 4's top-level `rope_theta` + `rope_scaling` (legacy `type` key
//! too); we write the transformers 5 layout (`rope_parameters`, `dtype`).

use std::path::Path;

use serde_json::{json, Map, Value};

use crate::error::{Error, IoContext, Result};

/// The `model_type` values we implement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelType {
    Llama,
    Mistral,
    Qwen2,
    Qwen3,
    SmolLM3,
    Gpt2,
}

impl ModelType {
    pub fn as_str(self) -> &'static str {
        match self {
            ModelType::Llama => "llama",
            ModelType::Mistral => "mistral",
            ModelType::Qwen2 => "qwen2",
            ModelType::Qwen3 => "qwen3",
            ModelType::SmolLM3 => "smollm3",
            ModelType::Gpt2 => "gpt2",
        }
    }

    /// The Hugging Face class that loads a causal LM of this type.
    pub fn causal_lm_class(self) -> &'static str {
        match self {
            ModelType::Llama => "LlamaForCausalLM",
            ModelType::Mistral => "MistralForCausalLM",
            ModelType::Qwen2 => "Qwen2ForCausalLM",
            ModelType::Qwen3 => "Qwen3ForCausalLM",
            ModelType::SmolLM3 => "SmolLM3ForCausalLM",
            ModelType::Gpt2 => "GPT2LMHeadModel",
        }
    }

    /// The Hugging Face class of the reward model (`*ForSequenceClassification`, one label).
    pub fn sequence_classification_class(self) -> &'static str {
        match self {
            ModelType::Llama => "LlamaForSequenceClassification",
            ModelType::Mistral => "MistralForSequenceClassification",
            ModelType::Qwen2 => "Qwen2ForSequenceClassification",
            ModelType::Qwen3 => "Qwen3ForSequenceClassification",
            ModelType::SmolLM3 => "SmolLM3ForSequenceClassification",
            ModelType::Gpt2 => "GPT2ForSequenceClassification",
        }
    }

    /// Llama, Mistral, Qwen2, Qwen3 and SmolLM3 share one architecture (RMSNorm, rotary, SwiGLU);
    /// GPT-2 is the other.
    pub fn is_llama_family(self) -> bool {
        !matches!(self, ModelType::Gpt2)
    }

    fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "llama" => ModelType::Llama,
            "mistral" => ModelType::Mistral,
            "qwen2" => ModelType::Qwen2,
            "qwen3" => ModelType::Qwen3,
            "smollm3" => ModelType::SmolLM3,
            "gpt2" => ModelType::Gpt2,
            _ => return None,
        })
    }
}

/// Rotary frequency scaling (`rope_parameters.rope_type`, or the legacy `rope_scaling`).
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    /// Positions divided by `factor`.
    Linear { factor: f64 },
    /// Llama 3.1's piecewise rescaling of the frequencies.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: usize,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// SiLU (Llama family's `hidden_act: silu`).
    Silu,
    /// GPT-2's tanh approximation of GELU (`gelu_new`).
    GeluNew,
}

/// A validated model configuration. Construct with [`ModelConfig::load`] or [`ModelConfig::from_json`].
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub model_type: ModelType,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub intermediate_size: usize,
    pub max_position_embeddings: usize,
    /// RMSNorm epsilon (Llama family) or LayerNorm epsilon (GPT-2).
    pub norm_eps: f64,
    /// Rotary base; unused by GPT-2.
    pub rope_theta: f64,
    pub rope_scaling: Option<RopeScaling>,
    /// Bias on the q/k/v projections (Qwen2; `attention_bias` for Llama and Qwen3).
    pub qkv_bias: bool,
    /// Bias on the attention output projection (`attention_bias` covers o_proj too).
    pub o_bias: bool,
    /// Qwen3's per-head RMSNorm of q and k (`self_attn.q_norm` / `k_norm`, `[head_dim]`), applied
    /// after the projections and before the rotary embedding.
    pub qk_norm: bool,
    /// Layers that skip the rotary embedding (SmolLM3's NoPE layers: `no_rope_layers[i] == 0`),
    /// in increasing order; empty for the other types.
    pub nope_layers: Vec<usize>,
    pub tie_word_embeddings: bool,
    pub activation: Activation,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    pub pad_token_id: Option<u32>,
    /// The sliding window every layer uses (Mistral's `sliding_window`; `None` when it is not
    /// shorter than the context). Per-layer windows (Qwen's `use_sliding_window`, `layer_types`)
    /// are refused.
    pub sliding_window: Option<usize>,
    /// Number of labels of a `*ForSequenceClassification` head (1 for reward models).
    pub num_labels: Option<usize>,
    /// Every key of the file that does not change the math and that [`ModelConfig::to_json`] does
    /// not write itself, in file order: kept so that a checkpoint we write back carries it.
    pub extra: Map<String, Value>,
}

/// A key whose value would change the computation in a way we do not implement. A config whose
/// value is not the harmless one is refused, naming the key and the reason. This is the one list
/// of such keys (the rope types, `hidden_act`, sliding windows and `layer_types` are checked where
/// they are parsed, with the same kind of message).
pub struct Refused {
    pub key: &'static str,
    /// True for the values that compute what we implement (usually absent/null, 0 or false).
    pub harmless: fn(&Value) -> bool,
    pub reason: &'static str,
}

fn null(v: &Value) -> bool {
    v.is_null()
}
fn null_or_false(v: &Value) -> bool {
    v.is_null() || v == &json!(false)
}
fn null_or_zero(v: &Value) -> bool {
    v.is_null() || v.as_f64() == Some(0.0)
}
fn null_or_one(v: &Value) -> bool {
    v.is_null() || v.as_f64() == Some(1.0)
}
fn null_or_true(v: &Value) -> bool {
    v.is_null() || v == &json!(true)
}
fn all_ones(v: &Value) -> bool {
    v.is_null()
        || v.as_array()
            .is_some_and(|a| a.iter().all(|x| x.as_f64() == Some(1.0)))
}

pub const REFUSED: &[Refused] = &[
    Refused {
        key: "quantization_config",
        harmless: null,
        reason: "quantized weights (bitsandbytes, GPTQ, AWQ, fp8 …) are not implemented; dequantize the checkpoint first",
    },
    Refused {
        key: "num_experts",
        harmless: null_or_zero,
        reason: "mixture-of-experts layers are not implemented",
    },
    Refused {
        key: "num_local_experts",
        harmless: null_or_zero,
        reason: "mixture-of-experts layers are not implemented",
    },
    Refused {
        key: "n_routed_experts",
        harmless: null_or_zero,
        reason: "mixture-of-experts layers are not implemented",
    },
    Refused {
        key: "mlp_bias",
        harmless: null_or_false,
        reason: "MLP biases are not implemented",
    },
    Refused {
        key: "attn_logit_softcapping",
        harmless: null,
        reason: "attention logit soft-capping is not implemented",
    },
    Refused {
        key: "final_logit_softcapping",
        harmless: null,
        reason: "final logit soft-capping is not implemented",
    },
    Refused {
        key: "partial_rotary_factor",
        harmless: null_or_one,
        reason: "partial rotary embeddings are not implemented",
    },
    Refused {
        key: "no_rope_layers",
        harmless: all_ones,
        reason: "layers without rotary embedding (NoPE) are implemented for smollm3 only",
    },
    Refused {
        key: "use_qk_norm",
        harmless: null_or_false,
        reason: "this model type's q/k norm is not implemented (Qwen3's is)",
    },
    Refused {
        key: "scale_attn_by_inverse_layer_idx",
        harmless: null_or_false,
        reason: "GPT-2's layer-scaled attention is not implemented",
    },
    Refused {
        key: "reorder_and_upcast_attn",
        harmless: null_or_false,
        reason: "GPT-2's reordered attention is not implemented",
    },
    Refused {
        key: "scale_attn_weights",
        harmless: null_or_true,
        reason: "unscaled attention is not implemented",
    },
    Refused {
        key: "attention_chunk_size",
        harmless: null,
        reason: "chunked attention is not implemented",
    },
];

/// Keys [`ModelConfig::to_json`] writes itself (from the typed fields, or regenerated: the
/// transformers 4 rope keys become `rope_parameters`, `torch_dtype` becomes `dtype`), so they are
/// not carried in `extra`.
const WRITTEN: &[&str] = &[
    "architectures",
    "model_type",
    "transformers_version",
    "torch_dtype",
    "dtype",
    "use_cache",
    "rope_theta",
    "rope_scaling",
    "rope_parameters",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
    "tie_word_embeddings",
    "num_labels",
    "id2label",
    "label2id",
    // GPT-2's dropouts: always written as 0 (transformers' defaults are 0.1).
    "resid_pdrop",
    "embd_pdrop",
    "attn_pdrop",
];

const LLAMA_KEYS: &[&str] = &[
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "intermediate_size",
    "max_position_embeddings",
    "rms_norm_eps",
    "hidden_act",
    "attention_bias",
    "mlp_bias",
    "sliding_window",
];

const GPT2_KEYS: &[&str] = &[
    "vocab_size",
    "n_embd",
    "n_layer",
    "n_head",
    "n_inner",
    "n_positions",
    "layer_norm_epsilon",
    "activation_function",
];

/// Bookkeeping keys known to leave the math alone; carried like unknown keys, only not logged.
const BOOKKEEPING: &[&str] = &[
    "_name_or_path",
    "_model_name_or_path",
    "unk_token_id",
    "initializer_range",
    "pretraining_tp",
    "is_llama_config",
    "rope_interleaved",
    "attention_dropout",
    "problem_type",
    "max_window_layers",
    "use_sliding_window",
    "layer_types",
    "transformers.js_config",
    "chunk_size_feed_forward",
    "is_encoder_decoder",
    "output_attentions",
    "output_hidden_states",
    "return_dict",
    "n_ctx",
    "summary_type",
    "summary_use_proj",
    "summary_activation",
    "summary_proj_to_labels",
    "summary_first_dropout",
    "task_specific_params",
];

struct Fields<'a> {
    path: &'a Path,
    map: &'a Map<String, Value>,
}

impl<'a> Fields<'a> {
    fn err(&self, field: &str, message: impl Into<String>) -> Error {
        Error::Config {
            path: self.path.to_path_buf(),
            field: field.to_string(),
            message: message.into(),
        }
    }

    fn get(&self, field: &str) -> Option<&'a Value> {
        self.map.get(field).filter(|v| !v.is_null())
    }

    fn usize_opt(&self, field: &str) -> Result<Option<usize>> {
        match self.get(field) {
            None => Ok(None),
            Some(v) => v.as_u64().map(|n| Some(n as usize)).ok_or_else(|| {
                self.err(field, format!("expected a non-negative integer, got {v}"))
            }),
        }
    }

    fn usize(&self, field: &str) -> Result<usize> {
        self.usize_opt(field)?
            .ok_or_else(|| self.err(field, "required field is missing"))
    }

    fn positive(&self, field: &str) -> Result<usize> {
        let n = self.usize(field)?;
        if n == 0 {
            return Err(self.err(field, "must be positive"));
        }
        Ok(n)
    }

    fn f64_opt(&self, field: &str) -> Result<Option<f64>> {
        match self.get(field) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| self.err(field, format!("expected a number, got {v}"))),
        }
    }

    fn bool_or(&self, field: &str, default: bool) -> Result<bool> {
        match self.get(field) {
            None => Ok(default),
            Some(v) => v
                .as_bool()
                .ok_or_else(|| self.err(field, format!("expected true or false, got {v}"))),
        }
    }

    fn str_opt(&self, field: &str) -> Result<Option<&'a str>> {
        match self.get(field) {
            None => Ok(None),
            Some(v) => v
                .as_str()
                .map(Some)
                .ok_or_else(|| self.err(field, format!("expected a string, got {v}"))),
        }
    }

    fn token_ids(&self, field: &str) -> Result<Vec<u32>> {
        match self.get(field) {
            None => Ok(vec![]),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| {
                    v.as_u64()
                        .map(|n| n as u32)
                        .ok_or_else(|| self.err(field, format!("expected token ids, got {v}")))
                })
                .collect(),
            Some(v) => v
                .as_u64()
                .map(|n| vec![n as u32])
                .ok_or_else(|| self.err(field, format!("expected a token id, got {v}"))),
        }
    }
}

/// The rope parameters of either layout, as one object: transformers 5's `rope_parameters`, or
/// transformers 4's `rope_scaling` with the top-level `rope_theta` folded in (as transformers 5
/// converts an old config on load).
struct Rope<'a> {
    /// Where the values came from, for error messages (`rope_parameters` or `rope_scaling`).
    field: &'static str,
    obj: Map<String, Value>,
    f: &'a Fields<'a>,
}

impl Rope<'_> {
    fn err(&self, key: &str, message: impl Into<String>) -> Error {
        self.f.err(&format!("{}.{key}", self.field), message)
    }

    fn num(&self, key: &str) -> Result<Option<f64>> {
        match self.obj.get(key).filter(|v| !v.is_null()) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| self.err(key, format!("expected a number, got {v}"))),
        }
    }

    fn required(&self, key: &str) -> Result<f64> {
        self.num(key)?
            .ok_or_else(|| self.err(key, "required for this rope_type"))
    }
}
impl ModelConfig {
    /// Read and validate `config.json` (a file, or a model folder holding one).
    pub fn load(path: &Path) -> Result<Self> {
        let file = if path.is_dir() {
            path.join("config.json")
        } else {
            path.to_path_buf()
        };
        let text = std::fs::read_to_string(&file).at(&file)?;
        let value: Value = serde_json::from_str(&text).map_err(|error| Error::Json {
            path: file.clone(),
            error,
        })?;
        Self::from_json(&value, &file)
    }

    /// Validate a parsed `config.json`; `path` is only used in error messages.
    pub fn from_json(value: &Value, path: &Path) -> Result<Self> {
        let map = value.as_object().ok_or_else(|| Error::Config {
            path: path.to_path_buf(),
            field: "<root>".into(),
            message: "expected a JSON object".into(),
        })?;
        let f = Fields { path, map };
        let model_type = match f.str_opt("model_type")? {
            Some(name) => ModelType::parse(name).ok_or_else(|| {
                f.err(
                    "model_type",
                    format!(
                        "unsupported model type `{name}` (expected llama, mistral, qwen2, qwen3, smollm3 or gpt2)"
                    ),
                )
            })?,
            None => return Err(f.err("model_type", "required field is missing")),
        };
        for r in REFUSED {
            // SmolLM3's NoPE layers are implemented.
            if r.key == "no_rope_layers" && model_type == ModelType::SmolLM3 {
                continue;
            }
            if let Some(v) = map.get(r.key) {
                if !(r.harmless)(v) {
                    return Err(f.err(r.key, format!("{v} is not supported: {}", r.reason)));
                }
            }
        }
        let typed: Vec<&str> = if model_type.is_llama_family() {
            LLAMA_KEYS
                .iter()
                .copied()
                // Mistral and Qwen2 have no `attention_bias` in transformers (their projections'
                // biases are fixed), so the key is carried like any other.
                .filter(|k| {
                    *k != "attention_bias"
                        || !matches!(model_type, ModelType::Mistral | ModelType::Qwen2)
                })
                .collect()
        } else {
            GPT2_KEYS.to_vec()
        };
        let typed: Vec<&str> = if model_type == ModelType::SmolLM3 {
            typed.into_iter().chain(["no_rope_layers"]).collect()
        } else {
            typed
        };
        let mut extra = Map::new();
        for (key, v) in map {
            if typed.contains(&key.as_str()) || WRITTEN.contains(&key.as_str()) {
                continue;
            }
            if !BOOKKEEPING.contains(&key.as_str()) && !REFUSED.iter().any(|r| r.key == key) {
                tracing::debug!(
                    config = %path.display(),
                    key = key.as_str(),
                    "unknown config key kept as is (not used by the math; written back with checkpoints)"
                );
            }
            extra.insert(key.clone(), v.clone());
        }
        let mut config = if model_type.is_llama_family() {
            Self::llama_from(&f, model_type)?
        } else {
            Self::gpt2_from(&f)?
        };
        config.extra = extra;
        config.check_token_ids(&f)?;
        Ok(config)
    }

    fn llama_from(f: &Fields, model_type: ModelType) -> Result<Self> {
        let hidden_size = f.positive("hidden_size")?;
        let num_attention_heads = f.positive("num_attention_heads")?;
        let num_layers = f.positive("num_hidden_layers")?;
        let num_key_value_heads = f
            .usize_opt("num_key_value_heads")?
            .unwrap_or(num_attention_heads);
        if num_key_value_heads == 0 || num_attention_heads % num_key_value_heads != 0 {
            return Err(f.err(
                "num_key_value_heads",
                format!("{num_key_value_heads} does not divide num_attention_heads = {num_attention_heads}"),
            ));
        }
        let from_hidden = || {
            if hidden_size % num_attention_heads != 0 {
                return Err(f.err(
                    "hidden_size",
                    format!("{hidden_size} is not a multiple of num_attention_heads = {num_attention_heads}"),
                ));
            }
            Ok(hidden_size / num_attention_heads)
        };
        // `head_dim` absent or null means hidden / heads, except that Qwen3's config class
        // defaults an absent `head_dim` to 128 (its released sizes' value).
        let head_dim = match f.map.get("head_dim") {
            None if model_type == ModelType::Qwen3 => 128,
            None | Some(Value::Null) => from_hidden()?,
            Some(_) => f.usize("head_dim")?,
        };
        if head_dim == 0 || head_dim % 2 != 0 {
            return Err(f.err(
                "head_dim",
                format!("{head_dim} must be even and positive for rotary embeddings"),
            ));
        }
        match f.str_opt("hidden_act")? {
            None | Some("silu") => {}
            Some(other) => {
                return Err(f.err(
                    "hidden_act",
                    format!("`{other}` is not supported (expected silu)"),
                ))
            }
        }
        let (qkv_bias, o_bias) = match model_type {
            // Qwen2 always has q/k/v biases and never an o_proj bias; Mistral has none.
            ModelType::Qwen2 => (true, false),
            ModelType::Mistral => (false, false),
            _ => {
                let b = f.bool_or("attention_bias", false)?;
                (b, b)
            }
        };
        let max_position_embeddings = f.positive("max_position_embeddings")?;
        let (rope_theta, rope_scaling) = Self::rope_from(f, max_position_embeddings)?;
        let norm_eps = f.f64_opt("rms_norm_eps")?.unwrap_or(1e-6);
        if norm_eps <= 0.0 {
            return Err(f.err("rms_norm_eps", "must be positive"));
        }
        let sliding_window = Self::sliding_window_from(f, model_type, num_layers)?
            .filter(|&w| w < max_position_embeddings);
        Ok(ModelConfig {
            model_type,
            vocab_size: f.positive("vocab_size")?,
            hidden_size,
            num_hidden_layers: num_layers,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            intermediate_size: f.positive("intermediate_size")?,
            max_position_embeddings,
            norm_eps,
            rope_theta,
            rope_scaling,
            qkv_bias,
            o_bias,
            qk_norm: model_type == ModelType::Qwen3,
            nope_layers: Self::nope_layers_from(f, model_type, num_layers)?,
            tie_word_embeddings: f.bool_or("tie_word_embeddings", false)?,
            activation: Activation::Silu,
            bos_token_id: f.usize_opt("bos_token_id")?.map(|n| n as u32),
            eos_token_ids: f.token_ids("eos_token_id")?,
            pad_token_id: f.usize_opt("pad_token_id")?.map(|n| n as u32),
            sliding_window,
            num_labels: f.usize_opt("num_labels")?,
            extra: Map::new(),
        })
    }

    /// SmolLM3's layers without rotary embedding: `no_rope_layers[i] == 0`; absent, every
    /// `no_rope_layer_interval`-th layer (default 4), as its config class derives it.
    fn nope_layers_from(
        f: &Fields,
        model_type: ModelType,
        num_layers: usize,
    ) -> Result<Vec<usize>> {
        if model_type != ModelType::SmolLM3 {
            return Ok(vec![]);
        }
        let Some(v) = f.get("no_rope_layers") else {
            let every = f.usize_opt("no_rope_layer_interval")?.unwrap_or(4);
            if every == 0 {
                return Err(f.err("no_rope_layer_interval", "must be positive"));
            }
            return Ok((0..num_layers).filter(|l| (l + 1) % every == 0).collect());
        };
        let flags = v
            .as_array()
            .filter(|a| a.len() == num_layers)
            .ok_or_else(|| {
                f.err(
                    "no_rope_layers",
                    format!("expected {num_layers} flags (1 = rotary, 0 = none), got {v}"),
                )
            })?;
        let mut out = vec![];
        for (i, x) in flags.iter().enumerate() {
            match x.as_u64() {
                Some(1) => {}
                Some(0) => out.push(i),
                _ => {
                    return Err(f.err(
                        &format!("no_rope_layers[{i}]"),
                        format!("expected 0 or 1, got {x}"),
                    ))
                }
            }
        }
        Ok(out)
    }

    /// The window attention would use. Per-layer windows (`layer_types` with a
    /// `sliding_attention` layer, or Qwen's `use_sliding_window` reaching a layer at or above
    /// `max_window_layers`) are refused; one window for every layer (Mistral) is implemented.
    fn sliding_window_from(
        f: &Fields,
        model_type: ModelType,
        num_layers: usize,
    ) -> Result<Option<usize>> {
        if let Some(v) = f.get("layer_types") {
            let types = v
                .as_array()
                .ok_or_else(|| f.err("layer_types", format!("expected a list, got {v}")))?;
            if types.len() != num_layers {
                return Err(f.err(
                    "layer_types",
                    format!(
                        "has {} entries for num_hidden_layers = {num_layers}",
                        types.len()
                    ),
                ));
            }
            for (i, t) in types.iter().enumerate() {
                match t.as_str() {
                    Some("full_attention") => {}
                    Some(other) => {
                        return Err(f.err(
                            &format!("layer_types[{i}]"),
                            format!("`{other}` layers are not supported (only full_attention): mixed or sliding-window layers are not implemented"),
                        ))
                    }
                    None => {
                        return Err(f.err(
                            &format!("layer_types[{i}]"),
                            format!("expected a string, got {t}"),
                        ))
                    }
                }
            }
        }
        let window = f.usize_opt("sliding_window")?;
        match model_type {
            ModelType::Mistral => Ok(window),
            ModelType::Qwen2 | ModelType::Qwen3 => {
                if !f.bool_or("use_sliding_window", false)? || window.is_none() {
                    return Ok(None);
                }
                let first = f.usize_opt("max_window_layers")?.unwrap_or(28);
                if first < num_layers && f.get("layer_types").is_none() {
                    return Err(f.err(
                        "use_sliding_window",
                        format!("layers {first}..{num_layers} would use a sliding window (max_window_layers = {first}); per-layer sliding windows are not implemented"),
                    ));
                }
                Ok(None)
            }
            // SmolLM3's config class puts the window on its NoPE layers when none are listed.
            ModelType::SmolLM3
                if f.get("layer_types").is_none()
                    && window.is_some()
                    && f.bool_or("use_sliding_window", false)? =>
            {
                Err(f.err(
                    "use_sliding_window",
                    "per-layer sliding windows (on the NoPE layers) are not implemented",
                ))
            }
            // Llama has no sliding window; a stray key is carried, not used.
            _ => Ok(None),
        }
    }

    /// `(rope_theta, scaling)` from `rope_parameters` (transformers 5) or the top-level
    /// `rope_theta` + `rope_scaling` (transformers 4, legacy `type` key included).
    fn rope_from(f: &Fields, max_pos: usize) -> Result<(f64, Option<RopeScaling>)> {
        let rope = if let Some(v) = f.get("rope_parameters") {
            let obj = v
                .as_object()
                .ok_or_else(|| f.err("rope_parameters", format!("expected an object, got {v}")))?;
            if obj
                .iter()
                .any(|(k, v)| v.is_object() || k.ends_with("_attention"))
            {
                return Err(f.err(
                    "rope_parameters",
                    "per-layer-type rope parameters (one set per layer type, as Gemma 3 writes them) are not supported",
                ));
            }
            let mut obj = obj.clone();
            if !obj.contains_key("rope_theta") {
                if let Some(t) = f.get("rope_theta") {
                    obj.insert("rope_theta".into(), t.clone());
                }
            }
            Rope {
                field: "rope_parameters",
                obj,
                f,
            }
        } else {
            let mut obj = match f.get("rope_scaling") {
                None => Map::new(),
                Some(v) => v
                    .as_object()
                    .ok_or_else(|| f.err("rope_scaling", format!("expected an object, got {v}")))?
                    .clone(),
            };
            // Checked here so that the error names the top-level key the file has.
            let theta = f.f64_opt("rope_theta")?;
            obj.remove("rope_theta");
            if let Some(t) = theta {
                obj.insert("rope_theta".into(), json!(t));
            }
            Rope {
                field: "rope_scaling",
                obj,
                f,
            }
        };
        let kind = match rope.obj.get("rope_type").or_else(|| rope.obj.get("type")) {
            None | Some(Value::Null) => "default",
            Some(Value::String(s)) => s.as_str(),
            Some(v) => return Err(rope.err("rope_type", format!("expected a string, got {v}"))),
        };
        let theta = rope.num("rope_theta")?.unwrap_or(10000.0);
        if theta <= 0.0 {
            return Err(f.err("rope_theta", "must be positive"));
        }
        if let Some(p) = rope.num("partial_rotary_factor")? {
            if p != 1.0 {
                return Err(rope.err(
                    "partial_rotary_factor",
                    format!("{p} is not supported: partial rotary embeddings are not implemented"),
                ));
            }
        }
        if let Some(a) = rope.num("attention_factor")? {
            if a != 1.0 {
                return Err(rope.err(
                    "attention_factor",
                    format!("{a} is not supported: scaled attention is not implemented"),
                ));
            }
        }
        let scaling = match kind {
            "default" => None,
            "linear" => Some(RopeScaling::Linear {
                factor: rope.required("factor")?,
            }),
            "llama3" => Some(RopeScaling::Llama3 {
                factor: rope.required("factor")?,
                low_freq_factor: rope.required("low_freq_factor")?,
                high_freq_factor: rope.required("high_freq_factor")?,
                // transformers defaults it to max_position_embeddings when absent.
                original_max_position_embeddings: rope
                    .num("original_max_position_embeddings")?
                    .map_or(max_pos, |n| n as usize),
            }),
            other => {
                return Err(rope.err(
                    "rope_type",
                    format!("`{other}` is not supported (expected default, linear or llama3): it changes the rotary frequencies"),
                ))
            }
        };
        if let Some(RopeScaling::Llama3 {
            low_freq_factor,
            high_freq_factor,
            ..
        }) = &scaling
        {
            if high_freq_factor <= low_freq_factor {
                return Err(rope.err("high_freq_factor", "must be larger than low_freq_factor"));
            }
        }
        Ok((theta, scaling))
    }

    fn gpt2_from(f: &Fields) -> Result<Self> {
        let hidden_size = f.positive("n_embd")?;
        let heads = f.positive("n_head")?;
        if hidden_size % heads != 0 {
            return Err(f.err(
                "n_embd",
                format!("{hidden_size} is not a multiple of n_head = {heads}"),
            ));
        }
        match f.str_opt("activation_function")? {
            None | Some("gelu_new") => {}
            Some(other) => {
                return Err(f.err(
                    "activation_function",
                    format!("`{other}` is not supported (expected gelu_new)"),
                ))
            }
        }
        Ok(ModelConfig {
            model_type: ModelType::Gpt2,
            vocab_size: f.positive("vocab_size")?,
            hidden_size,
            num_hidden_layers: f.positive("n_layer")?,
            num_attention_heads: heads,
            num_key_value_heads: heads,
            head_dim: hidden_size / heads,
            intermediate_size: f.usize_opt("n_inner")?.unwrap_or(4 * hidden_size),
            max_position_embeddings: f.positive("n_positions")?,
            norm_eps: f.f64_opt("layer_norm_epsilon")?.unwrap_or(1e-5),
            rope_theta: 0.0,
            rope_scaling: None,
            qkv_bias: true,
            o_bias: true,
            qk_norm: false,
            nope_layers: vec![],
            tie_word_embeddings: f.bool_or("tie_word_embeddings", true)?,
            activation: Activation::GeluNew,
            bos_token_id: f.usize_opt("bos_token_id")?.map(|n| n as u32),
            eos_token_ids: f.token_ids("eos_token_id")?,
            pad_token_id: f.usize_opt("pad_token_id")?.map(|n| n as u32),
            sliding_window: None,
            num_labels: f.usize_opt("num_labels")?,
            extra: Map::new(),
        })
    }

    fn check_token_ids(&self, f: &Fields) -> Result<()> {
        let v = self.vocab_size as u32;
        let check = |field: &str, id: Option<u32>| -> Result<()> {
            match id {
                Some(id) if id >= v => Err(f.err(
                    field,
                    format!("token id {id} is outside the vocabulary of {v}"),
                )),
                _ => Ok(()),
            }
        };
        check("bos_token_id", self.bos_token_id)?;
        check("pad_token_id", self.pad_token_id)?;
        for &id in &self.eos_token_ids {
            check("eos_token_id", Some(id))?;
        }
        Ok(())
    }

    /// The first EOS id; generation and the data path end responses with it.
    pub fn eos_token_id(&self) -> Option<u32> {
        self.eos_token_ids.first().copied()
    }

    /// Query heads per key/value head (grouped-query attention).
    pub fn kv_groups(&self) -> usize {
        self.num_attention_heads / self.num_key_value_heads
    }

    /// Rotary inverse frequencies `1 / theta^(2j/d)` for `j < head_dim/2`, with `rope_scaling`
    /// applied. Training and the ONNX export both take them from here, so they cannot disagree.
    pub fn rope_inv_freq(&self) -> Vec<f64> {
        let d = self.head_dim as f64;
        let base: Vec<f64> = (0..self.head_dim / 2)
            .map(|j| 1.0 / self.rope_theta.powf(2.0 * j as f64 / d))
            .collect();
        match &self.rope_scaling {
            None => base,
            Some(RopeScaling::Linear { factor }) => base.iter().map(|f| f / factor).collect(),
            Some(RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            }) => {
                let old = *original_max_position_embeddings as f64;
                let low_wavelen = old / low_freq_factor;
                let high_wavelen = old / high_freq_factor;
                base.iter()
                    .map(|&f| {
                        let wavelen = 2.0 * std::f64::consts::PI / f;
                        if wavelen < high_wavelen {
                            f
                        } else if wavelen > low_wavelen {
                            f / factor
                        } else {
                            let smooth = (old / wavelen - low_freq_factor)
                                / (high_freq_factor - low_freq_factor);
                            (1.0 - smooth) * f / factor + smooth * f
                        }
                    })
                    .collect()
            }
        }
    }

    /// The `rope_parameters` object transformers 5 writes for this config.
    pub fn rope_parameters(&self) -> Value {
        match &self.rope_scaling {
            None => json!({"rope_type": "default", "rope_theta": self.rope_theta}),
            Some(RopeScaling::Linear { factor }) => {
                json!({"rope_type": "linear", "rope_theta": self.rope_theta, "factor": factor})
            }
            Some(RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            }) => json!({
                "rope_type": "llama3", "rope_theta": self.rope_theta, "factor": factor,
                "low_freq_factor": low_freq_factor, "high_freq_factor": high_freq_factor,
                "original_max_position_embeddings": original_max_position_embeddings
            }),
        }
    }

    /// Serialize as a Hugging Face `config.json` in the transformers 5 layout (`rope_parameters`,
    /// `dtype`) that transformers loads as `architecture`, followed by the carried keys of
    /// [`ModelConfig::extra`].
    pub fn to_json(&self, architecture: &str) -> Value {
        let mut m = Map::new();
        m.insert("architectures".into(), json!([architecture]));
        m.insert("model_type".into(), json!(self.model_type.as_str()));
        if self.model_type.is_llama_family() {
            m.insert("vocab_size".into(), json!(self.vocab_size));
            m.insert("hidden_size".into(), json!(self.hidden_size));
            m.insert("num_hidden_layers".into(), json!(self.num_hidden_layers));
            m.insert(
                "num_attention_heads".into(),
                json!(self.num_attention_heads),
            );
            m.insert(
                "num_key_value_heads".into(),
                json!(self.num_key_value_heads),
            );
            m.insert("head_dim".into(), json!(self.head_dim));
            m.insert("intermediate_size".into(), json!(self.intermediate_size));
            m.insert(
                "max_position_embeddings".into(),
                json!(self.max_position_embeddings),
            );
            m.insert("rms_norm_eps".into(), json!(self.norm_eps));
            m.insert("rope_parameters".into(), self.rope_parameters());
            m.insert("hidden_act".into(), json!("silu"));
            if matches!(
                self.model_type,
                ModelType::Llama | ModelType::Qwen3 | ModelType::SmolLM3
            ) {
                m.insert("attention_bias".into(), json!(self.qkv_bias));
            }
            if matches!(self.model_type, ModelType::Llama | ModelType::SmolLM3) {
                m.insert("mlp_bias".into(), json!(false));
            }
            if self.model_type == ModelType::SmolLM3 {
                let flags: Vec<u8> = (0..self.num_hidden_layers)
                    .map(|l| u8::from(!self.nope_layers.contains(&l)))
                    .collect();
                m.insert("no_rope_layers".into(), json!(flags));
            }
            if self.model_type != ModelType::Llama {
                // Written even when null: Mistral's config class defaults an absent window to 4096.
                m.insert("sliding_window".into(), json!(self.sliding_window));
            }
        } else {
            m.insert("vocab_size".into(), json!(self.vocab_size));
            m.insert("n_embd".into(), json!(self.hidden_size));
            m.insert("n_layer".into(), json!(self.num_hidden_layers));
            m.insert("n_head".into(), json!(self.num_attention_heads));
            m.insert("n_inner".into(), json!(self.intermediate_size));
            m.insert("n_positions".into(), json!(self.max_position_embeddings));
            m.insert("layer_norm_epsilon".into(), json!(self.norm_eps));
            m.insert("activation_function".into(), json!("gelu_new"));
            // transformers' GPT-2 defaults are 0.1; training here has no dropout.
            for k in ["resid_pdrop", "embd_pdrop", "attn_pdrop"] {
                m.insert(k.into(), json!(0.0));
            }
        }
        m.insert(
            "tie_word_embeddings".into(),
            json!(self.tie_word_embeddings),
        );
        if let Some(id) = self.bos_token_id {
            m.insert("bos_token_id".into(), json!(id));
        }
        match self.eos_token_ids.as_slice() {
            [] => {}
            [one] => {
                m.insert("eos_token_id".into(), json!(one));
            }
            many => {
                m.insert("eos_token_id".into(), json!(many));
            }
        }
        if let Some(id) = self.pad_token_id {
            m.insert("pad_token_id".into(), json!(id));
        }
        if let Some(n) = self.num_labels {
            m.insert("num_labels".into(), json!(n));
            let id2label: Map<String, Value> = (0..n)
                .map(|i| (i.to_string(), json!(format!("LABEL_{i}"))))
                .collect();
            let label2id: Map<String, Value> =
                (0..n).map(|i| (format!("LABEL_{i}"), json!(i))).collect();
            m.insert("id2label".into(), Value::Object(id2label));
            m.insert("label2id".into(), Value::Object(label2id));
        }
        // The weights this project writes are fp32.
        m.insert("dtype".into(), json!("float32"));
        m.insert("use_cache".into(), json!(true));
        for (k, v) in &self.extra {
            // `extra` never holds a key written above; the check keeps it that way.
            if !m.contains_key(k) {
                m.insert(k.clone(), v.clone());
            }
        }
        Value::Object(m)
    }

    /// Write `config.json` into `dir` atomically.
    pub fn save(&self, dir: &Path, architecture: &str) -> Result<()> {
        let text = serde_json::to_string_pretty(&self.to_json(architecture))
            .expect("a JSON value always serializes");
        crate::fsutil::write_atomic(&dir.join("config.json"), text.as_bytes())
    }

    /// Number of parameters, counting a tied embedding once.
    pub fn parameter_count(&self) -> usize {
        let h = self.hidden_size;
        let kv = self.num_key_value_heads * self.head_dim;
        let q = self.num_attention_heads * self.head_dim;
        let emb = self.vocab_size * h;
        let head = if self.tie_word_embeddings { 0 } else { emb };
        let per_layer = if self.model_type.is_llama_family() {
            h * (q + 2 * kv)
                + q * h
                + 3 * h * self.intermediate_size
                + 2 * h
                + if self.qkv_bias { q + 2 * kv } else { 0 }
                + if self.o_bias { h } else { 0 }
                + if self.qk_norm { 2 * self.head_dim } else { 0 }
        } else {
            4 * h * h + 4 * h + 2 * h * self.intermediate_size + self.intermediate_size + h + 4 * h
        };
        let extra = if self.model_type.is_llama_family() {
            h
        } else {
            self.max_position_embeddings * h + 2 * h
        };
        emb + head + self.num_hidden_layers * per_layer + extra
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn smollm() -> Value {
        json!({
            "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 49152,
            "hidden_size": 576, "num_hidden_layers": 30, "num_attention_heads": 9,
            "num_key_value_heads": 3, "intermediate_size": 1536, "max_position_embeddings": 8192,
            "rms_norm_eps": 1e-5, "rope_theta": 100000.0, "tie_word_embeddings": true,
            "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2, "hidden_act": "silu",
            "torch_dtype": "bfloat16", "transformers_version": "4.42.3", "use_cache": true
        })
    }

    fn parse(v: &Value) -> Result<ModelConfig> {
        ModelConfig::from_json(v, Path::new("config.json"))
    }

    #[test]
    fn smollm2_config_parses_with_gqa() {
        let c = parse(&smollm()).unwrap();
        assert_eq!(c.head_dim, 64);
        assert_eq!(c.kv_groups(), 3);
        assert!(c.tie_word_embeddings);
        assert_eq!(c.eos_token_id(), Some(2));
        // 134,515,008 is SmolLM2-135M's published parameter count.
        assert_eq!(c.parameter_count(), 134_515_008);
    }

    /// SmolLM2's config as transformers 5.24 saves it (HF-FORMATS.md).
    fn smollm_v5() -> Value {
        json!({
            "_name_or_path": "/tmp/smollm2", "architectures": ["LlamaForCausalLM"],
            "attention_bias": false, "attention_dropout": 0.0, "bos_token_id": 1, "dtype": "bfloat16",
            "eos_token_id": 2, "head_dim": 64, "hidden_act": "silu", "hidden_size": 576,
            "initializer_range": 0.041666666666666664, "intermediate_size": 1536,
            "max_position_embeddings": 8192, "mlp_bias": false, "model_type": "llama",
            "num_attention_heads": 9, "num_hidden_layers": 30, "num_key_value_heads": 3,
            "pad_token_id": 2, "pretraining_tp": 1, "rms_norm_eps": 1e-5,
            "rope_parameters": {"rope_theta": 100000.0, "rope_type": "default"},
            "tie_word_embeddings": true, "transformers_version": "5.24.0", "unk_token_id": 0,
            "use_cache": true, "vocab_size": 49152
        })
    }

    #[test]
    fn unknown_keys_are_kept_and_written_back() {
        let mut v = smollm_v5();
        v["mystery_knob"] = json!({"a": [1, 2]});
        let c = parse(&v).unwrap();
        assert_eq!(c.extra["mystery_knob"], json!({"a": [1, 2]}));
        assert_eq!(c.extra["unk_token_id"], json!(0));
        assert_eq!(c.extra["_name_or_path"], json!("/tmp/smollm2"));
        let out = c.to_json("LlamaForCausalLM");
        assert_eq!(out["mystery_knob"], json!({"a": [1, 2]}));
        assert_eq!(out["initializer_range"], v["initializer_range"]);
        // Written in the transformers 5 layout.
        assert_eq!(
            out["rope_parameters"],
            json!({"rope_type": "default", "rope_theta": 100000.0})
        );
        assert_eq!(out["dtype"], json!("float32"));
        for old in ["rope_theta", "rope_scaling", "torch_dtype"] {
            assert!(out.get(old).is_none(), "{old} written");
        }
        assert_eq!(parse(&out).unwrap(), c);
    }

    #[test]
    fn transformers4_and_5_configs_parse_to_the_same_model_config() {
        // The same model in both layouts, bookkeeping keys aside (v4: torch_dtype, rope_theta at
        // the top, head_dim absent; v5: dtype, rope_parameters, head_dim written).
        let mut v4 = smollm();
        v4["unk_token_id"] = json!(0);
        let mut v5 = smollm_v5();
        for k in [
            "_name_or_path",
            "attention_bias",
            "attention_dropout",
            "initializer_range",
            "mlp_bias",
            "pretraining_tp",
        ] {
            v5.as_object_mut().unwrap().remove(k);
        }
        assert_eq!(parse(&v4).unwrap(), parse(&v5).unwrap());

        // Llama 3 rope scaling: legacy `rope_scaling` with `type` (and `rope_theta` at the top)
        // against transformers 5's `rope_parameters`.
        let mut a = smollm();
        a["rope_theta"] = json!(500000.0);
        a["rope_scaling"] = json!({"type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192});
        let mut b = smollm();
        b.as_object_mut().unwrap().remove("rope_theta");
        b["rope_parameters"] = json!({"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0,
            "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192});
        let (a, b) = (parse(&a).unwrap(), parse(&b).unwrap());
        assert_eq!(a, b);
        assert_eq!(a.rope_theta, 500000.0);
        assert!(matches!(
            a.rope_scaling,
            Some(RopeScaling::Llama3 { factor, .. }) if factor == 32.0
        ));
        // Linear, both ways; `original_max_position_embeddings` defaults to the context length.
        let mut c = smollm();
        c["rope_scaling"] = json!({"rope_type": "linear", "factor": 2.0});
        let mut d = smollm();
        d.as_object_mut().unwrap().remove("rope_theta");
        d["rope_parameters"] =
            json!({"rope_type": "linear", "factor": 2.0, "rope_theta": 100000.0});
        assert_eq!(parse(&c).unwrap(), parse(&d).unwrap());
        let mut e = smollm();
        e["rope_parameters"] = json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0});
        assert!(matches!(
            parse(&e).unwrap().rope_scaling,
            Some(RopeScaling::Llama3 {
                original_max_position_embeddings: 8192,
                ..
            })
        ));
    }

    #[test]
    fn head_dim_explicit_absent_or_null() {
        let mut v = smollm_v5();
        v["head_dim"] = Value::Null;
        assert_eq!(parse(&v).unwrap().head_dim, 64);
        v.as_object_mut().unwrap().remove("head_dim");
        assert_eq!(parse(&v).unwrap().head_dim, 64);
        // Qwen3's config class: absent means 128, null means hidden / heads.
        v["model_type"] = json!("qwen3");
        let c = parse(&v).unwrap();
        assert_eq!(c.head_dim, 128);
        assert!(c.qk_norm);
        v["head_dim"] = Value::Null;
        assert_eq!(parse(&v).unwrap().head_dim, 64);
        v["head_dim"] = json!(32);
        let c = parse(&v).unwrap();
        assert_eq!(c.head_dim, 32);
        assert_eq!(parse(&c.to_json("Qwen3ForCausalLM")).unwrap(), c);
    }

    #[test]
    fn every_refused_key_names_itself() {
        let bad = |r: &Refused| -> Value {
            for v in [
                json!(true),
                json!(8),
                json!({"quant_method": "gptq"}),
                json!([0, 1]),
            ] {
                if !(r.harmless)(&v) {
                    return v;
                }
            }
            unreachable!("no harmful value for {}", r.key)
        };
        for r in REFUSED {
            let mut v = smollm_v5();
            v[r.key] = bad(r);
            let e = parse(&v).unwrap_err().to_string();
            assert!(
                e.contains(&format!("`{}`", r.key)) && e.contains(r.reason),
                "{}: {e}",
                r.key
            );
            // The harmless value passes (and is kept when it is not a typed key).
            let mut v = smollm_v5();
            v[r.key] = Value::Null;
            parse(&v).unwrap();
        }
        let refused = |patch: Value, field: &str| {
            let mut v = smollm_v5();
            for (k, x) in patch.as_object().unwrap() {
                v[k] = x.clone();
            }
            let e = parse(&v).unwrap_err().to_string();
            assert!(e.contains(&format!("`{field}`")), "{field}: {e}");
        };
        refused(
            json!({"rope_parameters": {"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e6}}),
            "rope_parameters.rope_type",
        );
        refused(
            json!({"rope_parameters": null, "rope_scaling": {"type": "dynamic", "factor": 2.0}}),
            "rope_scaling.rope_type",
        );
        refused(
            json!({"rope_parameters": {"full_attention": {"rope_type": "default", "rope_theta": 1e6},
                "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}}}),
            "rope_parameters",
        );
        refused(
            json!({"rope_parameters": {"rope_type": "default", "rope_theta": 1e4, "partial_rotary_factor": 0.5}}),
            "rope_parameters.partial_rotary_factor",
        );
        refused(
            json!({"layer_types": vec!["full_attention"; 29].into_iter().chain(["sliding_attention"]).collect::<Vec<_>>()}),
            "layer_types[29]",
        );
        refused(
            json!({"model_type": "qwen2", "use_sliding_window": true, "sliding_window": 4096, "max_window_layers": 20}),
            "use_sliding_window",
        );
        refused(json!({"hidden_act": "gelu"}), "hidden_act");
        refused(json!({"model_type": "gemma3"}), "model_type");
    }

    #[test]
    fn smollm3_nope_layers_come_from_the_list_or_the_interval() {
        let mut v = smollm_v5();
        v["model_type"] = json!("smollm3");
        v["num_hidden_layers"] = json!(8);
        let c = parse(&v).unwrap();
        assert_eq!(c.nope_layers, vec![3, 7]);
        let out = c.to_json("SmolLM3ForCausalLM");
        assert_eq!(out["no_rope_layers"], json!([1, 1, 1, 0, 1, 1, 1, 0]));
        assert_eq!(parse(&out).unwrap(), c);
        v["no_rope_layers"] = json!([1, 0, 1, 1, 1, 1, 1, 1]);
        assert_eq!(parse(&v).unwrap().nope_layers, vec![1]);
        v["no_rope_layers"] = json!([1, 0, 1]);
        let e = parse(&v).unwrap_err().to_string();
        assert!(
            e.contains("`no_rope_layers`") && e.contains("8 flags"),
            "{e}"
        );
        // Other types do not implement NoPE layers.
        v["model_type"] = json!("llama");
        v["no_rope_layers"] = json!([1, 0, 1, 1, 1, 1, 1, 1]);
        let e = parse(&v).unwrap_err().to_string();
        assert!(e.contains("`no_rope_layers`"), "{e}");
    }

    #[test]
    fn sliding_window_is_kept_only_where_it_could_apply() {
        let mut v = smollm_v5();
        v["model_type"] = json!("mistral");
        v["sliding_window"] = json!(4096);
        assert_eq!(parse(&v).unwrap().sliding_window, Some(4096));
        v["sliding_window"] = json!(8192);
        assert_eq!(parse(&v).unwrap().sliding_window, None);
        // Qwen: only with use_sliding_window; all-full layer_types are fine.
        v["model_type"] = json!("qwen3");
        v["sliding_window"] = json!(4096);
        v["use_sliding_window"] = json!(false);
        v["layer_types"] = json!(vec!["full_attention"; 30]);
        let c = parse(&v).unwrap();
        assert_eq!(c.sliding_window, None);
        assert_eq!(c.to_json("Qwen3ForCausalLM")["sliding_window"], Value::Null);
        assert_eq!(c.extra["layer_types"], v["layer_types"]);
    }

    #[test]
    fn inconsistent_heads_are_named() {
        let mut v = smollm();
        v["num_key_value_heads"] = json!(4);
        let e = parse(&v).unwrap_err().to_string();
        assert!(
            e.contains("`num_key_value_heads`") && e.contains("does not divide"),
            "{e}"
        );
        let mut v = smollm();
        v["hidden_size"] = json!(577);
        let e = parse(&v).unwrap_err().to_string();
        assert!(e.contains("`hidden_size`"), "{e}");
    }

    #[test]
    fn wrong_types_and_out_of_vocab_ids_are_named() {
        let mut v = smollm();
        v["rope_theta"] = json!("big");
        assert!(parse(&v).unwrap_err().to_string().contains("`rope_theta`"));
        let mut v = smollm();
        v["eos_token_id"] = json!(49152);
        assert!(parse(&v)
            .unwrap_err()
            .to_string()
            .contains("`eos_token_id`"));
        let mut v = smollm();
        v["model_type"] = json!("falcon");
        assert!(parse(&v)
            .unwrap_err()
            .to_string()
            .contains("unsupported model type"));
    }

    #[test]
    fn qwen2_has_qkv_bias_and_round_trips() {
        let mut v = smollm();
        v["model_type"] = json!("qwen2");
        v["sliding_window"] = json!(4096);
        let c = parse(&v).unwrap();
        assert!(c.qkv_bias && !c.o_bias);
        let again = parse(&c.to_json("Qwen2ForCausalLM")).unwrap();
        assert_eq!(c, again);
    }

    #[test]
    fn gpt2_config_round_trips() {
        let v = json!({"model_type": "gpt2", "vocab_size": 50257, "n_embd": 768, "n_layer": 12,
            "n_head": 12, "n_positions": 1024, "n_ctx": 1024, "activation_function": "gelu_new",
            "layer_norm_epsilon": 1e-5, "bos_token_id": 50256, "eos_token_id": 50256});
        let c = parse(&v).unwrap();
        assert_eq!(c.intermediate_size, 3072);
        // GPT-2 small: 124,439,808 parameters.
        assert_eq!(c.parameter_count(), 124_439_808);
        assert_eq!(parse(&c.to_json("GPT2LMHeadModel")).unwrap(), c);
    }

    #[test]
    fn llama3_rope_scaling_matches_reference_values() {
        let mut v = smollm();
        v["rope_theta"] = json!(500000.0);
        v["rope_scaling"] = json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192});
        let c = parse(&v).unwrap();
        let f = c.rope_inv_freq();
        // First frequency is untouched (short wavelength); the last is divided by the factor.
        assert_eq!(f[0], 1.0);
        let base_last = 1.0 / 500000f64.powf(62.0 / 64.0);
        assert!((f[31] - base_last / 8.0).abs() < 1e-18);
    }
}
