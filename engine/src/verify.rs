//! `engine verify`: run an exported graph on the probe that training saves beside a checkpoint
//! (`probe.safetensors`: `input_ids` `[B,T]` i64, `attention_mask` `[B,T]` i64, and `logits`
//! `[B,T,V]` f32 or `scores` `[B]` f32) and fail when the outputs differ by more than a tolerance
//! over real (mask = 1) positions.
//!
//! Each row's real tokens are packed to the front (right padding) before the batch is run, which
//! both graph flavors accept (the GroupQueryAttention one only accepts that), and the outputs are
//! mapped back to the probe's positions. Positions count real tokens (`cumsum(mask) − 1`), so a
//! row's outputs do not depend on where its padding was.

use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use exports::Checkpoint;
use ort::value::TensorElementType;

use crate::runtime::Runtime;
use crate::session::{DecoderSession, HeadOutput, SessionOptions, StepOutput};

/// The largest |Δ| accepted for a graph whose io type is `kv`: 1e-3 for fp32. Half-precision
/// graphs round every weight and activation (SmolLM2-135M in fp16 differs from its fp32 logits by
/// up to 0.19), so for them the check only catches wiring errors: 0.5 (fp16) and 2.0 (bf16).
pub fn default_tolerance(kv: TensorElementType) -> f32 {
    match kv {
        TensorElementType::Float16 => 0.5,
        TensorElementType::Bfloat16 => 2.0,
        _ => 1e-3,
    }
}

/// The outcome of a passing check.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifyReport {
    pub max_abs_diff: f32,
    /// Number of compared values.
    pub compared: usize,
    pub tolerance: f32,
}

/// Load `onnx_dir` (on `opts.device`) and check it against `probe`; `tolerance` defaults to [`default_tolerance`].
pub fn verify_dir(
    runtime: &Runtime,
    onnx_dir: &Path,
    probe: &Path,
    tolerance: Option<f32>,
    opts: &SessionOptions,
) -> Result<VerifyReport> {
    let mut session = DecoderSession::load(runtime, onnx_dir, opts)?;
    verify(&mut session, probe, tolerance)
}

/// Check a loaded session against `probe`.
pub fn verify(
    session: &mut DecoderSession,
    probe: &Path,
    tolerance: Option<f32>,
) -> Result<VerifyReport> {
    let tolerance = tolerance.unwrap_or_else(|| default_tolerance(session.io().kv_type));
    let ckpt =
        Checkpoint::load(probe).with_context(|| format!("reading probe {}", probe.display()))?;
    let ids_t = ckpt.get("input_ids")?;
    ensure!(
        ids_t.shape.len() == 2,
        "{}: input_ids has shape {:?}, expected [B, T]",
        probe.display(),
        ids_t.shape
    );
    let (b, t) = (ids_t.shape[0], ids_t.shape[1]);
    let ids = ids_t.to_i64()?;
    let mask = ckpt.get_shaped("attention_mask", &[b, t])?.to_i64()?;
    // Pack each row's real tokens to the front.
    let mut packed_ids = vec![0i64; b * t];
    let mut packed_mask = vec![0i64; b * t];
    let mut real: Vec<Vec<usize>> = Vec::with_capacity(b);
    for r in 0..b {
        let pos: Vec<usize> = (0..t).filter(|&j| mask[r * t + j] == 1).collect();
        for (k, &j) in pos.iter().enumerate() {
            packed_ids[r * t + k] = ids[r * t + j];
            packed_mask[r * t + k] = 1;
        }
        real.push(pos);
    }
    let mut cache = session.new_cache(b)?;
    let out = session.step(&packed_ids, b, t, &packed_mask, &mut cache)?;
    let mut max = 0f32;
    let mut compared = 0usize;
    let mut track = |got: f32, want: f32| {
        let d = (got - want).abs();
        // A NaN anywhere must fail the check, so it counts as infinitely far.
        max = if d.is_nan() {
            f32::INFINITY
        } else {
            max.max(d)
        };
        compared += 1;
    };
    match (session.io().head, out) {
        (HeadOutput::Score, StepOutput::Scores(got)) => {
            let want = ckpt.get_shaped("scores", &[b])?.to_f32()?;
            for r in 0..b {
                track(got[r], want[r]);
            }
        }
        (_, StepOutput::Logits(got)) => {
            let lt = ckpt.get("logits").with_context(|| {
                format!("{}: a language-model probe needs `logits`", probe.display())
            })?;
            ensure!(
                lt.shape.len() == 3 && lt.shape[..2] == [b, t] && lt.shape[2] == got.vocab,
                "{}: logits has shape {:?}, the graph gives vocab {}",
                probe.display(),
                lt.shape,
                got.vocab
            );
            let want = lt.to_f32()?;
            let v = got.vocab;
            for (r, pos) in real.iter().enumerate() {
                // A last-logits graph scores only each row's last real token.
                let pairs: Vec<(usize, usize)> = if got.seq == 1 {
                    pos.last().map(|&j| vec![(0, j)]).unwrap_or_default()
                } else {
                    pos.iter().enumerate().map(|(k, &j)| (k, j)).collect()
                };
                for (k, j) in pairs {
                    let w = &want[(r * t + j) * v..(r * t + j + 1) * v];
                    for (g, w) in got.at(r, k).iter().zip(w) {
                        track(*g, *w);
                    }
                }
            }
        }
        (head, _) => bail!("graph head {head:?} does not match its output"),
    }
    if max > tolerance {
        bail!(
            "{}: ONNX outputs differ from the probe {}: max |Δ| = {max:.3e} > {tolerance:.0e} over {compared} values",
            session.dir().display(),
            probe.display()
        );
    }
    Ok(VerifyReport {
        max_abs_diff: max,
        compared,
        tolerance,
    })
}
