//! [`SeqTerms`] straight from the final hidden states and the LM head, without the `[R, T, V]`
//! logits: the same numbers as `seq_terms(model.forward(..))`, with less work and memory.
//!
//! * Only positions that predict a response token (mask 1) enter any sum, so only their hidden
//!   states go through the 49k-wide head (prompt positions are about half of a typical batch).
//! * The head runs over chunks of [`CHUNK`] positions. The forward keeps, per position, just the
//!   target logit, the log-sum-exp and (cringe rows) the drawn positive's logit and vocabulary id.
//!   These become leaf tensors from which the loss is built with ordinary autograd.
//! * [`FusedTerms::backward`] backpropagates the loss to those leaves, then recomputes each chunk's
//!   logits once and forms `d loss / d logits = g_lse * softmax + g_target * onehot(y) +
//!   g_plus * onehot(j)` in place, so the full-vocabulary gradient never exists at once either;
//!   it hands `d loss / d hidden` to the backbone's graph and adds `d loss / d W` to the head.
//!
//! Memory: one `[CHUNK, V]` buffer at a time instead of the logits, their float32 view, the
//! softmax of `logsumexp`'s backward and three scattered full-size gradients.

use anyhow::{bail, Result};
use tch::{Kind, Tensor};

use super::tokens::{
    draw_positive, stop_unlikelihood, stop_weight, CringeInputs, SeqTerms, StopGuard,
};

/// Positions per head chunk: `[CHUNK, V]` fp32 is 64 MiB at V = 65536 and keeps the head's
/// matrix products large enough to run at full speed.
pub const CHUNK: i64 = 256;

/// What [`seq_terms_fused`] reads.
pub struct HeadInputs<'a> {
    /// Final hidden states `[R, T, H]` (attached to the backbone's graph when training).
    pub hidden: &'a Tensor,
    /// The LM head `[V, H]` (the embedding matrix when tied).
    pub weight: &'a Tensor,
    pub input_ids: &'a Tensor,
    /// `[R, T]`, 1 where the token at that position is summed over.
    pub response_mask: &'a Tensor,
    pub cringe: Option<&'a CringeInputs<'a>>,
    pub stop: Option<&'a StopGuard<'a>>,
}

/// The per-sequence terms and what their gradient needs.
pub struct FusedTerms {
    pub terms: SeqTerms,
    grad: GradState,
}

/// Saved for [`FusedTerms::backward`].
struct GradState {
    /// Hidden states of the selected positions `[N, H]`, attached to the backbone's graph.
    hidden: Tensor,
    weight: Tensor,
    /// Target ids `[N]`.
    targets: Tensor,
    /// Log-sum-exp values `[N]` (no gradient).
    lse: Tensor,
    /// Vocabulary id of the drawn positive of the first `n_cringe` positions.
    plus_ids: Tensor,
    n_cringe: i64,
    /// The stop guard's ids and per-position log-sum-exp over them `[N]` (no gradient).
    stop: Option<(Tensor, Tensor)>,
    chunk: i64,
    /// The kind the forward's head products ran in: fp32, or bf16/f16 under autocast. The
    /// backward recomputes the logits and runs its products in the same kind.
    compute: Kind,
    /// Leaves the loss is built from: target logit `[N]`, log-sum-exp `[N]`, positive logit
    /// `[n_cringe]`.
    leaf_target: Tensor,
    leaf_lse: Tensor,
    leaf_plus: Tensor,
    /// Log-sum-exp of the stop ids' logits `[N]` (empty without the guard).
    leaf_stop: Tensor,
}

fn leaf(values: Tensor) -> Tensor {
    values.detach().set_requires_grad(true)
}

fn cat_or_empty(parts: &[Tensor], kind: Kind, device: tch::Device) -> Tensor {
    if parts.is_empty() {
        Tensor::zeros([0], (kind, device))
    } else {
        Tensor::cat(parts, 0)
    }
}

/// Compute [`SeqTerms`] as `seq_terms` does from `hidden.linear(weight)`, chunked over the
/// response positions (see the module docs).
pub fn seq_terms_fused(x: &HeadInputs) -> Result<FusedTerms> {
    seq_terms_chunked(x, CHUNK)
}

fn seq_terms_chunked(x: &HeadInputs, chunk: i64) -> Result<FusedTerms> {
    if chunk < 1 {
        bail!("head chunk of {chunk} positions");
    }
    let (r, t, h) = x.hidden.size3()?;
    if x.input_ids.size() != [r, t] || x.response_mask.size() != [r, t] {
        bail!(
            "hidden {:?} do not match input_ids {:?} / response_mask {:?}",
            x.hidden.size(),
            x.input_ids.size(),
            x.response_mask.size()
        );
    }
    if t < 2 {
        bail!("sequences of length {t} have no token to predict");
    }
    let (v, wh) = x.weight.size2()?;
    if wh != h {
        bail!("head {:?} does not fit hidden size {h}", x.weight.size());
    }
    let device = x.hidden.device();
    let steps = t - 1;
    // Position t predicts token t + 1; keep the positions whose target is summed over, in
    // row-major order so the cringe rows' positions come first.
    let mask = x.response_mask.narrow(1, 1, steps).to_kind(Kind::Float);
    let n_tokens = mask.sum_dim_intlist([1i64].as_slice(), false, Kind::Float);
    let flat = mask.reshape([-1]).nonzero().squeeze_dim(1);
    let rows = flat.divide_scalar_mode(steps, "floor");
    let targets = x
        .input_ids
        .narrow(1, 1, steps)
        .reshape([-1])
        .index_select(0, &flat);
    let hidden = x
        .hidden
        .narrow(1, 0, steps)
        .reshape([r * steps, h])
        .index_select(0, &flat);
    let n = flat.size()[0];

    let (n_cringe, draws) = match x.cringe {
        None => (0, None),
        Some(c) => {
            if c.rows > r {
                bail!("{} cringe rows requested from a batch of {r}", c.rows);
            }
            c.check_k(v)?;
            if c.uniforms.size() != [c.rows, steps] {
                bail!(
                    "cringe uniforms {:?}, expected [{}, {steps}]",
                    c.uniforms.size(),
                    c.rows
                );
            }
            let nc = rows.lt(c.rows).sum(Kind::Int64).int64_value(&[]);
            let u = c
                .uniforms
                .to_kind(Kind::Float)
                .reshape([-1])
                .index_select(0, &flat.narrow(0, 0, nc));
            (nc, Some((c, u)))
        }
    };

    let (mut tgt_parts, mut lse_parts, mut plus_parts, mut plus_id_parts) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut stop_parts = Vec::new();
    let mut compute = Kind::Float;
    {
        let _guard = tch::no_grad_guard();
        let mut start = 0;
        while start < n {
            let len = chunk.min(n - start);
            let logits = hidden
                .narrow(0, start, len)
                .linear(x.weight, None::<Tensor>);
            compute = logits.kind();
            let logits = logits.to_kind(Kind::Float);
            let tgt = targets.narrow(0, start, len);
            tgt_parts.push(logits.gather(1, &tgt.unsqueeze(1), false).squeeze_dim(1));
            lse_parts.push(logits.logsumexp([1i64].as_slice(), false));
            if let Some(g) = x.stop {
                stop_parts.push(
                    logits
                        .index_select(1, g.ids)
                        .logsumexp([1i64].as_slice(), false),
                );
            }
            if let Some((c, u)) = &draws {
                let m = (n_cringe - start).clamp(0, len);
                if m > 0 {
                    let (val, id) = draw_positive(
                        &logits.narrow(0, 0, m),
                        &tgt.narrow(0, 0, m),
                        &u.narrow(0, start, m),
                        c.k,
                        c.exclude,
                    );
                    plus_parts.push(val);
                    plus_id_parts.push(id);
                }
            }
            start += len;
        }
    }
    let leaf_target = leaf(cat_or_empty(&tgt_parts, Kind::Float, device));
    let leaf_lse = leaf(cat_or_empty(&lse_parts, Kind::Float, device));
    let leaf_plus = leaf(cat_or_empty(&plus_parts, Kind::Float, device));
    let plus_ids = cat_or_empty(&plus_id_parts, Kind::Int64, device);
    let leaf_stop = leaf(cat_or_empty(&stop_parts, Kind::Float, device));
    let lse = leaf_lse.detach();

    let zeros = |len: i64| Tensor::zeros([len], (Kind::Float, device));
    let logp_sum = zeros(r).index_add(0, &rows, &(&leaf_target - &leaf_lse));
    let cringe_sum = match x.cringe {
        None => zeros(0),
        Some(c) => {
            let mut s_plus = leaf_plus.shallow_clone();
            if c.detach_positive {
                s_plus = s_plus.detach();
            }
            let cr = (leaf_target.narrow(0, 0, n_cringe) - s_plus).softplus();
            zeros(c.rows).index_add(0, &rows.narrow(0, 0, n_cringe), &cr)
        }
    };
    let stop_sum = match x.stop {
        None => zeros(0),
        Some(g) => {
            let ul = stop_unlikelihood(&(&leaf_stop - &leaf_lse)) * stop_weight(&rows, &targets, g);
            zeros(r).index_add(0, &rows, &ul)
        }
    };
    Ok(FusedTerms {
        terms: SeqTerms {
            logp_sum,
            n_tokens,
            cringe_sum,
            stop_sum,
        },
        grad: GradState {
            hidden,
            weight: x.weight.shallow_clone(),
            targets,
            lse,
            plus_ids,
            n_cringe,
            stop: x.stop.map(|g| (g.ids.shallow_clone(), leaf_stop.detach())),
            chunk,
            compute,
            leaf_target,
            leaf_lse,
            leaf_plus,
            leaf_stop,
        },
    })
}

fn grad_or_zeros(t: &Tensor) -> Tensor {
    let g = t.grad();
    if g.defined() {
        g
    } else {
        t.zeros_like()
    }
}

impl FusedTerms {
    /// Backpropagate `loss` (built from [`FusedTerms::terms`]) into the backbone and the head,
    /// accumulating into their `.grad` like `loss.backward()` on the unfused graph would.
    pub fn backward(self, loss: &Tensor) {
        loss.backward();
        let s = self.grad;
        let g_target = grad_or_zeros(&s.leaf_target);
        let g_lse = grad_or_zeros(&s.leaf_lse);
        let g_plus = grad_or_zeros(&s.leaf_plus);
        let g_stop = grad_or_zeros(&s.leaf_stop);
        let n = s.targets.size()[0];
        if n == 0 {
            return;
        }
        let (grad_hidden, grad_weight) = {
            let _guard = tch::no_grad_guard();
            // The forward's products ran in `compute` (bf16 under autocast): the logits are
            // recomputed in it, so that the softmax below matches the forward's log-sum-exp,
            // and the two gradient products run in it too; the rest is fp32.
            let hidden = s.hidden.detach().to_kind(s.compute);
            let weight = s.weight.detach().to_kind(s.compute);
            // A frozen head (LoRA) needs no gradient: skip its V × H buffer and products.
            let mut grad_weight = s
                .weight
                .requires_grad()
                .then(|| Tensor::zeros(s.weight.size(), (Kind::Float, s.weight.device())));
            let mut parts = Vec::new();
            let mut start = 0;
            while start < n {
                let len = s.chunk.min(n - start);
                let h = hidden.narrow(0, start, len);
                let mut d = h.linear(&weight, None::<Tensor>).to_kind(Kind::Float);
                // d stop_lse / d logits = softmax over the stop ids only: their logits are
                // read before `d` turns into the full softmax below.
                let stop_grad = s.stop.as_ref().map(|(ids, stop_lse)| {
                    let p = (d.index_select(1, ids) - stop_lse.narrow(0, start, len).unsqueeze(1))
                        .exp();
                    (ids, p * g_stop.narrow(0, start, len).unsqueeze(1))
                });
                // softmax = exp(logits - lse), scaled by d loss / d lse, in place.
                let _ = d.g_sub_(&s.lse.narrow(0, start, len).unsqueeze(1));
                let _ = d.exp_();
                let _ = d.g_mul_(&g_lse.narrow(0, start, len).unsqueeze(1));
                let _ = d.scatter_add_(
                    1,
                    &s.targets.narrow(0, start, len).unsqueeze(1),
                    &g_target.narrow(0, start, len).unsqueeze(1),
                );
                let m = (s.n_cringe - start).clamp(0, len);
                if m > 0 {
                    let _ = d.narrow(0, 0, m).scatter_add_(
                        1,
                        &s.plus_ids.narrow(0, start, m).unsqueeze(1),
                        &g_plus.narrow(0, start, m).unsqueeze(1),
                    );
                }
                if let Some((ids, g)) = stop_grad {
                    let _ = d.index_add_(1, ids, &g);
                }
                if s.compute == Kind::Float {
                    parts.push(d.matmul(&weight));
                    if let Some(gw) = grad_weight.as_mut() {
                        let _ = gw.addmm_(&d.transpose(0, 1), &h);
                    }
                } else {
                    let d = d.to_kind(s.compute);
                    parts.push(d.matmul(&weight));
                    if let Some(gw) = grad_weight.as_mut() {
                        let _ = gw.g_add_(&d.transpose(0, 1).mm(&h).to_kind(Kind::Float));
                    }
                }
                start += len;
            }
            (Tensor::cat(&parts, 0), grad_weight)
        };
        // Hand d loss / d hidden to the backbone's graph: the gradient of sum(hidden * g) is g.
        (&s.hidden * grad_hidden.to_kind(s.hidden.kind()))
            .sum(Kind::Float)
            .backward();
        let Some(grad_weight) = grad_weight else {
            return;
        };
        let mut head_grad = s.weight.grad();
        if head_grad.defined() {
            let _ = head_grad.g_add_(&grad_weight.to_kind(head_grad.kind()));
        } else {
            // An untied head has no gradient yet (AdamW drops them every step): let autograd create it.
            (&s.weight * grad_weight.to_kind(s.weight.kind()))
                .sum(Kind::Float)
                .backward();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tokens::seq_terms;
    use super::*;
    use tch::Device;

    const K: (Kind, Device) = (Kind::Float, Device::Cpu);

    /// A nonlinear function of the terms with the shape of the Pairwise Cringe loss (gate of a
    /// margin times a cringe term), so every leaf gets a gradient that depends on the others.
    fn loss_of(t: &SeqTerms) -> Tensor {
        let margin = t.logp_sum.get(2) - t.logp_sum.get(0);
        let gate = (-margin / 4.0).sigmoid();
        let base =
            -(t.logp_sum.sum(Kind::Float) / 7.0) + gate * t.cringe_sum.sum(Kind::Float) * 0.3;
        if t.stop_sum.numel() == 0 {
            base
        } else {
            // Weighted per row, so rows' stop terms do not enter the gradient alike.
            let w = Tensor::arange(t.stop_sum.size()[0], K) * 0.25 + 0.5;
            base + (&t.stop_sum * w).sum(Kind::Float)
        }
    }

    struct Case {
        ids: Tensor,
        mask: Tensor,
        uniforms: Tensor,
    }

    /// 4 rows of 7 tokens over a vocabulary of 11: prompts of different lengths, right padding
    /// (mask 0) and one row whose every target is summed (as with --train-on-prompt).
    fn case() -> Case {
        tch::manual_seed(7);
        let ids = Tensor::randint(11, [4, 7], (Kind::Int64, Device::Cpu));
        #[rustfmt::skip]
        let mask = Tensor::from_slice(&[
            0i64, 0, 1, 1, 1, 1, 0,
            0, 0, 0, 0, 1, 1, 1,
            0, 1, 1, 1, 1, 1, 1,
            0, 0, 0, 1, 1, 0, 0,
        ]).view([4, 7]);
        let uniforms = Tensor::rand([2, 6], K);
        Case {
            ids,
            mask,
            uniforms,
        }
    }

    /// Values and gradients (hidden states and head) of the fused path against `seq_terms` on
    /// full logits, for each `k` and chunk size (1 and 3 cut chunks across rows and across the
    /// end of the cringe rows; 64 is one chunk). `tied` also feeds the head matrix into the hidden
    /// states, as a tied embedding does, so the head's gradient has two sources.
    fn check(k: i64, chunk: i64, detach_positive: bool, tied: bool) {
        check_in(k, chunk, detach_positive, tied, false);
    }

    /// `check` with both forwards under CPU bf16 autocast when `bf16`: the head's products then
    /// run in bf16 on both paths (the fused backward recomputes the logits in bf16 too), so values
    /// agree to fp32 rounding and gradients to bf16 rounding of the products' results.
    fn check_in(k: i64, chunk: i64, detach_positive: bool, tied: bool, bf16: bool) {
        let (rtol, atol) = if bf16 { (2e-2, 2e-3) } else { (1e-4, 1e-5) };
        let ac = |f: &dyn Fn() -> SeqTerms| crate::amp::autocast(Device::Cpu, bf16, f);
        let c = case();
        let w = (Tensor::randn([11, 5], K) * 2.0).set_requires_grad(true);
        let base = Tensor::randn([4, 7, 5], K).set_requires_grad(true);
        // Fresh leaves for each path, so the fused path starts with no gradient buffers (the
        // untied head then gets its gradient through the fallback of `backward`).
        let fresh = |t: &Tensor| t.detach().copy().set_requires_grad(true);
        let hidden_of = |base: &Tensor, w: &Tensor| {
            if tied {
                base + Tensor::embedding(w, &c.ids, -1, false, false) * 0.5
            } else {
                base.shallow_clone()
            }
        };
        // k = 3 runs also keep id 0 out of the candidates (`--cringe-exclude-stop`): 4 of the 5
        // ids remain, exactly the k + 1 the draw needs.
        let excluded = Tensor::from_slice(&[0i64]);
        let cringe = CringeInputs {
            rows: 2,
            uniforms: &c.uniforms,
            k,
            detach_positive,
            exclude: (k == 3).then_some(&excluded),
        };
        // The stop guard on rows 2.. (k = 1 runs), with two stop ids in fp32. In bf16 one: with two,
        // these random logits put up to 0.99999 of a position's mass on them, where
        // -log(1 - q) magnifies bf16's rounding of the logits by 1 / (1 - q).
        let stop_ids = Tensor::from_slice(if bf16 { &[4i64][..] } else { &[0i64, 4][..] });
        let guard = StopGuard {
            ids: &stop_ids,
            from_row: 2,
        };
        let stop = (k == 1).then_some(&guard);

        let want = ac(&|| {
            let logits = hidden_of(&base, &w).linear(&w, None::<Tensor>);
            assert_eq!(logits.kind() == Kind::BFloat16, bf16);
            seq_terms(&logits, &c.ids, &c.mask, Some(&cringe), stop).unwrap()
        });
        let want_loss = loss_of(&want);
        want_loss.backward();

        let (base2, w2) = (fresh(&base), fresh(&w));
        let hidden = hidden_of(&base2, &w2);
        let got = crate::amp::autocast(Device::Cpu, bf16, || {
            seq_terms_chunked(
                &HeadInputs {
                    hidden: &hidden,
                    weight: &w2,
                    input_ids: &c.ids,
                    response_mask: &c.mask,
                    cringe: Some(&cringe),
                    stop,
                },
                chunk,
            )
            .unwrap()
        });
        assert_eq!(got.grad.compute == Kind::BFloat16, bf16);
        for (name, a, b) in [
            ("logp_sum", &got.terms.logp_sum, &want.logp_sum),
            ("n_tokens", &got.terms.n_tokens, &want.n_tokens),
            ("cringe_sum", &got.terms.cringe_sum, &want.cringe_sum),
            ("stop_sum", &got.terms.stop_sum, &want.stop_sum),
        ] {
            assert!(
                a.allclose(&b.detach(), 1e-5, 1e-5, false),
                "{name}: {a:?} vs {b:?}"
            );
        }
        let loss = loss_of(&got.terms);
        assert!((loss.double_value(&[]) - want_loss.double_value(&[])).abs() < 1e-5);
        got.backward(&loss);
        let (gh, gw) = (base2.grad(), w2.grad());
        let (want_gh, want_gw) = (base.grad(), w.grad());
        assert!(
            gh.allclose(&want_gh, rtol, atol, false),
            "d/dhidden {gh} vs {want_gh}"
        );
        assert!(
            gw.allclose(&want_gw, rtol, atol, false),
            "d/dW {gw} vs {want_gw}"
        );
    }

    #[test]
    fn fused_terms_and_gradients_equal_the_full_logits_path() {
        for k in [1, 3] {
            for chunk in [1, 3, 64] {
                check(k, chunk, false, false);
                check(k, chunk, false, true);
            }
        }
        check(3, 3, true, false);
    }

    #[test]
    fn fused_gradients_follow_the_full_logits_path_under_bf16_autocast() {
        for chunk in [3, 64] {
            check_in(3, chunk, false, true, true);
            check_in(1, chunk, false, false, true);
        }
    }

    #[test]
    fn without_cringe_only_log_probs_are_computed() {
        let c = case();
        let w = Tensor::randn([11, 5], K);
        let hidden = Tensor::randn([4, 7, 5], K);
        let want = seq_terms(
            &hidden.linear(&w, None::<Tensor>),
            &c.ids,
            &c.mask,
            None,
            None,
        )
        .unwrap();
        let got = seq_terms_fused(&HeadInputs {
            hidden: &hidden,
            weight: &w,
            input_ids: &c.ids,
            response_mask: &c.mask,
            cringe: None,
            stop: None,
        })
        .unwrap();
        assert!(got
            .terms
            .logp_sum
            .allclose(&want.logp_sum, 1e-5, 1e-5, false));
        assert_eq!(got.terms.cringe_sum.size(), [0]);
    }
}
