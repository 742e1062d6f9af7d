//! LoRA adapters on the Llama family's projections, computed as PEFT's `lora.Linear` does:
//! `y = x Wᵀ (+ b) + scaling · B(A(dropout(x)))`, `A` `[r, in]`, `B` `[out, r]`, scaling
//! `alpha / r` (`alpha / √r` with rsLoRA). `A` starts as PEFT initialises it (kaiming-uniform
//! with `a = √5`, i.e. uniform(±1/√in), or normal with std `1/r`), drawn from a ChaCha8 stream of
//! the run's seed so every run starts alike; `B` starts at zero, so the adapted model starts as the
//! base.
//!
//! All adapters of a model share one [`LoraSwitch`]: adapters off gives the base model (DPO's
//! reference without a second copy), and dropout only acts while training.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{bail, Result};
use exports::lora::{LoraInit, DEFAULT_TARGETS};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tch::Tensor;

/// `[lora]` settings of `training fit`; `r = 0` trains the whole model instead.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoraConfig {
    /// Rank; 0 disables LoRA (full fine-tuning).
    pub r: usize,
    /// `lora_alpha` (PEFT's default 8); the update is scaled by `alpha / r`.
    pub alpha: f64,
    /// Dropout on the adapter's input while training (PEFT's `lora_dropout`).
    pub dropout: f64,
    /// Projections that get adapters (`q_proj`, `k_proj`, `v_proj`, `o_proj`, `gate_proj`,
    /// `up_proj`, `down_proj`).
    pub targets: Vec<String>,
    pub init: LoraInit,
    /// rsLoRA: scale by `alpha / √r`.
    pub rslora: bool,
}

impl Default for LoraConfig {
    fn default() -> Self {
        LoraConfig {
            r: 0,
            alpha: 8.0,
            dropout: 0.0,
            targets: DEFAULT_TARGETS.iter().map(|s| s.to_string()).collect(),
            init: LoraInit::Kaiming,
            rslora: false,
        }
    }
}

impl LoraConfig {
    pub fn enabled(&self) -> bool {
        self.r > 0
    }

    pub fn scaling(&self) -> f64 {
        if self.rslora {
            self.alpha / (self.r as f64).sqrt()
        } else {
            self.alpha / self.r as f64
        }
    }

    pub fn validate(&self) -> Result<()> {
        if !self.enabled() {
            return Ok(());
        }
        if !self.alpha.is_finite() {
            bail!("lora alpha must be finite (got {})", self.alpha);
        }
        if !(0.0..1.0).contains(&self.dropout) {
            bail!("lora dropout must lie in [0, 1) (got {})", self.dropout);
        }
        if self.targets.is_empty() {
            bail!(
                "lora targets is empty: name at least one of {}",
                DEFAULT_TARGETS.join(", ")
            );
        }
        for t in &self.targets {
            if !DEFAULT_TARGETS.contains(&t.as_str()) {
                bail!(
                    "lora target `{t}` is not a projection of this model family; choose among {}",
                    DEFAULT_TARGETS.join(", ")
                );
            }
        }
        Ok(())
    }

    /// The settings an adapter folder was trained with.
    pub fn from_adapter(c: &exports::lora::AdapterConfig) -> Self {
        LoraConfig {
            r: c.r,
            alpha: c.lora_alpha,
            dropout: c.lora_dropout,
            targets: c.target_modules.clone(),
            init: c.init,
            rslora: c.use_rslora,
        }
    }
}

/// Shared by every adapter of a model.
#[derive(Debug)]
pub(crate) struct LoraSwitch {
    enabled: AtomicBool,
    training: AtomicBool,
    dropout: f64,
}

impl LoraSwitch {
    pub fn new(dropout: f64) -> Arc<Self> {
        Arc::new(LoraSwitch {
            enabled: AtomicBool::new(true),
            training: AtomicBool::new(false),
            dropout,
        })
    }

    pub fn set_enabled(&self, on: bool) {
        self.enabled.store(on, Ordering::Relaxed);
    }

    pub fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    pub fn set_training(&self, on: bool) {
        self.training.store(on, Ordering::Relaxed);
    }
}

/// One adapter: `A` `[r, in]`, `B` `[out, r]`.
pub(crate) struct Lora {
    pub a: Tensor,
    pub b: Tensor,
    pub scaling: f64,
    pub switch: Arc<LoraSwitch>,
}

impl Lora {
    /// `scaling · B(A(dropout(x)))`, or `None` while adapters are off.
    pub fn delta(&self, x: &Tensor) -> Option<Tensor> {
        if !self.switch.enabled() {
            return None;
        }
        let p = self.switch.dropout;
        let x = if p > 0.0 && self.switch.training.load(Ordering::Relaxed) {
            x.dropout(p, true)
        } else {
            x.shallow_clone()
        };
        Some(
            x.linear(&self.a, None::<Tensor>)
                .linear(&self.b, None::<Tensor>)
                * self.scaling,
        )
    }
}

/// The starting values of `A` `[r, in]` for the adapter number `index` of a run with `seed`.
pub(crate) fn init_a(init: LoraInit, r: usize, inp: usize, seed: u64, index: u64) -> Vec<f32> {
    let mut rng =
        ChaCha8Rng::seed_from_u64(seed ^ 0x10_4A00 ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let n = r * inp;
    match init {
        LoraInit::Kaiming => {
            // kaiming_uniform_(a=√5): gain √(2/(1+5)), bound gain·√(3/fan_in) = 1/√fan_in.
            let bound = 1.0 / (inp as f64).sqrt();
            (0..n)
                .map(|_| ((rng.random::<f64>() * 2.0 - 1.0) * bound) as f32)
                .collect()
        }
        LoraInit::Gaussian => {
            let std = 1.0 / r as f64;
            (0..n)
                .map(|_| {
                    let u1: f64 = 1.0 - rng.random::<f64>();
                    let u2: f64 = rng.random::<f64>();
                    (std * (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
                })
                .collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_has_peft_spread() {
        let k = init_a(LoraInit::Kaiming, 16, 576, 0, 3);
        let bound = 1.0 / 24.0;
        assert!(k.iter().all(|&v| (v as f64).abs() <= bound));
        let var = k.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / k.len() as f64;
        // uniform(±b) has variance b²/3.
        assert!((var / (bound * bound / 3.0) - 1.0).abs() < 0.05, "{var}");
        let g = init_a(LoraInit::Gaussian, 8, 4096, 0, 3);
        let var = g.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / g.len() as f64;
        assert!((var.sqrt() * 8.0 - 1.0).abs() < 0.02, "{}", var.sqrt());
        assert_ne!(init_a(LoraInit::Kaiming, 16, 576, 0, 4), k);
        assert_eq!(init_a(LoraInit::Kaiming, 16, 576, 0, 3), k);
    }
}
