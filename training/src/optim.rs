//! AdamW (decoupled weight decay, as `torch.optim.AdamW`), the learning-rate schedule and gradient
//! clipping, implemented over the model's parameter tensors so that the moments can be saved with
//! a checkpoint and a resumed run continues bit for bit (tch's `nn::Optimizer` hides its state).

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// Shape of the learning rate after warm-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Schedule {
    Constant,
    Linear,
    Cosine,
}

/// Optimizer and schedule settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptimConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Decoupled weight decay on matrices and embeddings (never on biases and norms).
    pub weight_decay: f64,
    pub warmup_steps: u64,
    pub schedule: Schedule,
    /// Clip the global gradient norm to this value; 0 disables clipping.
    pub grad_clip: f64,
}

impl Default for OptimConfig {
    fn default() -> Self {
        // The paper's AdamW betas (0.9, 0.98) with a small-model learning rate.
        OptimConfig {
            lr: 1e-5,
            beta1: 0.9,
            beta2: 0.98,
            eps: 1e-8,
            weight_decay: 0.0,
            warmup_steps: 0,
            schedule: Schedule::Linear,
            grad_clip: 1.0,
        }
    }
}

impl OptimConfig {
    pub fn validate(&self) -> Result<()> {
        if !(self.lr >= 0.0 && self.lr.is_finite()) {
            bail!("lr must be a finite non-negative number (got {})", self.lr);
        }
        for (k, b) in [("beta1", self.beta1), ("beta2", self.beta2)] {
            if !(0.0..1.0).contains(&b) {
                bail!("{k} must lie in [0, 1) (got {b})");
            }
        }
        let positive = |x: f64| x.partial_cmp(&0.0) == Some(std::cmp::Ordering::Greater);
        let non_negative = |x: f64| {
            x.partial_cmp(&0.0)
                .is_some_and(|o| o != std::cmp::Ordering::Less)
        };
        if !positive(self.eps) || !non_negative(self.weight_decay) || !non_negative(self.grad_clip)
        {
            bail!("eps must be positive, weight_decay and grad_clip non-negative");
        }
        Ok(())
    }

    /// Learning rate of the optimizer step with 0-based index `step` out of `total`.
    pub fn lr_at(&self, step: u64, total: u64) -> f64 {
        let warm = self.warmup_steps;
        if step < warm {
            return self.lr * (step + 1) as f64 / warm as f64;
        }
        let span = total.saturating_sub(warm).max(1) as f64;
        let progress = ((step - warm) as f64 / span).min(1.0);
        match self.schedule {
            Schedule::Constant => self.lr,
            Schedule::Linear => self.lr * (1.0 - progress),
            Schedule::Cosine => self.lr * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()),
        }
    }
}

struct Slot {
    name: String,
    param: Tensor,
    decay: bool,
    m: Tensor,
    v: Tensor,
}

/// AdamW over named parameters.
pub struct AdamW {
    slots: Vec<Slot>,
    /// Optimizer steps taken (the bias corrections use `step`).
    pub step: u64,
}

impl AdamW {
    /// `params`: `(name, tensor)`; tensors of rank < 2 (biases and norms) get no weight decay.
    pub fn new(params: Vec<(String, Tensor)>) -> Self {
        let slots = params
            .into_iter()
            .map(|(name, param)| Slot {
                decay: param.dim() >= 2,
                m: param.zeros_like().detach(),
                v: param.zeros_like().detach(),
                name,
                param,
            })
            .collect();
        AdamW { slots, step: 0 }
    }

    pub fn zero_grad(&mut self) {
        for s in &mut self.slots {
            s.param.zero_grad();
        }
    }

    /// Global L2 norm of the gradients; with `max > 0`, scale them so the norm is at most `max`.
    /// Returns the norm before clipping.
    pub fn clip_grad_norm(&mut self, max: f64) -> f64 {
        let _guard = tch::no_grad_guard();
        let grads: Vec<Tensor> = self
            .slots
            .iter()
            .map(|s| s.param.grad())
            .filter(Tensor::defined)
            .collect();
        if grads.is_empty() {
            return 0.0;
        }
        let sq: Vec<Tensor> = grads
            .iter()
            .map(|g| g.to_kind(Kind::Double).square().sum(Kind::Double))
            .collect();
        let norm = Tensor::stack(&sq, 0)
            .sum(Kind::Double)
            .sqrt()
            .double_value(&[]);
        if max > 0.0 && norm > max {
            let scale = max / (norm + 1e-6);
            for mut g in grads {
                let _ = g.g_mul_scalar_(scale);
            }
        }
        norm
    }

    /// One AdamW update with learning rate `lr`.
    pub fn apply(&mut self, lr: f64, cfg: &OptimConfig) {
        let _guard = tch::no_grad_guard();
        self.step += 1;
        let t = self.step as i32;
        let bc1 = 1.0 - cfg.beta1.powi(t);
        let bc2 = 1.0 - cfg.beta2.powi(t);
        for s in &mut self.slots {
            let g = s.param.grad();
            if !g.defined() {
                continue;
            }
            if s.decay && cfg.weight_decay > 0.0 {
                let _ = s.param.g_mul_scalar_(1.0 - lr * cfg.weight_decay);
            }
            s.m = &s.m * cfg.beta1 + &g * (1.0 - cfg.beta1);
            s.v = &s.v * cfg.beta2 + g.square() * (1.0 - cfg.beta2);
            let denom = (&s.v / bc2).sqrt() + cfg.eps;
            let update = &s.m / denom * (lr / bc1);
            let _ = s.param.g_sub_(&update);
        }
    }

    /// Write the moments to a safetensors file (`m.<name>`, `v.<name>`).
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut named = Vec::with_capacity(2 * self.slots.len());
        for s in &self.slots {
            named.push((format!("m.{}", s.name), s.m.to_device(tch::Device::Cpu)));
            named.push((format!("v.{}", s.name), s.v.to_device(tch::Device::Cpu)));
        }
        Tensor::write_safetensors(&named, path)
            .with_context(|| format!("writing optimizer state {}", path.display()))
    }

    /// Read moments written by [`AdamW::save`]; every parameter must be present with its shape.
    pub fn load(&mut self, path: &Path, step: u64) -> Result<()> {
        let tensors = Tensor::read_safetensors(path)
            .with_context(|| format!("reading optimizer state {}", path.display()))?;
        let map: std::collections::HashMap<String, Tensor> = tensors.into_iter().collect();
        for s in &mut self.slots {
            for (key, dst) in [("m", &mut s.m), ("v", &mut s.v)] {
                let name = format!("{key}.{}", s.name);
                let t = map
                    .get(&name)
                    .with_context(|| format!("{}: no tensor `{name}`", path.display()))?;
                if t.size() != s.param.size() {
                    bail!(
                        "{}: `{name}` has shape {:?}, the parameter {:?}",
                        path.display(),
                        t.size(),
                        s.param.size()
                    );
                }
                *dst = t.to_kind(s.param.kind()).to_device(s.param.device());
            }
        }
        if map.len() != 2 * self.slots.len() {
            bail!(
                "{}: {} tensors for {} parameters",
                path.display(),
                map.len(),
                self.slots.len()
            );
        }
        self.step = step;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules() {
        let c = OptimConfig {
            lr: 1.0,
            warmup_steps: 2,
            ..Default::default()
        };
        assert_eq!(c.lr_at(0, 10), 0.5);
        assert_eq!(c.lr_at(1, 10), 1.0);
        assert_eq!(c.lr_at(2, 10), 1.0);
        assert!((c.lr_at(6, 10) - 0.5).abs() < 1e-12);
        let cos = OptimConfig {
            schedule: Schedule::Cosine,
            ..c
        };
        assert!((cos.lr_at(6, 10) - 0.5).abs() < 1e-12);
        assert!(
            (cos.lr_at(4, 10) - 0.5 * (1.0 + (std::f64::consts::PI / 4.0).cos())).abs() < 1e-12
        );
    }

    // Equivalent python code:
    //   p = torch.tensor([[1., -2.], [0.5, 3.]], requires_grad=True); b = torch.tensor([0.1, -0.2], requires_grad=True)
    //   opt = torch.optim.AdamW([{"params": [p], "weight_decay": 0.1}, {"params": [b], "weight_decay": 0.0}],
    //                           lr=0.01, betas=(0.9, 0.98), eps=1e-8)
    //   for _ in range(3): opt.zero_grad(); ((p ** 2).sum() + (b * p[0]).sum() * 3).backward(); opt.step()
    #[test]
    fn adamw_matches_torch() {
        let p = Tensor::from_slice(&[1.0f32, -2.0, 0.5, 3.0])
            .view([2, 2])
            .set_requires_grad(true);
        let b = Tensor::from_slice(&[0.1f32, -0.2]).set_requires_grad(true);
        let mut opt = AdamW::new(vec![
            ("p".into(), p.shallow_clone()),
            ("b".into(), b.shallow_clone()),
        ]);
        let cfg = OptimConfig {
            lr: 0.01,
            weight_decay: 0.1,
            ..Default::default()
        };
        for _ in 0..3 {
            opt.zero_grad();
            ((&p * &p).sum(Kind::Float) + (&b * p.get(0)).sum(Kind::Float) * 3.0).backward();
            opt.apply(0.01, &cfg);
        }
        let got = Vec::<f32>::try_from(p.view([-1])).unwrap();
        let want = [0.967_053_5_f32, -1.964_045_9, 0.468_550_26, 2.961_042_6];
        let gotb = Vec::<f32>::try_from(&b).unwrap();
        let wantb = [0.070_009_22_f32, -0.170_004_86];
        for (g, w) in got.iter().chain(&gotb).zip(want.iter().chain(&wantb)) {
            assert!((g - w).abs() < 1e-6, "{got:?} {gotb:?}");
        }
    }
}
