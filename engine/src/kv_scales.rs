//! `engine kv-scales`: the static scales of an int8 KV cache, measured on the fp32 graph.
//!
//! ONNX Runtime's quantized GroupQueryAttention cache quantizes each new key and value with
//! fixed scales, one per kv head and channel, so they must cover the values the model produces.
//! Each calibration prompt is prefilled alone through the fp32 export; its `present` keys (after
//! rotary, as the kernel sees them) and values give `max |x|` per layer, kv head and channel, and
//! the scale is `max / 127` ([`exports::onnx::KvScales`]). `exports onnx --kv-cache int8
//! --kv-scales FILE` writes them into the int8-cache graph.

use std::path::PathBuf;

use anyhow::{bail, ensure, Context, Result};
use exports::onnx::KvScales;
use exports::records::for_each_parsed;
use exports::{PromptRecord, Tokenizer};
use ort::value::TensorElementType;

use crate::runtime::Runtime;
use crate::session::{DecoderSession, SessionOptions};

pub struct KvScalesConfig {
    /// An fp32 `exports onnx` folder (its cache in fp32).
    pub model: PathBuf,
    /// Prompt records (JSONL or Parquet, as `engine generate` reads them).
    pub prompts: PathBuf,
    pub out: PathBuf,
    /// At most this many prompts, in file order.
    pub limit: usize,
    pub session: SessionOptions,
}

pub struct KvScalesSummary {
    pub prompts: usize,
    pub positions: usize,
    pub scales: KvScales,
}

impl std::fmt::Display for KvScalesSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let all = |v: &Vec<Vec<f32>>| v.iter().flatten().copied().fold(0f32, f32::max);
        write!(
            f,
            "KV scales of {} layers from {} prompts ({} positions): largest key scale {:.4}, value {:.4}",
            self.scales.layers(),
            self.prompts,
            self.positions,
            all(&self.scales.key),
            all(&self.scales.value)
        )
    }
}

/// Measure the scales and write them to `cfg.out`.
pub fn run(rt: &Runtime, cfg: &KvScalesConfig) -> Result<KvScalesSummary> {
    let tokenizer = Tokenizer::load(&cfg.model)?;
    // Every prompt is read and tokenized before the model loads: a bad record fails fast.
    let mut prompts = Vec::new();
    for_each_parsed::<PromptRecord>(
        &cfg.prompts,
        |_, r| {
            if prompts.len() < cfg.limit {
                prompts.push(tokenizer.prompt_ids(&r.to_prompt())?);
            }
            Ok(())
        },
        |at, message| {
            Err(exports::Error::Record {
                path: cfg.prompts.clone(),
                at,
                message,
            })
        },
    )?;
    prompts.retain(|p| !p.is_empty());
    ensure!(
        !prompts.is_empty(),
        "{}: no non-empty prompt to calibrate on",
        cfg.prompts.display()
    );
    let mut s = DecoderSession::load(rt, &cfg.model, &cfg.session)?;
    let prompts: Vec<Vec<i64>> = prompts
        .iter()
        .map(|p| p.iter().map(|&t| i64::from(t)).collect())
        .collect();
    let (scales, positions) = measure(&mut s, &prompts)?;
    scales.write(&cfg.out)?;
    Ok(KvScalesSummary {
        prompts: prompts.len(),
        positions,
        scales,
    })
}

/// The scales of `prompts` (token ids, each prefilled alone) through `s`, an fp32-cache graph;
/// also the number of positions seen.
pub fn measure(s: &mut DecoderSession, prompts: &[Vec<i64>]) -> Result<(KvScales, usize)> {
    let io = s.io().clone();
    if io.kv_type != TensorElementType::Float32 {
        bail!(
            "{}: the cache is {:?}; measure the scales on the fp32 export",
            s.dir().display(),
            io.kv_type
        );
    }
    let width = io.kv_heads * io.head_dim;
    let mut key = vec![vec![0f32; width]; io.layers];
    let mut value = vec![vec![0f32; width]; io.layers];
    let mut positions = 0;
    for ids in prompts {
        let n = ids.len();
        let mut cache = s.new_cache(1)?;
        s.forward(ids, 1, n, &vec![1; n], &mut cache)
            .with_context(|| format!("prefilling a {n}-token prompt"))?;
        for l in 0..io.layers {
            let (k, v) = cache.layer_f32(l)?;
            ensure!(
                k.len() == width * n && v.len() == width * n,
                "layer {l}: present holds {} values, expected [1, {}, {n}, {}]",
                k.len(),
                io.kv_heads,
                io.head_dim
            );
            for (max, x) in [(&mut key[l], k), (&mut value[l], v)] {
                // [1, kv_heads, n, head_dim]: channel (h, d) at h·n·hd + t·hd + d.
                for h in 0..io.kv_heads {
                    for t in 0..n {
                        let row = &x[(h * n + t) * io.head_dim..][..io.head_dim];
                        let m = &mut max[h * io.head_dim..][..io.head_dim];
                        for (m, &x) in m.iter_mut().zip(row) {
                            *m = m.max(x.abs());
                        }
                    }
                }
            }
        }
        positions += n;
    }
    Ok((
        KvScales::from_max_abs(io.kv_heads, io.head_dim, &key, &value),
        positions,
    ))
}
