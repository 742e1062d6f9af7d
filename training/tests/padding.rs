//! Padding must not change what a row computes: a left-padded row equals the same tokens alone
//! (positions restart at 0 after the padding and pads are never attended to), and right padding
//! leaves the real positions untouched. Reward scores likewise read the last real token.

mod common;

use exports::{Head, ModelType};
use tch::{Kind, Tensor};

const TOLERANCE: f64 = 1e-5;
const PAD: i64 = 2;
const ROW: [i64; 6] = [17, 250, 3, 99, 42, 7];

/// `ROW` alone, and in a batch of 3 next to a longer row: left-padded by 3, right-padded by 3.
fn batches() -> (Tensor, Tensor, Tensor, Tensor) {
    let alone = common::i64_tensor(&ROW, &[1, 6]);
    let alone_mask = Tensor::ones([1, 6], (Kind::Int64, tch::Device::Cpu));
    let longer = [5i64, 6, 7, 8, 9, 10, 11, 12, 13];
    let mut ids = longer.to_vec();
    ids.extend([PAD; 3]);
    ids.extend(ROW);
    ids.extend(ROW);
    ids.extend([PAD; 3]);
    let mut mask = vec![1i64; 9];
    mask.extend([0, 0, 0, 1, 1, 1, 1, 1, 1]);
    mask.extend([1, 1, 1, 1, 1, 1, 0, 0, 0]);
    (
        alone,
        alone_mask,
        common::i64_tensor(&ids, &[3, 9]),
        common::i64_tensor(&mask, &[3, 9]),
    )
}

fn check_lm(ty: ModelType) {
    let dir = tempfile::tempdir().unwrap();
    let (_vs, model) = common::tiny(dir.path(), &common::tiny_cfg(ty, 5, Head::Lm));
    let (alone, alone_mask, ids, mask) = batches();
    let _guard = tch::no_grad_guard();
    let want = model.forward(&alone, &alone_mask).get(0);
    let got = model.forward(&ids, &mask);
    let left = got.get(1).narrow(0, 3, 6);
    let right = got.get(2).narrow(0, 0, 6);
    let (dl, dr) = (
        common::max_abs_diff(&left, &want),
        common::max_abs_diff(&right, &want),
    );
    assert!(
        dl < TOLERANCE,
        "{ty:?}: left padding changed logits by {dl:e}"
    );
    assert!(
        dr < TOLERANCE,
        "{ty:?}: right padding changed logits by {dr:e}"
    );
    // Padding positions still produce finite values (a NaN there would poison gradients).
    assert!(
        got.isfinite().all().int64_value(&[]) == 1,
        "{ty:?}: non-finite outputs at padding"
    );
    // And the test is not vacuous: the rows do depend on their tokens.
    let other = model.forward(&ids.narrow(0, 0, 1), &mask.narrow(0, 0, 1));
    assert!(common::max_abs_diff(&other.get(0).narrow(0, 0, 6), &want) > 1e-3);
}

#[test]
fn llama_padding_is_invisible() {
    check_lm(ModelType::Llama);
}

#[test]
fn qwen2_padding_is_invisible() {
    check_lm(ModelType::Qwen2);
}

#[test]
fn gpt2_padding_is_invisible() {
    check_lm(ModelType::Gpt2);
}

#[test]
fn reward_score_reads_the_last_real_token_for_either_padding() {
    for ty in [ModelType::Llama, ModelType::Gpt2] {
        let dir = tempfile::tempdir().unwrap();
        let (_vs, model) = common::tiny(dir.path(), &common::tiny_cfg(ty, 6, Head::Reward));
        let (alone, alone_mask, ids, mask) = batches();
        let _guard = tch::no_grad_guard();
        let want = model.score(&alone, &alone_mask).double_value(&[0]);
        let got = model.score(&ids, &mask);
        assert_eq!(got.size(), vec![3]);
        for row in [1, 2] {
            let d = (got.double_value(&[row]) - want).abs();
            assert!(d < TOLERANCE, "{ty:?} row {row}: score moved by {d:e}");
        }
        // The score is the head applied to the last real position of the per-token outputs.
        let per_token = model.forward(&alone, &alone_mask);
        assert_eq!(per_token.size(), vec![1, 6, 1]);
        assert!((per_token.double_value(&[0, 5, 0]) - want).abs() < 1e-6);
        assert!((per_token.double_value(&[0, 4, 0]) - want).abs() > 1e-6);
    }
}

#[test]
fn bad_inputs_are_rejected_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let (_vs, model) = common::tiny(dir.path(), &common::tiny_cfg(ModelType::Llama, 1, Head::Lm));
    let ids = common::i64_tensor(&[1, 2, 3], &[1, 3]);
    let mask = common::i64_tensor(&[1, 1], &[1, 2]);
    let e = model.check_inputs(&ids, &mask).unwrap_err().to_string();
    assert!(e.contains("attention_mask"), "{e}");
    let big = common::i64_tensor(&[1, 2, 100_000], &[1, 3]);
    let ones = common::i64_tensor(&[1, 1, 1], &[1, 3]);
    let e = model.check_inputs(&big, &ones).unwrap_err().to_string();
    assert!(e.contains("token ids must lie in [0, 279)"), "{e}");
    let f = ids.to_kind(Kind::Float);
    assert!(model.check_inputs(&f, &ones).is_err());
    assert!(model.check_inputs(&ids, &ones).is_ok());
}

/// A loss over real positions trains through padding cleanly: every gradient is finite, and the
/// padding tokens' embedding rows get none (nothing real ever attended to them).
fn check_padding_gets_no_gradient(ty: ModelType, embedding: &str) {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::tiny_cfg(ty, 12, Head::Lm);
    cfg.tied = false; // a tied head would pass the pad id's logit gradient into its row
    let (_vs, model) = common::tiny(dir.path(), &cfg);
    let (_, _, ids, mask) = batches();
    let logits = model.forward(&ids, &mask);
    let loss = (logits.log_softmax(-1, Kind::Float) * mask.unsqueeze(-1)).sum(Kind::Float);
    loss.backward();
    for p in model.parameters() {
        let g = p.tensor.grad();
        assert!(g.defined(), "{ty:?}: no gradient for {}", p.name);
        assert!(
            g.isfinite().all().int64_value(&[]) == 1,
            "{ty:?}: non-finite gradient in {}",
            p.name
        );
    }
    let emb = model
        .parameters()
        .iter()
        .find(|p| p.name == embedding)
        .unwrap();
    let g = emb.tensor.grad();
    assert_eq!(
        g.get(PAD).abs().max().double_value(&[]),
        0.0,
        "{ty:?}: pad row has gradient"
    );
    assert!(g.get(ROW[0]).abs().max().double_value(&[]) > 0.0);
}

#[test]
fn llama_padding_gets_no_gradient() {
    check_padding_gets_no_gradient(ModelType::Llama, "model.embed_tokens.weight");
}

#[test]
fn gpt2_padding_gets_no_gradient() {
    check_padding_gets_no_gradient(ModelType::Gpt2, "transformer.wte.weight");
}
