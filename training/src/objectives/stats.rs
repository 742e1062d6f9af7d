//! Per-step statistics (`LOSSES.md`, "What every objective logs per step"): sums over the examples
//! of each micro-batch, added up over a step (or an evaluation file) and divided once at the end.

use serde::Serialize;
use tch::{Kind, Tensor};

/// Additive sums of one or more micro-batches.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StatSums {
    /// The (already normalised) loss contributions; their sum is the batch loss.
    pub loss: f64,
    pub examples: f64,
    /// Sum and count of per-sequence cross-entropies.
    pub ce: f64,
    pub ce_n: f64,
    /// Sum and count of per-sequence cringe values (before alpha and the gate).
    pub cringe: f64,
    pub cringe_n: f64,
    pub pairs: f64,
    pub gate: f64,
    pub gate_n: f64,
    pub margin: f64,
    pub margin_n: f64,
    pub correct: f64,
    /// Summed sequence log-probs of chosen / rejected responses over `pairs` (LM objectives).
    pub chosen_logp: f64,
    pub rejected_logp: f64,
    /// Sum and count of per-sequence stop-guard values (before its weight; guarded runs only).
    pub stop: f64,
    pub stop_n: f64,
}

fn sum_f64(t: &Tensor) -> f64 {
    if t.numel() == 0 {
        0.0
    } else {
        t.detach().sum(Kind::Double).double_value(&[])
    }
}

impl StatSums {
    /// Record per-pair margins (accuracy = margin > 0) and, for the pairwise gate, its values.
    pub fn add_margin(&mut self, margin: &Tensor, gate: Option<&Tensor>) {
        let n = margin.numel() as f64;
        self.margin += sum_f64(margin);
        self.margin_n += n;
        if n > 0.0 {
            self.correct += sum_f64(&margin.detach().gt(0.0).to_kind(Kind::Double));
        }
        if let Some(g) = gate {
            self.gate += sum_f64(g);
            self.gate_n += n;
        }
    }

    pub fn add(&mut self, o: &StatSums) {
        self.loss += o.loss;
        self.examples += o.examples;
        self.ce += o.ce;
        self.ce_n += o.ce_n;
        self.cringe += o.cringe;
        self.cringe_n += o.cringe_n;
        self.pairs += o.pairs;
        self.gate += o.gate;
        self.gate_n += o.gate_n;
        self.margin += o.margin;
        self.margin_n += o.margin_n;
        self.correct += o.correct;
        self.chosen_logp += o.chosen_logp;
        self.rejected_logp += o.rejected_logp;
        self.stop += o.stop;
        self.stop_n += o.stop_n;
    }

    /// Means over examples; a field is `None` when no example of this batch has it.
    pub fn means(&self, objective: super::Objective) -> StepStats {
        let mean = |s: f64, n: f64| (n > 0.0).then(|| s / n);
        let lm_pairs = !objective.is_reward() && self.pairs > 0.0;
        StepStats {
            examples: self.examples as usize,
            loss: self.loss,
            ce: mean(self.ce, self.ce_n),
            cringe: if objective.uses_cringe() {
                Some(mean(self.cringe, self.cringe_n).unwrap_or(0.0))
            } else {
                None
            },
            gate: mean(self.gate, self.gate_n),
            margin: mean(self.margin, self.margin_n),
            chosen_logp: if lm_pairs {
                mean(self.chosen_logp, self.pairs)
            } else {
                None
            },
            rejected_logp: if lm_pairs {
                mean(self.rejected_logp, self.pairs)
            } else {
                None
            },
            accuracy: mean(self.correct, self.margin_n),
            stop_unlikelihood: mean(self.stop, self.stop_n),
        }
    }
}

/// Means of one step (or one evaluation); absent fields are omitted from JSON.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepStats {
    pub examples: usize,
    pub loss: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ce: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cringe: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gate: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub margin: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chosen_logp: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rejected_logp: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accuracy: Option<f64>,
    /// Mean per-sequence `-log(1 - p(stop))` of the guarded rows (`--stop-unlikelihood`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_unlikelihood: Option<f64>,
}
