//! Gradient checkpointing computes the gradients of the plain path: the same hidden states, and
//! every parameter's gradient within 1e-6, for each architecture, tied and untied heads, with
//! padding (an explicit attention mask) and with two micro-batches accumulated, in fp32 and under
//! CPU bf16 autocast (where the recomputation must rerun in bf16 as the forward did).

mod common;

use exports::{Head, ModelType};
use tch::{Kind, Tensor};
use training::Model;

const TOLERANCE: f64 = 1e-6;

/// Two micro-batches of 3 rows × 7 tokens over the tiny vocabulary; the second has left and
/// right padding.
fn batches() -> Vec<(Tensor, Tensor)> {
    tch::manual_seed(11);
    let ids = || Tensor::randint(250, [3, 7], (Kind::Int64, tch::Device::Cpu));
    let full = Tensor::ones([3, 7], (Kind::Int64, tch::Device::Cpu));
    #[rustfmt::skip]
    let padded = common::i64_tensor(&[
        0, 0, 1, 1, 1, 1, 1,
        1, 1, 1, 1, 1, 0, 0,
        1, 1, 1, 1, 1, 1, 1,
    ], &[3, 7]);
    vec![(ids(), full), (ids(), padded)]
}

/// A loss that reaches every position: next-token log-likelihood through the head, plus a
/// nonlinear term of the hidden states (for the reward head, its scores).
fn loss(model: &Model, hidden: &Tensor, ids: &Tensor, mask: &Tensor) -> Tensor {
    let m = mask.to_kind(Kind::Float);
    let extra = (hidden.tanh() * m.unsqueeze(-1)).square().sum(Kind::Float) * 0.01;
    if model.head() == Head::Reward {
        return model.score_of(hidden, mask).sin().sum(Kind::Float) + extra;
    }
    let logp = hidden
        .linear(model.head_weight(), None::<Tensor>)
        .to_kind(Kind::Float)
        .log_softmax(-1, Kind::Float);
    let t = ids.size()[1];
    let picked = logp
        .narrow(1, 0, t - 1)
        .gather(2, &ids.narrow(1, 1, t - 1).unsqueeze(-1), false)
        .squeeze_dim(-1);
    -(picked * m.narrow(1, 1, t - 1)).sum(Kind::Float) / 10.0 + extra
}

fn grads(model: &Model) -> Vec<(String, Tensor)> {
    model
        .parameters()
        .iter()
        .map(|p| (p.name.clone(), p.tensor.grad().copy()))
        .collect()
}

fn zero_grads(model: &Model) {
    for p in model.parameters() {
        let mut t = p.tensor.shallow_clone();
        t.zero_grad();
    }
}

/// Gradients over both micro-batches, plain or checkpointed; also the hidden states.
fn run(model: &Model, checkpointed: bool, bf16: bool) -> (Vec<Tensor>, Vec<(String, Tensor)>) {
    zero_grads(model);
    let mut hiddens = Vec::new();
    for (ids, mask) in batches() {
        let (l, h, rc) = training::amp::autocast(tch::Device::Cpu, bf16, || {
            let (h, rc) = if checkpointed {
                let (h, rc) = model.hidden_states_checkpointed(&ids, &mask);
                (h, Some(rc))
            } else {
                (model.hidden_states(&ids, &mask), None)
            };
            (loss(model, &h, &ids, &mask), h, rc)
        });
        l.backward();
        if let Some(rc) = rc {
            rc.backward();
        }
        hiddens.push(h.detach());
    }
    (hiddens, grads(model))
}

fn check(ty: ModelType, head: Head, tied: bool, bf16: bool) {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::tiny_cfg(ty, 3, head);
    cfg.layers = 3;
    cfg.tied = tied;
    let (_vs, model) = common::tiny(dir.path(), &cfg);
    let what = format!("{ty:?} {head:?} tied={tied} bf16={bf16}");
    let (h_plain, g_plain) = run(&model, false, bf16);
    let (h_ckpt, g_ckpt) = run(&model, true, bf16);
    for (a, b) in h_plain.iter().zip(&h_ckpt) {
        assert!(a.equal(b), "{what}: hidden states differ");
    }
    for ((name, a), (_, b)) in g_plain.iter().zip(&g_ckpt) {
        assert!(a.defined() && b.defined(), "{what}: no gradient for {name}");
        let d = common::max_abs_diff(a, b);
        assert!(d <= TOLERANCE, "{what}: {name} gradient differs by {d:e}");
        let scale = a.abs().max().double_value(&[]);
        assert!(scale > 0.0, "{what}: {name} got a zero gradient");
    }
}

#[test]
fn checkpointed_gradients_equal_the_plain_path() {
    let _turn = common::torch_rng_turn();
    for ty in [
        ModelType::Llama,
        ModelType::Qwen2,
        ModelType::Qwen3,
        ModelType::Mistral,
        ModelType::Gpt2,
    ] {
        check(ty, Head::Lm, true, false);
    }
    check(ModelType::Llama, Head::Lm, false, false);
    check(ModelType::Llama, Head::Reward, false, false);
}

#[test]
fn checkpointed_gradients_equal_the_plain_path_under_bf16_autocast() {
    let _turn = common::torch_rng_turn();
    check(ModelType::Llama, Head::Lm, true, true);
    check(ModelType::Gpt2, Head::Lm, true, true);
}
