//! `probe.safetensors`: a few fixed token sequences and this model's fp32 outputs on them, written
//! next to a checkpoint so that another runtime (the ONNX export) can check it computes the same
//! function without needing libtorch.
//!
//! Tensors: `input_ids` `[3, 16]` int64, `attention_mask` `[3, 16]` int64, and `logits`
//! `[3, 16, V]` f32 (LM head) or `scores` `[3]` f32 (reward head). Row 0 is 16 real tokens, row 1
//! is left-padded (4 pads, 12 tokens), row 2 is right-padded (9 tokens, 7 pads). Padding positions
//! hold the pad id of `exports::encode::config_pad_id`; their outputs are not meaningful.

use std::path::Path;

use exports::checkpoint::{Checkpoint, HostTensor};
use exports::Head;
use tch::{Kind, Tensor};

use crate::model::Model;
use crate::weights::tensor_to_host;

pub const PROBE_FILE: &str = "probe.safetensors";
const SEQ: usize = 16;
/// (left pads, real tokens) of each row.
const ROWS: [(usize, usize); 3] = [(0, 16), (4, 12), (0, 9)];

/// The probe batch for a vocabulary of `vocab` with pad id `pad`: `(input_ids, attention_mask)`
/// as row-major values of shape `[3, 16]`. Tokens come from a fixed linear congruential sequence,
/// so they depend only on `vocab`.
pub fn probe_inputs(vocab: usize, pad: i64) -> (Vec<i64>, Vec<i64>) {
    let mut state: u64 = 20_240_613;
    let mut next = || {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((state >> 33) % vocab as u64) as i64
    };
    let mut ids = Vec::with_capacity(ROWS.len() * SEQ);
    let mut mask = Vec::with_capacity(ROWS.len() * SEQ);
    for (left, real) in ROWS {
        for t in 0..SEQ {
            let is_token = t >= left && t < left + real;
            ids.push(if is_token { next() } else { pad });
            mask.push(is_token as i64);
        }
    }
    (ids, mask)
}

/// Write `dir/probe.safetensors` for `model` (see the module docs).
pub fn write_probe(model: &Model, dir: &Path) -> anyhow::Result<()> {
    let cfg = model.config();
    let pad = exports::encode::config_pad_id(cfg).as_i64();
    let (ids, mask) = probe_inputs(cfg.vocab_size, pad);
    let shape = [ROWS.len() as i64, SEQ as i64];
    let device = model.parameters()[0].tensor.device();
    let ids_t = Tensor::from_slice(&ids).view(shape).to_device(device);
    let mask_t = Tensor::from_slice(&mask).view(shape).to_device(device);
    let _guard = tch::no_grad_guard();
    let mut ckpt = Checkpoint::new();
    ckpt.insert(
        "input_ids",
        HostTensor::from_i64(vec![ROWS.len(), SEQ], &ids),
    );
    ckpt.insert(
        "attention_mask",
        HostTensor::from_i64(vec![ROWS.len(), SEQ], &mask),
    );
    match model.head() {
        Head::Lm => ckpt.insert(
            "logits",
            tensor_to_host(&model.forward(&ids_t, &mask_t).to_kind(Kind::Float))?,
        ),
        Head::Reward => ckpt.insert(
            "scores",
            tensor_to_host(&model.score(&ids_t, &mask_t).to_kind(Kind::Float))?,
        ),
    }
    std::fs::create_dir_all(dir)?;
    let tmp = tempdir_in(dir)?;
    ckpt.save(&tmp, None)?;
    let written = tmp.join(exports::checkpoint::SINGLE_FILE);
    std::fs::rename(&written, dir.join(PROBE_FILE))?;
    std::fs::remove_dir(&tmp)?;
    Ok(())
}

/// A private scratch folder inside `dir` (Checkpoint::save names its file `model.safetensors`,
/// which must not clobber the model's weights).
fn tempdir_in(dir: &Path) -> anyhow::Result<std::path::PathBuf> {
    let p = dir.join(format!(".probe.tmp.{}", std::process::id()));
    if p.exists() {
        std::fs::remove_dir_all(&p)?;
    }
    std::fs::create_dir_all(&p)?;
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_inputs_are_fixed_and_padded_as_documented() {
        let (ids, mask) = probe_inputs(279, 2);
        assert_eq!(probe_inputs(279, 2), (ids.clone(), mask.clone()));
        assert!(ids.iter().all(|&i| (0..279).contains(&i)));
        let row = |r: usize| &mask[r * SEQ..(r + 1) * SEQ];
        assert_eq!(row(0).iter().sum::<i64>(), 16);
        assert_eq!(&row(1)[..4], &[0, 0, 0, 0]);
        assert_eq!(row(1).iter().sum::<i64>(), 12);
        assert_eq!(&row(2)[9..], &[0; 7]);
        assert_eq!(ids[SEQ], 2, "left padding holds the pad id");
    }
}
