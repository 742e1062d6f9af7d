//! The settings of every objective of `LOSSES.md`, loadable from TOML (an `[objective]` table) and
//! overridable from the command line.

use serde::{Deserialize, Serialize};

/// Which loss to train or evaluate (spelled as in `LOSSES.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Objective {
    /// Likelihood of the chosen / positive responses.
    Sft,
    /// The paper's Eq. 5: ce on positives + alpha * cringe on negatives.
    BinaryCringe,
    /// The paper's Eq. 6–8: ce(y_w) + alpha * g(M) * cringe(y_l).
    PairwiseCringe,
    /// Direct Preference Optimization against the frozen starting model.
    Dpo,
    /// Bradley–Terry reward model on a scalar head.
    Reward,
}

impl Objective {
    pub fn as_str(self) -> &'static str {
        match self {
            Objective::Sft => "sft",
            Objective::BinaryCringe => "binary-cringe",
            Objective::PairwiseCringe => "pairwise-cringe",
            Objective::Dpo => "dpo",
            Objective::Reward => "reward",
        }
    }

    /// Whether the objective contrasts negative tokens (and so needs the cringe term).
    pub fn uses_cringe(self) -> bool {
        matches!(self, Objective::BinaryCringe | Objective::PairwiseCringe)
    }

    /// Whether the objective reads a scalar reward head instead of LM logits.
    pub fn is_reward(self) -> bool {
        self == Objective::Reward
    }

    /// Whether every record must be a pair (binary feedback has no pairwise comparison).
    pub fn needs_pairs(self) -> bool {
        matches!(self, Objective::Dpo | Objective::Reward)
    }
}

impl std::fmt::Display for Objective {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The pairwise gate `g(M)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Gate {
    /// `sigmoid((b - M) / tau)`, differentiable (the paper's default).
    Soft,
    /// `1 if M < b else 0` (the paper's "Hard Margin Cringe").
    Hard,
    /// `1`: Binary Cringe on pairs.
    None,
}

/// How a sequence's token log-probabilities are reduced into `M`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum MarginReduction {
    /// `log p(y|x)`, the paper's definition.
    Sum,
    /// Length-normalised (divided by the response token count), an ablation.
    Mean,
}

/// Every knob of the objectives. Fields irrelevant to the chosen objective are ignored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ObjectiveConfig {
    pub name: Objective,
    /// Weight of the cringe term.
    pub alpha: f64,
    /// Gate bias `b`.
    pub b: f64,
    /// Gate temperature `tau`.
    pub tau: f64,
    /// Number of candidate tokens the positive token is drawn from.
    pub cringe_k: usize,
    pub gate: Gate,
    pub margin_reduction: MarginReduction,
    /// Treat `g` as a constant weight (no gradient through the margin).
    pub gate_detach: bool,
    /// No gradient into the sampled positive logit `s+`.
    pub cringe_detach_positive: bool,
    /// Leave the tokens that end a response (the tokenizer's EOS set) out of the cringe
    /// candidates: without it, wherever EOS ranks among the top `k` alternatives to a rejected
    /// token the loss raises EOS there, and a model trained on truncated (EOS-free) pairs learns
    /// to stop at once (measured in README, "A default that generalizes"). A deviation from
    /// LOSSES.md's candidate set, off unless asked for.
    pub cringe_exclude_stop: bool,
    /// Weight `lambda` of the stop guard: `lambda * mean_t -log(1 - p(stop | y_<t))` over each
    /// trained-toward response (chosen, positives), at every position whose target is not a stop
    /// id. Our responses are truncated continuations, so "do not stop here" is true at each of
    /// them; the cringe term lowers the rejected token (often the newline after a sentence) and
    /// lets EOS take its place out of domain, where nothing holds it down (README, "A default that
    /// generalizes"). 0 = off, LOSSES.md's loss; a deviation from it otherwise.
    pub stop_unlikelihood: f64,
    /// DPO's inverse temperature.
    pub beta: f64,
}

impl Default for ObjectiveConfig {
    fn default() -> Self {
        ObjectiveConfig {
            name: Objective::PairwiseCringe,
            alpha: 0.01,
            b: 0.0,
            tau: 1.0,
            cringe_k: 5,
            gate: Gate::Soft,
            margin_reduction: MarginReduction::Sum,
            gate_detach: false,
            cringe_detach_positive: false,
            cringe_exclude_stop: false,
            stop_unlikelihood: 0.0,
            beta: 0.1,
        }
    }
}

impl ObjectiveConfig {
    pub fn new(name: Objective) -> Self {
        ObjectiveConfig {
            name,
            ..Default::default()
        }
    }

    /// Reject settings that would make the loss meaningless.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.name.uses_cringe() && self.cringe_k == 0 {
            anyhow::bail!("objective.cringe_k must be at least 1");
        }
        if self.name == Objective::PairwiseCringe
            && self.gate == Gate::Soft
            && self.tau.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater)
        {
            anyhow::bail!(
                "objective.tau must be positive for the soft gate (got {})",
                self.tau
            );
        }
        if self.name == Objective::Dpo
            && self.beta.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater)
        {
            anyhow::bail!("objective.beta must be positive (got {})", self.beta);
        }
        if !(self.stop_unlikelihood >= 0.0 && self.stop_unlikelihood.is_finite()) {
            anyhow::bail!(
                "objective.stop_unlikelihood must be a finite weight >= 0 (got {})",
                self.stop_unlikelihood
            );
        }
        if self.stop_unlikelihood > 0.0 && matches!(self.name, Objective::Dpo | Objective::Reward) {
            anyhow::bail!(
                "objective.stop_unlikelihood guards the responses trained toward with cross-entropy \
                 (sft, binary-cringe, pairwise-cringe); {:?} has none",
                self.name
            );
        }
        for (key, v) in [
            ("alpha", self.alpha),
            ("b", self.b),
            ("tau", self.tau),
            ("beta", self.beta),
        ] {
            if !v.is_finite() {
                anyhow::bail!("objective.{key} must be finite (got {v})");
            }
        }
        Ok(())
    }
}
