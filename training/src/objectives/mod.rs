//! The objectives of `LOSSES.md`: SFT, Binary Cringe, Pairwise Cringe, DPO and the Bradley–Terry
//! reward model.
//!
//! A micro-batch holds whole examples with its rows in a fixed [`Layout`]:
//! `[rejected of each pair | binary negatives | chosen of each pair | binary positives]`, so the
//! sequences that need the cringe term are one leading block and chosen/rejected of one pair sit
//! at `chosen_start + i` / `i`. Every loss is a sum over the micro-batch's examples divided by
//! counts taken over the whole optimizer batch ([`Normalizers`]), so accumulating micro-batches
//! gives exactly the loss (and gradient) of one big batch.

mod config;
mod fused;
mod stats;
mod tokens;

pub use config::{Gate, MarginReduction, Objective, ObjectiveConfig};
pub use fused::{seq_terms_fused, FusedTerms, HeadInputs};
pub use stats::{StatSums, StepStats};
pub use tokens::{seq_terms, CringeInputs, SeqTerms, StopGuard};

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// How many examples of each kind a micro-batch holds (see the module docs for the row order).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layout {
    pub pairs: usize,
    pub negatives: usize,
    pub positives: usize,
}

impl Layout {
    pub fn rows(&self) -> usize {
        2 * self.pairs + self.negatives + self.positives
    }
    pub fn examples(&self) -> usize {
        self.pairs + self.negatives + self.positives
    }
    /// Rows that get the cringe term: rejected responses and binary negatives.
    pub fn cringe_rows(&self) -> usize {
        self.pairs + self.negatives
    }
    pub fn chosen_start(&self) -> usize {
        self.pairs + self.negatives
    }
    pub fn positives_start(&self) -> usize {
        2 * self.pairs + self.negatives
    }
    pub fn add(&mut self, other: &Layout) {
        self.pairs += other.pairs;
        self.negatives += other.negatives;
        self.positives += other.positives;
    }
}

/// Denominators of the "mean over ..." of `LOSSES.md`, counted over a whole optimizer batch (or a
/// whole evaluation file).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Normalizers {
    /// All examples (pairs count once).
    pub examples: f64,
    /// Sequences that get cross-entropy in Binary Cringe: chosen responses and positives.
    pub ce_rows: f64,
    /// Sequences that get the cringe term in Binary Cringe: rejected responses and negatives.
    pub cringe_rows: f64,
    pub pairs: f64,
}

impl Normalizers {
    pub fn from_layout(total: &Layout) -> Self {
        Normalizers {
            examples: total.examples() as f64,
            ce_rows: (total.pairs + total.positives) as f64,
            cringe_rows: (total.pairs + total.negatives) as f64,
            pairs: total.pairs as f64,
        }
    }
}

/// Reference-model sequence log-probs of the pairs of a micro-batch (DPO), `[pairs]` each.
pub struct RefLogps {
    pub chosen: Tensor,
    pub rejected: Tensor,
}

fn slice(t: &Tensor, start: usize, len: usize) -> Tensor {
    t.narrow(0, start as i64, len as i64)
}

fn sum_f64(t: &Tensor) -> f64 {
    if t.numel() == 0 {
        0.0
    } else {
        t.detach().sum(Kind::Double).double_value(&[])
    }
}

/// The gate `g(M)` of Pairwise Cringe.
pub fn gate(cfg: &ObjectiveConfig, margin: &Tensor) -> Tensor {
    let g = match cfg.gate {
        Gate::Soft => ((cfg.b - margin) / cfg.tau).sigmoid(),
        Gate::Hard => margin.lt(cfg.b).to_kind(Kind::Float),
        Gate::None => margin.ones_like(),
    };
    if cfg.gate_detach {
        g.detach()
    } else {
        g
    }
}

/// The loss contribution of one micro-batch of an LM objective (everything but `reward`), and the
/// sums its statistics are built from.
pub fn lm_loss(
    cfg: &ObjectiveConfig,
    layout: &Layout,
    terms: &SeqTerms,
    reference: Option<&RefLogps>,
    norms: &Normalizers,
) -> Result<(Tensor, StatSums)> {
    let rows = layout.rows() as i64;
    if terms.logp_sum.size() != [rows] {
        bail!(
            "{} sequence terms for a layout of {rows} rows",
            terms.logp_sum.size()[0]
        );
    }
    let p = layout.pairs;
    let n_tok = terms.n_tokens.clamp_min(1.0);
    let ce = -&terms.logp_sum / &n_tok;
    let mut sums = StatSums {
        examples: layout.examples() as f64,
        ..Default::default()
    };

    // Pair quantities shared by every LM objective's statistics.
    let lw = slice(&terms.logp_sum, layout.chosen_start(), p);
    let ll = slice(&terms.logp_sum, 0, p);
    let (sw, sl) = match cfg.margin_reduction {
        MarginReduction::Sum => (lw.shallow_clone(), ll.shallow_clone()),
        MarginReduction::Mean => (
            &lw / slice(&n_tok, layout.chosen_start(), p),
            &ll / slice(&n_tok, 0, p),
        ),
    };
    let margin = &sw - &sl;
    sums.pairs = p as f64;
    sums.chosen_logp = sum_f64(&lw);
    sums.rejected_logp = sum_f64(&ll);

    let cringe_needed = cfg.name.uses_cringe();
    let cr = if cringe_needed {
        let n = layout.cringe_rows() as i64;
        if terms.cringe_sum.size() != [n] {
            bail!(
                "cringe terms for {:?} rows, expected {n}",
                terms.cringe_sum.size()
            );
        }
        let cr = &terms.cringe_sum / slice(&n_tok, 0, layout.cringe_rows());
        sums.cringe = sum_f64(&cr);
        sums.cringe_n = n as f64;
        Some(cr)
    } else {
        None
    };
    // The stop guard joins each trained-toward row's cross-entropy, with the same per-token mean.
    if cfg.stop_unlikelihood > 0.0 {
        if terms.stop_sum.size() != [rows] {
            bail!(
                "stop-guard terms for {:?} rows, expected {rows}",
                terms.stop_sum.size()
            );
        }
        let ce_rows = rows - layout.chosen_start() as i64;
        let guard = slice(
            &(&terms.stop_sum / &n_tok),
            layout.chosen_start(),
            ce_rows as usize,
        );
        sums.stop = sum_f64(&guard);
        sums.stop_n = ce_rows as f64;
    }
    let ce_term = if cfg.stop_unlikelihood > 0.0 {
        &ce + &terms.stop_sum / &n_tok * cfg.stop_unlikelihood
    } else {
        ce.shallow_clone()
    };
    let ce_chosen = slice(&ce_term, layout.chosen_start(), p);
    let ce_pos = slice(&ce_term, layout.positives_start(), layout.positives);
    // Statistics report the cross-entropy alone, guard or not.
    let ce_chosen_only = sum_f64(&slice(&ce, layout.chosen_start(), p));
    let ce_pos_only = sum_f64(&slice(&ce, layout.positives_start(), layout.positives));

    let loss = match cfg.name {
        Objective::Sft => {
            if p != 0 || layout.negatives != 0 {
                bail!("sft batches hold positives only (got {layout:?})");
            }
            sums.ce = ce_pos_only;
            sums.ce_n = layout.positives as f64;
            ce_pos.sum(Kind::Float) / norms.ce_rows.max(1.0)
        }
        Objective::BinaryCringe => {
            let cr = cr.expect("cringe computed for binary-cringe; this is a bug");
            let ce_sum = ce_chosen.sum(Kind::Float) + ce_pos.sum(Kind::Float);
            sums.ce = ce_chosen_only + ce_pos_only;
            sums.ce_n = (p + layout.positives) as f64;
            sums.add_margin(&margin, None);
            ce_sum / norms.ce_rows.max(1.0)
                + cr.sum(Kind::Float) * (cfg.alpha / norms.cringe_rows.max(1.0))
        }
        Objective::PairwiseCringe => {
            let cr = cr.expect("cringe computed for pairwise-cringe; this is a bug");
            let g = gate(cfg, &margin);
            let cr_rejected = slice(&cr, 0, p);
            let cr_neg = slice(&cr, p, layout.negatives);
            sums.ce = ce_chosen_only + ce_pos_only;
            sums.ce_n = (p + layout.positives) as f64;
            sums.add_margin(&margin, Some(&g));
            let pair_loss = &ce_chosen + &g * &cr_rejected * cfg.alpha;
            (pair_loss.sum(Kind::Float)
                + ce_pos.sum(Kind::Float)
                + cr_neg.sum(Kind::Float) * cfg.alpha)
                / norms.examples.max(1.0)
        }
        Objective::Dpo => {
            if layout.negatives != 0 || layout.positives != 0 {
                bail!("dpo batches hold pairs only (got {layout:?})");
            }
            let r = reference.ok_or_else(|| anyhow::anyhow!("dpo needs reference log-probs"))?;
            // DPO always compares summed log-probs (sequence likelihoods), whatever margin_reduction says.
            let m = (&lw - &r.chosen) - (&ll - &r.rejected);
            sums.add_margin(&m, None);
            let h = &m * cfg.beta;
            -h.log_sigmoid().sum(Kind::Float) / norms.pairs.max(1.0)
        }
        Objective::Reward => bail!("the reward objective scores sequences; use reward_loss"),
    };
    sums.loss = loss.double_value(&[]);
    Ok((loss, sums))
}

/// Bradley–Terry loss of one micro-batch: `rewards` is `[2 * pairs]` in layout order
/// (rejected first, then chosen).
pub fn reward_loss(
    layout: &Layout,
    rewards: &Tensor,
    norms: &Normalizers,
) -> Result<(Tensor, StatSums)> {
    let p = layout.pairs;
    if layout.negatives != 0 || layout.positives != 0 {
        bail!("reward batches hold pairs only (got {layout:?})");
    }
    if rewards.size() != [2 * p as i64] {
        bail!("{:?} rewards for {p} pairs", rewards.size());
    }
    let r = rewards.to_kind(Kind::Float);
    let rl = slice(&r, 0, p);
    let rw = slice(&r, p, p);
    let diff = &rw - &rl;
    let loss = -diff.log_sigmoid().sum(Kind::Float) / norms.pairs.max(1.0);
    let mut sums = StatSums {
        examples: p as f64,
        pairs: p as f64,
        ..Default::default()
    };
    sums.add_margin(&diff, None);
    sums.loss = loss.double_value(&[]);
    Ok((loss, sums))
}

#[cfg(test)]
mod tests;
