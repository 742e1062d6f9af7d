//! `exports import --gguf FILE --out DIR`: a llama.cpp GGUF (Llama or Qwen3 architecture) to a
//! Hugging Face model folder that transformers loads as `LlamaForCausalLM` / `Qwen3ForCausalLM`
//! with the same logits as its own GGUF loader: fp32 weights dequantized bit-identically to gguf-py, llama.cpp's Q/K row permutation
//! undone, config and tokenizer from the metadata.
//!
//! Everything is read, checked and converted in memory first; the folder is then written with
//! [`write_dir_atomic`], so a bad file leaves nothing at `--out`.

use std::collections::BTreeMap;
use std::path::Path;

use crate::checkpoint::{Checkpoint, HostTensor};
use crate::config::{Activation, ModelConfig, ModelType, RopeScaling};
use crate::error::Result;
use crate::fsutil::write_dir_atomic;
use crate::gguf::permute::unpermute_rows;
use crate::gguf::reader::GgufFile;
use crate::gguf::tokenizer::GgufTokenizer;
use crate::init::write_generation_config;
use crate::layout::{self, Head};

/// What an import produced.
#[derive(Debug, Clone)]
pub struct ImportSummary {
    pub config: ModelConfig,
    /// Number of tensors written.
    pub tensors: usize,
    /// How many GGUF tensors of each ggml type were read (`"Q4_1" -> 210`, …).
    pub source_types: BTreeMap<String, usize>,
}

/// A GGUF converted in memory, ready to be written.
pub struct ImportedModel {
    pub config: ModelConfig,
    pub checkpoint: Checkpoint,
    pub tokenizer: GgufTokenizer,
    pub source_types: BTreeMap<String, usize>,
}

/// The Hugging Face name of a llama.cpp tensor name, or `None` for a name we do not know.
pub fn hf_tensor_name(gguf_name: &str) -> Option<String> {
    let fixed = match gguf_name {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(n) = fixed {
        return Some(n.to_string());
    }
    let rest = gguf_name.strip_prefix("blk.")?;
    let (layer, leaf) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let hf_leaf = match leaf {
        "attn_q.weight" => "self_attn.q_proj.weight",
        "attn_k.weight" => "self_attn.k_proj.weight",
        "attn_v.weight" => "self_attn.v_proj.weight",
        "attn_output.weight" => "self_attn.o_proj.weight",
        "ffn_gate.weight" => "mlp.gate_proj.weight",
        "ffn_up.weight" => "mlp.up_proj.weight",
        "ffn_down.weight" => "mlp.down_proj.weight",
        "attn_norm.weight" => "input_layernorm.weight",
        "ffn_norm.weight" => "post_attention_layernorm.weight",
        "attn_q_norm.weight" => "self_attn.q_norm.weight",
        "attn_k_norm.weight" => "self_attn.k_norm.weight",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf_leaf}"))
}

/// llama.cpp stores Llama 3's rope scaling as this tensor of per-frequency divisors, not as
/// metadata.
const ROPE_FREQS: &str = "rope_freqs.weight";

/// The model configuration from `general.architecture = llama | qwen3` metadata.
pub fn config_from_gguf(g: &GgufFile) -> Result<ModelConfig> {
    let arch = g.get_str("general.architecture")?;
    let model_type = match arch {
        "llama" => ModelType::Llama,
        "qwen3" => ModelType::Qwen3,
        _ => {
            return Err(g.err(format!(
                "general.architecture = `{arch}` is not supported (only `llama` and `qwen3`)"
            )))
        }
    };
    let key = |k: &str| format!("{arch}.{k}");
    let hidden = g.get_usize(&key("embedding_length"))?;
    let heads = g.get_usize(&key("attention.head_count"))?;
    let kv_heads = g
        .get_usize_opt(&key("attention.head_count_kv"))?
        .unwrap_or(heads);
    let key_length = g.get_usize_opt(&key("attention.key_length"))?;
    if heads == 0 || (key_length.is_none() && hidden % heads != 0) {
        return Err(g.err(format!(
            "{} = {hidden} is not a multiple of {} = {heads}",
            key("embedding_length"),
            key("attention.head_count")
        )));
    }
    let head_dim = key_length.unwrap_or(hidden / heads);
    for k in ["attention.value_length", "rope.dimension_count"] {
        if let Some(v) = g.get_usize_opt(&key(k))? {
            if v != head_dim {
                return Err(g.err(format!(
                    "{} = {v} differs from the head size {head_dim}; partial rotary or distinct value heads are not supported",
                    key(k)
                )));
            }
        }
    }
    let tokens = g.get_str_array("tokenizer.ggml.tokens")?.len();
    if let Some(v) = g.get_usize_opt(&key("vocab_size"))? {
        if v != tokens {
            return Err(g.err(format!(
                "{} = {v} but tokenizer.ggml.tokens has {tokens} tokens",
                key("vocab_size")
            )));
        }
    }
    let rope_scaling = match g.get_str_opt(&key("rope.scaling.type"))? {
        None | Some("none") => None,
        Some("linear") => Some(RopeScaling::Linear {
            factor: g
                .get_f64_opt(&key("rope.scaling.factor"))?
                .ok_or_else(|| g.err(format!("{} is missing", key("rope.scaling.factor"))))?,
        }),
        Some(other) => {
            return Err(g.err(format!(
                "{} = `{other}` is not supported",
                key("rope.scaling.type")
            )))
        }
    };
    let rope_theta = g.get_f64_opt(&key("rope.freq_base"))?.unwrap_or(10000.0);
    let context = g.get_usize(&key("context_length"))?;
    let rope_scaling = match (rope_scaling, g.tensor(ROPE_FREQS)) {
        (s, None) => s,
        (None, Some(t)) => {
            llama3_from_rope_freqs(g, &g.dequantize(t)?, rope_theta, head_dim, context)?
        }
        (Some(_), Some(_)) => {
            return Err(g.err(format!(
                "both {} and a `{ROPE_FREQS}` tensor: two rope scalings",
                key("rope.scaling.type")
            )))
        }
    };
    let token_id = |k: &str| -> Result<Option<u32>> { Ok(g.get_usize_opt(k)?.map(|id| id as u32)) };
    let config = ModelConfig {
        model_type,
        vocab_size: tokens,
        hidden_size: hidden,
        num_hidden_layers: g.get_usize(&key("block_count"))?,
        num_attention_heads: heads,
        num_key_value_heads: kv_heads,
        head_dim,
        intermediate_size: g.get_usize(&key("feed_forward_length"))?,
        max_position_embeddings: context,
        // Widened from the stored f32, as transformers does: 1e-5 becomes 9.99999974e-6.
        norm_eps: g
            .get_f64_opt(&key("attention.layer_norm_rms_epsilon"))?
            .ok_or_else(|| {
                g.err(format!(
                    "metadata `{}` is missing",
                    key("attention.layer_norm_rms_epsilon")
                ))
            })?,
        rope_theta,
        rope_scaling,
        qkv_bias: false,
        o_bias: false,
        qk_norm: model_type == ModelType::Qwen3,
        nope_layers: vec![],
        tie_word_embeddings: g.tensor("output.weight").is_none(),
        activation: Activation::Silu,
        bos_token_id: token_id("tokenizer.ggml.bos_token_id")?,
        eos_token_ids: token_id("tokenizer.ggml.eos_token_id")?
            .into_iter()
            .collect(),
        pad_token_id: token_id("tokenizer.ggml.padding_token_id")?,
        sliding_window: None,
        num_labels: None,
        extra: serde_json::Map::new(),
    };
    // The same validation a user's config.json gets (head counts, token ids inside the vocabulary).
    ModelConfig::from_json(
        &config.to_json(config.model_type.causal_lm_class()),
        g.path(),
    )
}

/// Llama 3 rope scaling from llama.cpp's `rope_freqs.weight` (one divisor per frequency, what
/// `convert_hf_to_gguf.py` computes from `factor`, `low_freq_factor`, `high_freq_factor` and
/// `original_max_position_embeddings`). The GGUF does not keep those four values, so the ones
/// every Llama 3.x release uses (low 1, high 4, original context 8192) are tried with
/// `factor` = the largest divisor, and accepted only if they reproduce every divisor; otherwise
/// the import is refused, naming what is missing. All divisors 1 means no scaling.
fn llama3_from_rope_freqs(
    g: &GgufFile,
    divisors: &[f32],
    theta: f64,
    head_dim: usize,
    context: usize,
) -> Result<Option<RopeScaling>> {
    if divisors.len() != head_dim / 2 {
        return Err(g.err(format!(
            "`{ROPE_FREQS}` has {} values, expected head_dim / 2 = {}",
            divisors.len(),
            head_dim / 2
        )));
    }
    if divisors.iter().all(|&d| d == 1.0) {
        return Ok(None);
    }
    let factor = divisors.iter().copied().fold(f32::MIN, f32::max) as f64;
    for original in [8192, context] {
        let scaling = RopeScaling::Llama3 {
            factor,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: original,
        };
        let probe = |s: Option<RopeScaling>| {
            ModelConfig {
                rope_theta: theta,
                rope_scaling: s,
                head_dim,
                ..llama_probe()
            }
            .rope_inv_freq()
        };
        let (base, scaled) = (probe(None), probe(Some(scaling.clone())));
        let fits = base.iter().zip(&scaled).zip(divisors).all(|((b, s), &d)| {
            let want = b / s;
            (want - d as f64).abs() <= 1e-5 * want.abs()
        });
        if fits {
            return Ok(Some(scaling));
        }
    }
    Err(g.err(format!(
        "`{ROPE_FREQS}` holds per-frequency rope divisors (llama3 scaling, factor {factor}) that match no llama3 rope_scaling with low_freq_factor 1, high_freq_factor 4 and original_max_position_embeddings 8192 or {context}; the GGUF lacks those parameters"
    )))
}

/// A config used only for its `rope_inv_freq` (theta, head_dim and scaling are set by the caller).
fn llama_probe() -> ModelConfig {
    ModelConfig {
        model_type: ModelType::Llama,
        vocab_size: 1,
        hidden_size: 2,
        num_hidden_layers: 1,
        num_attention_heads: 1,
        num_key_value_heads: 1,
        head_dim: 2,
        intermediate_size: 1,
        max_position_embeddings: 1,
        norm_eps: 1e-6,
        rope_theta: 10000.0,
        rope_scaling: None,
        qkv_bias: false,
        o_bias: false,
        qk_norm: false,
        nope_layers: vec![],
        tie_word_embeddings: true,
        activation: Activation::Silu,
        bos_token_id: None,
        eos_token_ids: vec![],
        pad_token_id: None,
        sliding_window: None,
        num_labels: None,
        extra: serde_json::Map::new(),
    }
}

/// Dequantize every tensor, rename it, undo the Q/K permutation and check it against the layout
/// of `config`: every expected tensor present with its shape, nothing unknown left over.
pub fn checkpoint_from_gguf(
    g: &GgufFile,
    config: &ModelConfig,
) -> Result<(Checkpoint, BTreeMap<String, usize>)> {
    let expected: BTreeMap<String, Vec<usize>> = layout::tensors(config, Head::Lm)
        .into_iter()
        .map(|t| (t.name, t.shape))
        .collect();
    let mut ckpt = Checkpoint::new();
    let mut types = BTreeMap::new();
    for t in &g.tensors {
        if t.name == ROPE_FREQS {
            continue; // read into the config's rope scaling
        }
        let hf = hf_tensor_name(&t.name).ok_or_else(|| {
            g.err(format!(
                "tensor `{}` has no Hugging Face Llama counterpart",
                t.name
            ))
        })?;
        let shape = t.shape();
        let want = expected.get(&hf).ok_or_else(|| {
            g.err(format!(
                "tensor `{}` ({hf}) does not belong to a model of this configuration",
                t.name
            ))
        })?;
        if &shape != want {
            return Err(g.err(format!(
                "tensor `{}` ({hf}) has shape {shape:?} (GGUF ne {:?}), expected {want:?}",
                t.name, t.ne
            )));
        }
        let mut values = g.dequantize(t)?;
        // convert_hf_to_gguf.py permutes Q/K rows for Llama only (Qwen uses NeoX-style rope).
        let permuted = config.model_type == ModelType::Llama;
        let heads = if !permuted {
            None
        } else if hf.ends_with("q_proj.weight") {
            Some(config.num_attention_heads)
        } else if hf.ends_with("k_proj.weight") {
            Some(config.num_key_value_heads)
        } else {
            None
        };
        if let Some(n) = heads {
            values = unpermute_rows(&values, shape[0], shape[1], n)
                .map_err(|m| g.err(format!("tensor `{}`: {m}", t.name)))?;
        }
        *types.entry(t.ggml_type.name.to_string()).or_insert(0) += 1;
        ckpt.insert(hf, HostTensor::from_f32(shape, &values));
    }
    if let Some(missing) = expected.keys().find(|n| !ckpt.tensors.contains_key(*n)) {
        return Err(g.err(format!(
            "tensor `{missing}` is missing (no GGUF tensor maps to it)"
        )));
    }
    ckpt.source = g.path().to_path_buf();
    Ok((ckpt, types))
}

/// Read and convert a GGUF entirely in memory.
pub fn read_gguf_model(g: &GgufFile) -> Result<ImportedModel> {
    let config = config_from_gguf(g)?;
    let tokenizer = GgufTokenizer::from_gguf(g, config.max_position_embeddings)?;
    let (checkpoint, source_types) = checkpoint_from_gguf(g, &config)?;
    Ok(ImportedModel {
        config,
        checkpoint,
        tokenizer,
        source_types,
    })
}

/// Import `gguf` into the model folder `out` (replaced if it exists). On any error nothing is
/// written at `out`.
pub fn import_gguf(gguf: &Path, out: &Path) -> Result<ImportSummary> {
    let g = GgufFile::open(gguf)?;
    let m = read_gguf_model(&g)?;
    write_dir_atomic(out, |dir| {
        m.config.save(dir, m.config.model_type.causal_lm_class())?;
        m.checkpoint.save(dir, None)?;
        m.tokenizer.save(dir)?;
        write_generation_config(dir, &m.config)
    })?;
    Ok(ImportSummary {
        tensors: m.checkpoint.tensors.len(),
        config: m.config,
        source_types: m.source_types,
    })
}
