//! Per-sequence quantities computed from LM logits: the summed response log-probability, the
//! response token count, and the summed cringe token term (`LOSSES.md`, "Cringe token term").
//!
//! Memory: the only full-vocabulary intermediate is the float32 view of the shifted logits used by
//! `logsumexp`; target log-probs are `gather(target) - logsumexp`, never a full log-softmax copy, and
//! the cringe term only looks at the top `k + 1` logits of the rows that need it.

use anyhow::{bail, Result};
use tch::{Kind, Tensor};

/// What the cringe term needs besides the logits.
pub struct CringeInputs<'a> {
    /// The first `rows` rows of the batch are negative sequences.
    pub rows: i64,
    /// Uniform draws in `[0, 1)`, `[rows, T - 1]`: entry `t` samples the candidate for the token
    /// predicted at position `t` (i.e. token `t + 1`).
    pub uniforms: &'a Tensor,
    pub k: i64,
    pub detach_positive: bool,
    /// Token ids never drawn as the positive (`--cringe-exclude-stop`: the EOS set), int64 on the
    /// logits' device.
    pub exclude: Option<&'a Tensor>,
}

impl CringeInputs<'_> {
    /// The draw needs `k + 1` ranked ids that are not excluded.
    pub(crate) fn check_k(&self, vocab: i64) -> Result<()> {
        let excluded = self.exclude.map_or(0, |e| e.numel() as i64);
        if self.k < 1 || self.k + 1 + excluded > vocab {
            let minus = match excluded {
                0 => String::new(),
                n => format!(" minus the {n} excluded ids"),
            };
            bail!(
                "cringe_k = {} needs 1 <= k < vocabulary size {vocab}{minus}",
                self.k
            );
        }
        Ok(())
    }
}

/// The stop guard (`--stop-unlikelihood`): which ids end a response and from which row on the
/// batch's rows are the ones trained toward (chosen responses and positives).
pub struct StopGuard<'a> {
    /// The EOS set, int64 on the logits' device.
    pub ids: &'a Tensor,
    /// Rows `from_row..` get the term (the layout's chosen block and positives).
    pub from_row: i64,
}

/// `-log(1 - q)` for `log_q = log q` (per position), clamped below q = 1 so a position whose
/// whole mass sits on the stop ids gives a large finite value, not infinity.
pub(crate) fn stop_unlikelihood(log_q: &Tensor) -> Tensor {
    -(-log_q.clamp_max(-1e-6).exp()).log1p()
}

/// 1.0 at the positions of `rows >= from_row` whose target is not itself a stop id (a response
/// that really ends there is right to stop), else 0.0; `rows` and `targets` alike-shaped.
pub(crate) fn stop_weight(rows: &Tensor, targets: &Tensor, g: &StopGuard) -> Tensor {
    let is_stop = targets.unsqueeze(-1).eq_tensor(g.ids).any_dim(-1, false);
    rows.ge(g.from_row)
        .logical_and(&is_stop.logical_not())
        .to_kind(Kind::Float)
}

/// Per-row sums over response tokens.
#[derive(Debug)]
pub struct SeqTerms {
    /// `sum_t log p(y_t | ...)`, `[R]` float32.
    pub logp_sum: Tensor,
    /// Number of response tokens, `[R]` float32.
    pub n_tokens: Tensor,
    /// `sum_t cr_t` for the first `cringe.rows` rows, `[rows]` float32 (empty without cringe).
    pub cringe_sum: Tensor,
    /// `sum_t -log(1 - p(stop | y_<t))` over the guarded positions ([`StopGuard`]), `[R]` float32
    /// (zero on the other rows; empty without the guard).
    pub stop_sum: Tensor,
}

/// Compute [`SeqTerms`] from `[R, T, V]` logits, `[R, T]` ids and a `[R, T]` response mask (1 where
/// the token at that position is a response token; the first position is never one).
pub fn seq_terms(
    logits: &Tensor,
    input_ids: &Tensor,
    response_mask: &Tensor,
    cringe: Option<&CringeInputs>,
    stop: Option<&StopGuard>,
) -> Result<SeqTerms> {
    let (r, t, v) = logits.size3()?;
    if input_ids.size() != [r, t] || response_mask.size() != [r, t] {
        bail!(
            "logits {:?} do not match input_ids {:?} / response_mask {:?}",
            logits.size(),
            input_ids.size(),
            response_mask.size()
        );
    }
    if t < 2 {
        bail!("sequences of length {t} have no token to predict");
    }
    // Position t predicts token t + 1.
    let lg = logits.narrow(1, 0, t - 1);
    let targets = input_ids.narrow(1, 1, t - 1);
    let mask = response_mask.narrow(1, 1, t - 1).to_kind(Kind::Float);
    let target_logit = lg
        .gather(2, &targets.unsqueeze(-1), false)
        .squeeze_dim(-1)
        .to_kind(Kind::Float);
    let lse = lg.to_kind(Kind::Float).logsumexp([-1i64].as_slice(), false);
    let logp = (&target_logit - &lse) * &mask;
    let logp_sum = logp.sum_dim_intlist([1i64].as_slice(), false, Kind::Float);
    let n_tokens = mask.sum_dim_intlist([1i64].as_slice(), false, Kind::Float);

    let cringe_sum = match cringe {
        None => Tensor::zeros([0], (Kind::Float, logits.device())),
        Some(c) => {
            if c.rows > r {
                bail!("{} cringe rows requested from a batch of {r}", c.rows);
            }
            c.check_k(v)?;
            if c.uniforms.size() != [c.rows, t - 1] {
                bail!(
                    "cringe uniforms {:?}, expected [{}, {}]",
                    c.uniforms.size(),
                    c.rows,
                    t - 1
                );
            }
            let cr = cringe_tokens(
                &lg.narrow(0, 0, c.rows),
                &targets.narrow(0, 0, c.rows),
                &target_logit.narrow(0, 0, c.rows),
                c,
            );
            (cr * mask.narrow(0, 0, c.rows)).sum_dim_intlist([1i64].as_slice(), false, Kind::Float)
        }
    };
    let stop_sum = match stop {
        None => Tensor::zeros([0], (Kind::Float, logits.device())),
        Some(g) => {
            let lg32 = lg.to_kind(Kind::Float);
            let log_q = lg32
                .index_select(2, g.ids)
                .logsumexp([-1i64].as_slice(), false)
                - &lse;
            let rows = Tensor::arange(r, (Kind::Int64, logits.device()))
                .unsqueeze(1)
                .expand([r, t - 1], false);
            let w = stop_weight(&rows, &targets, g) * &mask;
            (stop_unlikelihood(&log_q) * w).sum_dim_intlist([1i64].as_slice(), false, Kind::Float)
        }
    };
    Ok(SeqTerms {
        logp_sum,
        n_tokens,
        cringe_sum,
        stop_sum,
    })
}

/// `cr_t = softplus(s-_t - s+_t)` for every position of `[N, L, V]` logits (unmasked).
fn cringe_tokens(logits: &Tensor, targets: &Tensor, s_minus: &Tensor, c: &CringeInputs) -> Tensor {
    let (mut s_plus, _) = draw_positive(logits, targets, c.uniforms, c.k, c.exclude);
    if c.detach_positive {
        s_plus = s_plus.detach();
    }
    (s_minus - s_plus).softplus()
}

/// The cringe positive of each position (LOSSES.md steps 2–4): take the top `k+1` logits, drop
/// `y_t` if it is among them (otherwise the `(k+1)`-th) so exactly `k` candidates remain, and draw
/// one from their softmax by inverse CDF with `uniforms`. Returns its logit (f32, with gradient
/// into `logits`; the draw itself carries none) and its vocabulary id, both shaped like `targets`.
/// Ids in `exclude` are ranked below every other token, so they are never candidates (a target
/// among them is then not in the top `k+1` either, and the `(k+1)`-th is dropped).
pub(crate) fn draw_positive(
    logits: &Tensor,
    targets: &Tensor,
    uniforms: &Tensor,
    k: i64,
    exclude: Option<&Tensor>,
) -> (Tensor, Tensor) {
    let device = logits.device();
    let (top_vals, top_idx) = match exclude {
        None => logits.topk(k + 1, -1, true, true),
        Some(ids) => {
            let ranked = logits.detach().index_fill(-1, ids, f64::NEG_INFINITY);
            let (_, idx) = ranked.topk(k + 1, -1, true, true);
            (logits.gather(-1, &idx, false), idx)
        }
    };
    let is_target = top_idx.eq_tensor(&targets.unsqueeze(-1));
    let has_target = is_target.any_dim(-1, true);
    let drop_at = is_target
        .to_kind(Kind::Int64)
        .argmax(-1, true)
        .where_self(&has_target, &Tensor::full([1], k, (Kind::Int64, device)));
    let slots = Tensor::arange(k, (Kind::Int64, device));
    let keep = &slots + slots.ge_tensor(&drop_at).to_kind(Kind::Int64);
    let cand = top_vals.gather(-1, &keep, false).to_kind(Kind::Float);
    let cdf = cand
        .detach()
        .softmax(-1, Kind::Float)
        .cumsum(-1, Kind::Float);
    let j = cdf
        .lt_tensor(&uniforms.to_kind(Kind::Float).unsqueeze(-1))
        .sum_dim_intlist([-1i64].as_slice(), true, Kind::Int64)
        .clamp_max(k - 1);
    let value = cand.gather(-1, &j, false).squeeze_dim(-1);
    let id = top_idx
        .gather(-1, &keep.gather(-1, &j, false), false)
        .squeeze_dim(-1);
    (value, id)
}
