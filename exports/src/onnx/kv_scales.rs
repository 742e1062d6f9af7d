//! Static scales of an int8 KV cache: ONNX Runtime's quantized `GroupQueryAttention` cache
//! (`k_quant_type`/`v_quant_type` `PER_CHANNEL`, `kv_cache_bit_width` 8) quantizes each new key and
//! value itself, after rotary, with fixed fp32 scales, one per kv head and channel. They are
//! `max |x| / 127` over calibration prompts run through the fp32 graph (`engine kv-scales`
//! measures them; `exports onnx --kv-cache int8 --kv-scales FILE` writes them into the graph).
//!
//! File: safetensors, `layers.{i}.key` and `layers.{i}.value`, f32 `[kv_heads, head_dim]`.

use std::path::Path;

use crate::checkpoint::{Checkpoint, HostTensor};
use crate::config::ModelConfig;
use crate::error::{Error, Result};

/// The largest int8 magnitude a scale maps `max |x|` to (symmetric, -127..=127).
pub const KV_QMAX: f32 = 127.0;

/// Per layer, `kv_heads · head_dim` scales for keys and for values.
#[derive(Debug, Clone, PartialEq)]
pub struct KvScales {
    pub kv_heads: usize,
    pub head_dim: usize,
    pub key: Vec<Vec<f32>>,
    pub value: Vec<Vec<f32>>,
}

impl KvScales {
    /// Scales from the largest magnitudes seen per layer and channel; a channel that stayed 0
    /// gets the smallest normal scale (any value it takes later saturates, but none was seen).
    pub fn from_max_abs(
        kv_heads: usize,
        head_dim: usize,
        key: &[Vec<f32>],
        value: &[Vec<f32>],
    ) -> Self {
        let scale = |m: &Vec<f32>| -> Vec<f32> {
            m.iter()
                .map(|&x| (x / KV_QMAX).max(f32::MIN_POSITIVE))
                .collect()
        };
        KvScales {
            kv_heads,
            head_dim,
            key: key.iter().map(scale).collect(),
            value: value.iter().map(scale).collect(),
        }
    }

    pub fn layers(&self) -> usize {
        self.key.len()
    }

    pub fn write(&self, path: &Path) -> Result<()> {
        let mut ck = Checkpoint::new();
        let shape = vec![self.kv_heads, self.head_dim];
        for (i, (k, v)) in self.key.iter().zip(&self.value).enumerate() {
            ck.insert(
                format!("layers.{i}.key"),
                HostTensor::from_f32(shape.clone(), k),
            );
            ck.insert(
                format!("layers.{i}.value"),
                HostTensor::from_f32(shape.clone(), v),
            );
        }
        ck.save_file(path)
    }

    /// Read `path` for a model of `cfg`'s shape: every layer present, shapes and values checked.
    pub fn read(path: &Path, cfg: &ModelConfig) -> Result<Self> {
        let ck = Checkpoint::load(path)?;
        let (kvh, hd) = (cfg.num_key_value_heads, cfg.head_dim);
        let get = |kind: &str| -> Result<Vec<Vec<f32>>> {
            (0..cfg.num_hidden_layers)
                .map(|i| {
                    let name = format!("layers.{i}.{kind}");
                    let v = ck.get_shaped(&name, &[kvh, hd])?.to_f32()?;
                    if let Some(bad) = v.iter().find(|x| !(x.is_finite() && **x > 0.0)) {
                        return Err(Error::Invalid(format!(
                            "{}: `{name}` holds {bad}; KV scales must be finite and > 0",
                            path.display()
                        )));
                    }
                    Ok(v)
                })
                .collect()
        };
        let key = get("key")?;
        let value = get("value")?;
        Ok(KvScales {
            kv_heads: kvh,
            head_dim: hd,
            key,
            value,
        })
    }
}

/// How the exported graph keeps its KV cache.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum KvCache {
    /// In the graph's `--dtype`.
    #[default]
    Float,
    /// int8 with these static scales (GroupQueryAttention graphs only).
    Int8(KvScales),
}

/// Which operator attends over an int8 cache in the decode graph (`--kv-attention`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KvAttention {
    /// The engine's own `ai.pco:Int8CacheAttention` ([`INT8_CACHE_ATTENTION`]; CPU, one new token
    /// a row): each cached row converted once for the query heads that share it, 2.7× ONNX
    /// Runtime's kernel on the real job's decode (BENCHMARKS.md). Such a graph runs only in
    /// `engine`, which registers the operator. Used where it applies (fp32 graph, rotary on packed
    /// q|k|v, no sliding window, at most 8 query heads per kv head), ONNX Runtime's elsewhere.
    #[default]
    Engine,
    /// com.microsoft `GroupQueryAttention` with its quantized cache: any ONNX Runtime runs it.
    Ort,
}

/// The engine's operator domain, and its int8-cache decode attention (see [`KvAttention`]).
pub const ENGINE_DOMAIN: &str = "ai.pco";
pub const INT8_CACHE_ATTENTION: &str = "Int8CacheAttention";

impl KvCache {
    pub fn as_str(&self) -> &'static str {
        match self {
            KvCache::Float => "float",
            KvCache::Int8(_) => "int8",
        }
    }
}
