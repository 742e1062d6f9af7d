//! Loss values against independent computations. Reference numbers come from
//! `scripts/reference/objective_values.py` (token-by-token loops over the same hand-made inputs,
//! which are built here with the same integer formulas).

use super::*;
use tch::{Device, Kind, Tensor};

const R: i64 = 6;
const T: i64 = 5;
const V: i64 = 6;
const LAYOUT: Layout = Layout {
    pairs: 2,
    negatives: 1,
    positives: 1,
};

struct Inputs {
    logits: Tensor,
    ids: Tensor,
    mask: Tensor,
    uniforms: Tensor,
}

fn inputs() -> Inputs {
    let mut logits = Vec::new();
    for i in 0..R * T * V {
        logits.push(((i * 37 % 17) as f32) / 4.0 - 2.0);
    }
    let mut ids = Vec::new();
    let mut mask = Vec::new();
    let mut uni = Vec::new();
    for r in 0..R {
        for t in 0..T {
            ids.push((r * 3 + t * 5 + 1) % V);
            let end = T - if r % 3 == 2 { 1 } else { 0 };
            mask.push(if (1 + r % 2) <= t && t < end { 1i64 } else { 0 });
            if t < T - 1 {
                uni.push((((r * 5 + t) as f64) * 0.137) % 1.0);
            }
        }
    }
    Inputs {
        logits: Tensor::from_slice(&logits).view([R, T, V]),
        ids: Tensor::from_slice(&ids).view([R, T]),
        mask: Tensor::from_slice(&mask).view([R, T]),
        uniforms: Tensor::from_slice(&uni)
            .view([R, T - 1])
            .to_kind(Kind::Float),
    }
}

fn terms(inp: &Inputs, logits: &Tensor, k: i64, layout: &Layout) -> SeqTerms {
    let rows = layout.cringe_rows() as i64;
    let uniforms = inp.uniforms.narrow(0, 0, rows);
    let c = CringeInputs {
        rows,
        uniforms: &uniforms,
        k,
        detach_positive: false,
        exclude: None,
    };
    seq_terms(logits, &inp.ids, &inp.mask, Some(&c), None).unwrap()
}

fn vec(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(t.to_kind(Kind::Double)).unwrap()
}

fn assert_close(got: &[f64], want: &[f64], rel: f64) {
    assert_eq!(got.len(), want.len(), "{got:?} vs {want:?}");
    for (g, w) in got.iter().zip(want) {
        assert!(
            (g - w).abs() <= rel * w.abs().max(1.0),
            "got {got:?}\nwant {want:?}"
        );
    }
}

fn cfg(name: Objective) -> ObjectiveConfig {
    ObjectiveConfig {
        cringe_k: 1,
        ..ObjectiveConfig::new(name)
    }
}

// Equivalent python code (the token loop of objective_values.py, for one token):
//   order = top k+1 of scores; cands = [v for v in order if v != y][:k]
//   j = first i with cumsum(softmax(scores[cands]))[i] > u
//   cr_t = log1p(exp(scores[y] - scores[cands[j]]))
#[test]
fn sequence_terms_match_reference() {
    let inp = inputs();
    let logp = [
        -7.01984452429819,
        -5.683363787599728,
        -6.779495824252411,
        -11.508957352843906,
        -12.541939951455522,
        -2.0598075097965642,
    ];
    for (k, cringe) in [
        (
            1,
            [2.683858482717125, 0.7896975620804048, 0.5802703703710977],
        ),
        (
            2,
            [2.683858482717125, 1.7251552902125522, 0.5802703703710977],
        ),
    ] {
        let t = terms(&inp, &inp.logits, k, &LAYOUT);
        assert_close(&vec(&t.logp_sum), &logp, 1e-5);
        assert_close(&vec(&t.n_tokens), &[4.0, 3.0, 3.0, 3.0, 4.0, 2.0], 0.0);
        assert_close(&vec(&t.cringe_sum), &cringe, 1e-5);
    }
}

/// The stop guard against a plain f64 loop over the same logits: for each row from `from_row`
/// on and each position whose target is a summed, non-stop token, `-ln(1 - q)` with `q` the
/// softmax mass of the stop ids.
#[test]
fn stop_guard_matches_a_token_loop() {
    let inp = inputs();
    let stop = [0i64, 2];
    let ids_t = Tensor::from_slice(&stop);
    let from_row = LAYOUT.chosen_start() as i64;
    let g = StopGuard {
        ids: &ids_t,
        from_row,
    };
    let t = seq_terms(&inp.logits, &inp.ids, &inp.mask, None, Some(&g)).unwrap();
    let logits = vec(&inp.logits.reshape([-1]));
    let ids = Vec::<i64>::try_from(inp.ids.reshape([-1])).unwrap();
    let mask = Vec::<i64>::try_from(inp.mask.reshape([-1])).unwrap();
    let mut want = vec![0.0f64; R as usize];
    for r in from_row..R {
        for pos in 0..T - 1 {
            let at = (r * T + pos + 1) as usize;
            if mask[at] == 0 || stop.contains(&ids[at]) {
                continue;
            }
            let z = &logits[((r * T + pos) * V) as usize..((r * T + pos + 1) * V) as usize];
            let total: f64 = z.iter().map(|v| v.exp()).sum();
            let q: f64 = stop.iter().map(|&s| z[s as usize].exp()).sum::<f64>() / total;
            want[r as usize] -= (1.0 - q).ln();
        }
    }
    assert!(
        want[from_row as usize..].iter().all(|&v| v > 0.0),
        "{want:?}"
    );
    assert_close(&vec(&t.stop_sum), &want, 1e-5);

    // In the loss it is the guarded rows' per-token mean, times the weight, beside their ce.
    let n = vec(&t.n_tokens);
    let logp = vec(&t.logp_sum);
    let mut c = cfg(Objective::Sft);
    let sft_layout = Layout {
        pairs: 0,
        negatives: 0,
        positives: 1,
    };
    let last = |x: &Tensor| x.narrow(0, R - 1, 1);
    let one = SeqTerms {
        logp_sum: last(&t.logp_sum),
        n_tokens: last(&t.n_tokens),
        cringe_sum: Tensor::zeros([0], (Kind::Float, Device::Cpu)),
        stop_sum: last(&t.stop_sum),
    };
    c.stop_unlikelihood = 0.5;
    let sft_norms = Normalizers::from_layout(&sft_layout);
    let (loss, sums) = lm_loss(&c, &sft_layout, &one, None, &sft_norms).unwrap();
    let r = (R - 1) as usize;
    let want_loss = -logp[r] / n[r] + 0.5 * want[r] / n[r];
    assert_close(&[loss.double_value(&[])], &[want_loss], 1e-5);
    assert_close(
        &[sums.ce, sums.stop],
        &[-logp[r] / n[r], want[r] / n[r]],
        1e-5,
    );
}

// Equivalent python code (objective_values.py `losses`):
//   ce = -logp_sum / n; cr = cringe_sum / n; M = logp_sum[chosen] - logp_sum[rejected]
//   g = sigmoid((b - M) / tau)
//   loss = (sum(ce_w + alpha * g * cr_l) + sum(ce_pos) + alpha * sum(cr_neg)) / examples
#[test]
fn pairwise_and_binary_cringe_match_reference() {
    let inp = inputs();
    let t = terms(&inp, &inp.logits, 1, &LAYOUT);
    let norms = Normalizers::from_layout(&LAYOUT);
    let soft = ObjectiveConfig {
        alpha: 0.5,
        b: 1.0,
        tau: 2.0,
        ..cfg(Objective::PairwiseCringe)
    };
    let (loss, sums) = lm_loss(&soft, &LAYOUT, &t, None, &norms).unwrap();
    assert_close(&[loss.double_value(&[])], &[2.1356798441580502], 1e-5);
    assert_eq!(sums.examples, 4.0);
    let none = ObjectiveConfig {
        gate: Gate::None,
        ..soft.clone()
    };
    let (loss, _) = lm_loss(&none, &LAYOUT, &t, None, &norms).unwrap();
    assert_close(&[loss.double_value(&[])], &[2.1413795398645887], 1e-5);
    let binary = ObjectiveConfig {
        name: Objective::BinaryCringe,
        ..soft
    };
    let (loss, _) = lm_loss(&binary, &LAYOUT, &t, None, &norms).unwrap();
    assert_close(&[loss.double_value(&[])], &[2.8551727198194516], 1e-5);
}

#[test]
fn binary_equals_pairwise_with_gate_none_on_pairs() {
    let inp = inputs();
    // Rows 0..2 rejected, 2..4 chosen: a pairs-only layout over the first four rows.
    let layout = Layout {
        pairs: 2,
        negatives: 0,
        positives: 0,
    };
    let logits = inp.logits.narrow(0, 0, 4);
    let sub = Inputs {
        logits: logits.shallow_clone(),
        ids: inp.ids.narrow(0, 0, 4),
        mask: inp.mask.narrow(0, 0, 4),
        uniforms: inp.uniforms.narrow(0, 0, 4),
    };
    let t = terms(&sub, &logits, 1, &layout);
    let norms = Normalizers::from_layout(&layout);
    let pw = ObjectiveConfig {
        gate: Gate::None,
        alpha: 0.3,
        ..cfg(Objective::PairwiseCringe)
    };
    let bin = ObjectiveConfig {
        name: Objective::BinaryCringe,
        ..pw.clone()
    };
    let a = lm_loss(&pw, &layout, &t, None, &norms)
        .unwrap()
        .0
        .double_value(&[]);
    let b = lm_loss(&bin, &layout, &t, None, &norms)
        .unwrap()
        .0
        .double_value(&[]);
    assert!((a - b).abs() < 1e-6, "{a} vs {b}");
}

#[test]
fn hard_gate_is_zero_at_the_boundary_and_one_below() {
    let c = ObjectiveConfig {
        gate: Gate::Hard,
        b: 2.0,
        ..cfg(Objective::PairwiseCringe)
    };
    let m = Tensor::from_slice(&[2.0f32, 1.999, -5.0, 3.0]);
    assert_eq!(vec(&gate(&c, &m)), [0.0, 1.0, 1.0, 0.0]);
    let soft = ObjectiveConfig { tau: 0.5, ..c };
    let g = vec(&gate(
        &ObjectiveConfig {
            gate: Gate::Soft,
            ..soft
        },
        &m,
    ));
    // sigmoid((2 - M) / 0.5)
    let want: Vec<f64> = [2.0f64, 1.999, -5.0, 3.0]
        .iter()
        .map(|m| 1.0 / (1.0 + (-(2.0 - m) / 0.5).exp()))
        .collect();
    assert_close(&g, &want, 1e-5);
}

/// d loss / d logits by autograd vs central finite differences, through the soft gate.
#[test]
fn soft_gate_gradient_matches_finite_differences() {
    let inp = inputs();
    let c = ObjectiveConfig {
        alpha: 0.7,
        b: 1.0,
        tau: 2.0,
        ..cfg(Objective::PairwiseCringe)
    };
    let norms = Normalizers::from_layout(&LAYOUT);
    let loss_at = |logits: &Tensor| {
        let t = terms(&inp, logits, 1, &LAYOUT);
        lm_loss(&c, &LAYOUT, &t, None, &norms).unwrap().0
    };
    let x = inp.logits.copy().set_requires_grad(true);
    loss_at(&x).backward();
    let grad = vec(&x.grad().view([-1]));
    let base = inp.logits.to_kind(Kind::Double).view([-1]);
    let eps = 1e-3;
    let mut checked = 0;
    for i in (0..(R * T * V)).step_by(3) {
        let bump = |d: f64| {
            let v = base.copy();
            let _ = v.get(i).fill_(base.double_value(&[i]) + d);
            loss_at(&v.to_kind(Kind::Float).view([R, T, V])).double_value(&[])
        };
        // Double precision for the differences: evaluate the same f32 code on f64-perturbed inputs.
        let fd = (bump(eps) - bump(-eps)) / (2.0 * eps);
        assert!(
            (fd - grad[i as usize]).abs() < 2e-3,
            "logit {i}: autograd {} vs fd {fd}",
            grad[i as usize]
        );
        checked += usize::from(grad[i as usize].abs() > 1e-3);
    }
    assert!(
        checked > 10,
        "too few non-zero gradients checked ({checked})"
    );

    // The gate's own pathway matters: detaching it changes the gradient of the chosen rows.
    let detached = ObjectiveConfig {
        gate_detach: true,
        ..c.clone()
    };
    let y = inp.logits.copy().set_requires_grad(true);
    let t = terms(&inp, &y, 1, &LAYOUT);
    lm_loss(&detached, &LAYOUT, &t, None, &norms)
        .unwrap()
        .0
        .backward();
    let diff = (x.grad() - y.grad()).abs().max().double_value(&[]);
    assert!(diff > 1e-4, "gate pathway has no effect ({diff})");
}

#[test]
fn detached_positive_gets_no_gradient() {
    let inp = inputs();
    let mut x = inp.logits.narrow(0, 0, 1).copy().set_requires_grad(true);
    let uniforms = inp.uniforms.narrow(0, 0, 1);
    let ids = inp.ids.narrow(0, 0, 1);
    let mask = inp.mask.narrow(0, 0, 1);
    for detach in [false, true] {
        let c = CringeInputs {
            rows: 1,
            uniforms: &uniforms,
            k: 1,
            detach_positive: detach,
            exclude: None,
        };
        let t = seq_terms(&x, &ids, &mask, Some(&c), None).unwrap();
        x.zero_grad();
        t.cringe_sum.sum(Kind::Float).backward();
        // Positive entries of the gradient are the pushed-down targets (and the logsumexp has no
        // part in cringe); negative entries are the sampled positives.
        let pulled_up = x.grad().lt(0.0).sum(Kind::Int64).int64_value(&[]);
        assert_eq!(pulled_up == 0, detach, "detach_positive = {detach}");
    }
}

// Equivalent python code:
//   h = beta * ((pi_w - ref_w) - (pi_l - ref_l)); loss = (-F.logsigmoid(h)).mean()
#[test]
fn dpo_matches_reference_and_is_ln2_at_the_reference() {
    let layout = Layout {
        pairs: 2,
        negatives: 0,
        positives: 0,
    };
    let terms = SeqTerms {
        logp_sum: Tensor::from_slice(&[-2.0f32, -4.0, -3.0, -1.0]),
        n_tokens: Tensor::from_slice(&[2.0f32, 3.0, 2.0, 1.0]),
        cringe_sum: Tensor::zeros([0], (Kind::Float, Device::Cpu)),
        stop_sum: Tensor::zeros([0], (Kind::Float, Device::Cpu)),
    };
    let c = ObjectiveConfig {
        beta: 0.5,
        ..cfg(Objective::Dpo)
    };
    let norms = Normalizers::from_layout(&layout);
    let r = RefLogps {
        chosen: Tensor::from_slice(&[-2.5f32, -1.5]),
        rejected: Tensor::from_slice(&[-2.0f32, -3.0]),
    };
    let (loss, sums) = lm_loss(&c, &layout, &terms, Some(&r), &norms).unwrap();
    assert_close(&[loss.double_value(&[])], &[0.6064051985740662], 1e-6);
    assert_eq!(sums.means(Objective::Dpo).accuracy, Some(0.5));
    let same = RefLogps {
        chosen: Tensor::from_slice(&[-3.0f32, -1.0]),
        rejected: Tensor::from_slice(&[-2.0f32, -4.0]),
    };
    let (loss, _) = lm_loss(&c, &layout, &terms, Some(&same), &norms).unwrap();
    assert_close(&[loss.double_value(&[])], &[std::f64::consts::LN_2], 1e-7);
}

// Equivalent python code:
//   rw, rl = tensor([0.3, -1.2, 2.0]), tensor([0.5, -2.0, 1.0]); (-F.logsigmoid(rw - rl)).mean()
#[test]
fn bradley_terry_matches_reference() {
    let layout = Layout {
        pairs: 3,
        negatives: 0,
        positives: 0,
    };
    let rewards = Tensor::from_slice(&[0.5f32, -2.0, 1.0, 0.3, -1.2, 2.0]);
    let (loss, sums) = reward_loss(&layout, &rewards, &Normalizers::from_layout(&layout)).unwrap();
    assert_close(&[loss.double_value(&[])], &[0.4941670894622803], 1e-6);
    let m = sums.means(Objective::Reward);
    assert_close(&[m.accuracy.unwrap()], &[2.0 / 3.0], 1e-12);
    assert!(m.chosen_logp.is_none() && m.ce.is_none());
}

#[test]
fn split_micro_batches_sum_to_the_whole_batch() {
    // Normalising by whole-batch counts makes per-example contributions additive.
    let inp = inputs();
    let c = ObjectiveConfig {
        alpha: 0.5,
        ..cfg(Objective::BinaryCringe)
    };
    let norms = Normalizers::from_layout(&LAYOUT);
    let whole = lm_loss(
        &c,
        &LAYOUT,
        &terms(&inp, &inp.logits, 1, &LAYOUT),
        None,
        &norms,
    )
    .unwrap()
    .0;
    // Micro-batch 1: pair 0 (rows 0 and 2 of the full batch) + the negative (row 2).
    let pick = |rows: &[i64]| {
        let idx = Tensor::from_slice(rows);
        Inputs {
            logits: inp.logits.index_select(0, &idx),
            ids: inp.ids.index_select(0, &idx),
            mask: inp.mask.index_select(0, &idx),
            uniforms: inp.uniforms.index_select(0, &idx),
        }
    };
    let l1 = Layout {
        pairs: 1,
        negatives: 1,
        positives: 0,
    };
    let a = pick(&[0, 2, 3]);
    let l2 = Layout {
        pairs: 1,
        negatives: 0,
        positives: 1,
    };
    let b = pick(&[1, 4, 5]);
    let sa = lm_loss(&c, &l1, &terms(&a, &a.logits, 1, &l1), None, &norms)
        .unwrap()
        .0;
    let sb = lm_loss(&c, &l2, &terms(&b, &b.logits, 1, &l2), None, &norms)
        .unwrap()
        .0;
    let (w, s) = (whole.double_value(&[]), (sa + sb).double_value(&[]));
    assert!((w - s).abs() < 1e-6, "{w} vs {s}");
}

// Hand computation: one negative position predicting target 1 from logits [0, 5, 4, 3, 1]
// (vocabulary of 5; position 0 predicts token 1, the only response token). With k = 1 the positive is the best non-target token: id 2 (logit 4), so
// cr = softplus(5 - 4). Excluding id 2 (an EOS) moves the positive to id 3: softplus(5 - 3).
// Excluding the target itself (a rejected EOS) keeps it out of the candidates too: the positive
// is still id 2.
#[test]
fn excluded_ids_are_never_the_cringe_positive() {
    let logits = Tensor::from_slice(&[0f32, 5., 4., 3., 1., 0., 0., 0., 0., 0.]).view([1, 2, 5]);
    let ids = Tensor::from_slice(&[0i64, 1]).view([1, 2]);
    let mask = Tensor::from_slice(&[0i64, 1]).view([1, 2]);
    let uniforms = Tensor::from_slice(&[0.5f32]).view([1, 1]);
    let softplus = |x: f64| (1.0 + x.exp()).ln();
    for (excluded, want) in [
        (None, softplus(1.0)),
        (Some(vec![2i64]), softplus(2.0)),
        (Some(vec![2i64, 3]), softplus(4.0)),
        (Some(vec![1i64]), softplus(1.0)),
    ] {
        let ex = excluded.as_ref().map(|v| Tensor::from_slice(v));
        let c = CringeInputs {
            rows: 1,
            uniforms: &uniforms,
            k: 1,
            detach_positive: false,
            exclude: ex.as_ref(),
        };
        let got = seq_terms(&logits, &ids, &mask, Some(&c), None)
            .unwrap()
            .cringe_sum
            .double_value(&[0]);
        assert!(
            (got - want).abs() < 1e-6,
            "excluded {excluded:?}: cringe {got}, expected {want}"
        );
    }
}
