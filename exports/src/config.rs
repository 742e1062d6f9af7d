//! `ModelConfig`: a validated Hugging Face `config.json` for the model families this project trains
//! and exports (Llama, Mistral, Qwen2 and GPT-2).
//!
//! `config.json` files carry many keys; every key is either used, or known to be irrelevant to the
//! math (listed in `IGNORED_*`). Anything else is an error naming the key, so that a config from a
//! family we do not implement (say, a Llama with `mlp_bias: true`) is refused instead of silently
//! computing a different function.

use std::path::Path;

use serde_json::{json, Map, Value};

use crate::error::{Error, IoContext, Result};

/// The `model_type` values we implement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelType {
    Llama,
    Mistral,
    Qwen2,
    Gpt2,
}

impl ModelType {
    pub fn as_str(self) -> &'static str {
        match self {
            ModelType::Llama => "llama",
            ModelType::Mistral => "mistral",
            ModelType::Qwen2 => "qwen2",
            ModelType::Gpt2 => "gpt2",
        }
    }

    /// The Hugging Face class that loads a causal LM of this type.
    pub fn causal_lm_class(self) -> &'static str {
        match self {
            ModelType::Llama => "LlamaForCausalLM",
            ModelType::Mistral => "MistralForCausalLM",
            ModelType::Qwen2 => "Qwen2ForCausalLM",
            ModelType::Gpt2 => "GPT2LMHeadModel",
        }
    }

    /// The Hugging Face class of the reward model (`*ForSequenceClassification`, one label).
    pub fn sequence_classification_class(self) -> &'static str {
        match self {
            ModelType::Llama => "LlamaForSequenceClassification",
            ModelType::Mistral => "MistralForSequenceClassification",
            ModelType::Qwen2 => "Qwen2ForSequenceClassification",
            ModelType::Gpt2 => "GPT2ForSequenceClassification",
        }
    }

    /// Llama, Mistral and Qwen2 share one architecture (RMSNorm, rotary, SwiGLU); GPT-2 is the other.
    pub fn is_llama_family(self) -> bool {
        !matches!(self, ModelType::Gpt2)
    }
}

/// Rotary frequency scaling (`rope_scaling` in `config.json`).
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
    /// Bias on the q/k/v projections (Qwen2; optional for Llama via `attention_bias`).
    pub qkv_bias: bool,
    /// Bias on the attention output projection (Llama's `attention_bias` covers o_proj too).
    pub o_bias: bool,
    pub tie_word_embeddings: bool,
    pub activation: Activation,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    pub pad_token_id: Option<u32>,
    /// Mistral's sliding window; attention here is full, which equals windowed attention for
    /// sequences no longer than the window.
    pub sliding_window: Option<usize>,
    /// Number of labels of a `*ForSequenceClassification` head (1 for reward models).
    pub num_labels: Option<usize>,
}

const IGNORED_COMMON: &[&str] = &[
    "_name_or_path",
    "architectures",
    "transformers_version",
    "torch_dtype",
    "dtype",
    "use_cache",
    "initializer_range",
    "pretraining_tp",
    "model_type",
    "is_llama_config",
    "rope_interleaved",
    "attention_dropout",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
    "tie_word_embeddings",
    "num_labels",
    "id2label",
    "label2id",
    "problem_type",
    "max_window_layers",
    "use_sliding_window",
    "transformers.js_config",
    "quantization_config",
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
    "rope_theta",
    "rope_scaling",
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
    "n_ctx",
    "layer_norm_epsilon",
    "activation_function",
    "resid_pdrop",
    "embd_pdrop",
    "attn_pdrop",
    "summary_type",
    "summary_use_proj",
    "summary_activation",
    "summary_proj_to_labels",
    "summary_first_dropout",
    "scale_attn_weights",
    "scale_attn_by_inverse_layer_idx",
    "reorder_and_upcast_attn",
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
            Some("llama") => ModelType::Llama,
            Some("mistral") => ModelType::Mistral,
            Some("qwen2") => ModelType::Qwen2,
            Some("gpt2") => ModelType::Gpt2,
            Some(other) => {
                return Err(f.err(
                    "model_type",
                    format!(
                        "unsupported model type `{other}` (expected llama, mistral, qwen2 or gpt2)"
                    ),
                ))
            }
            None => return Err(f.err("model_type", "required field is missing")),
        };
        let known: &[&str] = if model_type.is_llama_family() {
            LLAMA_KEYS
        } else {
            GPT2_KEYS
        };
        for key in map.keys() {
            if !known.contains(&key.as_str()) && !IGNORED_COMMON.contains(&key.as_str()) {
                return Err(f.err(key, "unknown field for this model type"));
            }
        }
        let config = if model_type.is_llama_family() {
            Self::llama_from(&f, model_type)?
        } else {
            Self::gpt2_from(&f)?
        };
        config.check_token_ids(&f)?;
        Ok(config)
    }

    fn llama_from(f: &Fields, model_type: ModelType) -> Result<Self> {
        let hidden_size = f.positive("hidden_size")?;
        let num_attention_heads = f.positive("num_attention_heads")?;
        let num_key_value_heads = f
            .usize_opt("num_key_value_heads")?
            .unwrap_or(num_attention_heads);
        if num_key_value_heads == 0 || num_attention_heads % num_key_value_heads != 0 {
            return Err(f.err(
                "num_key_value_heads",
                format!("{num_key_value_heads} does not divide num_attention_heads = {num_attention_heads}"),
            ));
        }
        let head_dim = match f.usize_opt("head_dim")? {
            Some(d) => d,
            None => {
                if hidden_size % num_attention_heads != 0 {
                    return Err(f.err(
                        "hidden_size",
                        format!("{hidden_size} is not a multiple of num_attention_heads = {num_attention_heads}"),
                    ));
                }
                hidden_size / num_attention_heads
            }
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
        if f.bool_or("mlp_bias", false)? {
            return Err(f.err("mlp_bias", "MLP biases are not supported"));
        }
        let attention_bias = f.bool_or("attention_bias", false)?;
        // Qwen2 always has q/k/v biases and never an o_proj bias.
        let (qkv_bias, o_bias) = match model_type {
            ModelType::Qwen2 => (true, false),
            _ => (attention_bias, attention_bias),
        };
        let rope_theta = f.f64_opt("rope_theta")?.unwrap_or(10000.0);
        if rope_theta <= 0.0 {
            return Err(f.err("rope_theta", "must be positive"));
        }
        let max_position_embeddings = f.positive("max_position_embeddings")?;
        let rope_scaling = Self::rope_scaling_from(f)?;
        let norm_eps = f.f64_opt("rms_norm_eps")?.unwrap_or(1e-6);
        if norm_eps <= 0.0 {
            return Err(f.err("rms_norm_eps", "must be positive"));
        }
        Ok(ModelConfig {
            model_type,
            vocab_size: f.positive("vocab_size")?,
            hidden_size,
            num_hidden_layers: f.positive("num_hidden_layers")?,
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
            tie_word_embeddings: f.bool_or("tie_word_embeddings", false)?,
            activation: Activation::Silu,
            bos_token_id: f.usize_opt("bos_token_id")?.map(|n| n as u32),
            eos_token_ids: f.token_ids("eos_token_id")?,
            pad_token_id: f.usize_opt("pad_token_id")?.map(|n| n as u32),
            sliding_window: f.usize_opt("sliding_window")?,
            num_labels: f.usize_opt("num_labels")?,
        })
    }

    fn rope_scaling_from(f: &Fields) -> Result<Option<RopeScaling>> {
        let Some(v) = f.get("rope_scaling") else {
            return Ok(None);
        };
        let obj = v
            .as_object()
            .ok_or_else(|| f.err("rope_scaling", "expected an object"))?;
        let kind = obj
            .get("rope_type")
            .or_else(|| obj.get("type"))
            .and_then(Value::as_str)
            .ok_or_else(|| f.err("rope_scaling.rope_type", "required field is missing"))?;
        let num = |k: &str| -> Result<f64> {
            obj.get(k)
                .and_then(Value::as_f64)
                .ok_or_else(|| f.err(&format!("rope_scaling.{k}"), "expected a number"))
        };
        match kind {
            "default" => Ok(None),
            "linear" => Ok(Some(RopeScaling::Linear {
                factor: num("factor")?,
            })),
            "llama3" => Ok(Some(RopeScaling::Llama3 {
                factor: num("factor")?,
                low_freq_factor: num("low_freq_factor")?,
                high_freq_factor: num("high_freq_factor")?,
                original_max_position_embeddings: num("original_max_position_embeddings")? as usize,
            })),
            other => Err(f.err(
                "rope_scaling.rope_type",
                format!("`{other}` is not supported (expected default, linear or llama3)"),
            )),
        }
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
        for flag in ["scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn"] {
            if f.bool_or(flag, false)? {
                return Err(f.err(flag, "is not supported"));
            }
        }
        if !f.bool_or("scale_attn_weights", true)? {
            return Err(f.err("scale_attn_weights", "unscaled attention is not supported"));
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
            tie_word_embeddings: f.bool_or("tie_word_embeddings", true)?,
            activation: Activation::GeluNew,
            bos_token_id: f.usize_opt("bos_token_id")?.map(|n| n as u32),
            eos_token_ids: f.token_ids("eos_token_id")?,
            pad_token_id: f.usize_opt("pad_token_id")?.map(|n| n as u32),
            sliding_window: None,
            num_labels: f.usize_opt("num_labels")?,
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

    /// Serialize as a Hugging Face `config.json` that transformers loads as `architecture`.
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
            m.insert("rope_theta".into(), json!(self.rope_theta));
            m.insert(
                "rope_scaling".into(),
                match &self.rope_scaling {
                    None => Value::Null,
                    Some(RopeScaling::Linear { factor }) => {
                        json!({"rope_type": "linear", "factor": factor})
                    }
                    Some(RopeScaling::Llama3 {
                        factor,
                        low_freq_factor,
                        high_freq_factor,
                        original_max_position_embeddings,
                    }) => json!({
                        "rope_type": "llama3", "factor": factor, "low_freq_factor": low_freq_factor,
                        "high_freq_factor": high_freq_factor,
                        "original_max_position_embeddings": original_max_position_embeddings
                    }),
                },
            );
            m.insert("hidden_act".into(), json!("silu"));
            if self.model_type != ModelType::Qwen2 {
                m.insert("attention_bias".into(), json!(self.qkv_bias));
                m.insert("mlp_bias".into(), json!(false));
            }
            if let Some(w) = self.sliding_window {
                m.insert("sliding_window".into(), json!(w));
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
        m.insert("torch_dtype".into(), json!("float32"));
        m.insert("use_cache".into(), json!(true));
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

    #[test]
    fn unknown_field_is_named() {
        let mut v = smollm();
        v["mystery_knob"] = json!(3);
        let e = parse(&v).unwrap_err().to_string();
        assert!(
            e.contains("`mystery_knob`") && e.contains("unknown field"),
            "{e}"
        );
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
