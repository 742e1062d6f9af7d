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

/// One moment tensor as a safetensors view (see [`AdamW::save`]).
struct Moment {
    t: Tensor,
    dtype: safetensors::Dtype,
    shape: Vec<usize>,
    bytes: usize,
}

impl Moment {
    fn new(t: &Tensor) -> Result<Moment> {
        let dtype = match t.kind() {
            Kind::Float => safetensors::Dtype::F32,
            Kind::Double => safetensors::Dtype::F64,
            Kind::BFloat16 => safetensors::Dtype::BF16,
            Kind::Half => safetensors::Dtype::F16,
            k => bail!("optimizer state of kind {k:?} cannot be saved"),
        };
        if !t.is_contiguous() {
            bail!("optimizer state is not contiguous; this is a bug");
        }
        Ok(Moment {
            t: t.shallow_clone(),
            dtype,
            shape: t.size().iter().map(|&d| d as usize).collect(),
            bytes: t.numel() * t.kind().elt_size_in_bytes(),
        })
    }
}

impl safetensors::View for Moment {
    fn dtype(&self) -> safetensors::Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        if self.bytes == 0 {
            return std::borrow::Cow::Borrowed(&[]);
        }
        if self.t.device() == tch::Device::Cpu {
            // SAFETY: a contiguous CPU tensor's `bytes` bytes start at its data pointer, and the
            // tensor (held by `self`) is not written while the file is being serialized.
            let p = self.t.data_ptr() as *const u8;
            return std::borrow::Cow::Borrowed(unsafe {
                std::slice::from_raw_parts(p, self.bytes)
            });
        }
        let host = self.t.to_device(tch::Device::Cpu);
        let mut out = vec![0u8; self.bytes];
        host.copy_data_u8(&mut out, self.t.numel());
        std::borrow::Cow::Owned(out)
    }
    fn data_len(&self) -> usize {
        self.bytes
    }
}

extern "C" {
    fn pco_grad_set_none(tensor: *mut std::ffi::c_void) -> i32;
    fn pco_fused_adamw(
        params: *mut *mut std::ffi::c_void,
        grads: *mut *mut std::ffi::c_void,
        ms: *mut *mut std::ffi::c_void,
        vs: *mut *mut std::ffi::c_void,
        n: i32,
        lr: f64,
        beta1: f64,
        beta2: f64,
        weight_decay: f64,
        eps: f64,
        step: f64,
    ) -> i32;
}

/// Drop `t`'s gradient (`t.grad = None`), as PyTorch's `zero_grad(set_to_none=True)` does.
///
/// Why not `zero_()`: a zeroed gradient stays allocated through the next forward pass, where the
/// activations peak (540 MB for SmolLM2-135M on top of that peak), and the next backward adds its
/// result onto the zeros instead of handing it over. Releasing the zeroed pages with `madvise`
/// (the previous form) saved the memory but not the time: each page then faulted twice as the
/// backward read and wrote it, with a TLB shoot-down per page, ~10 % of a bf16 step (`perf`).
fn drop_grad(t: &mut Tensor) {
    // SAFETY: tch's `Tensor` wraps a live `at::Tensor*`; csrc/grad.cpp resets its autograd
    // gradient and catches libtorch's exceptions.
    let rc = unsafe { pco_grad_set_none(t.as_mut_ptr().cast()) };
    assert_eq!(rc, 0, "libtorch failed to drop a gradient");
}

/// AdamW over named parameters.
///
/// The update runs in place on the parameters and moments through libtorch's fused AdamW kernel
/// (`torch.optim.AdamW(fused=True)`, csrc/adamw.cpp): one vectorized pass over each element's
/// parameter, gradient and moments, with PyTorch's arithmetic (`m += (g − m)·(1−β1)`,
/// `v = v·β2 + g²·(1−β2)`, `p −= lr/bc1 · m / (√v/√bc2 + ε)`, decay `p −= lr·wd·p` first). It
/// allocates nothing the size of a parameter, and each element's result does not depend on the
/// thread count, so a resumed run continues bit for bit.
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

    /// Drop every gradient before the next accumulation (see [`drop_grad`]). A parameter that
    /// then gets no gradient in a step is not updated in it, as in PyTorch's AdamW.
    pub fn zero_grad(&mut self) {
        for s in &mut self.slots {
            drop_grad(&mut s.param);
        }
    }

    /// Global L2 norm of the gradients; with `max > 0`, scale them so the norm is at most `max`.
    /// Returns the norm before clipping.
    ///
    /// As `torch.nn.utils.clip_grad_norm_`: the norm of each gradient in its own precision, then
    /// the norm of those norms (here in f64); nothing the size of a gradient is allocated.
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
        let norms: Vec<Tensor> = grads
            .iter()
            .map(|g| g.norm().to_kind(Kind::Double))
            .collect();
        let norm = Tensor::stack(&norms, 0).norm().double_value(&[]);
        if max > 0.0 && norm > max {
            let scale = max / (norm + 1e-6);
            for mut g in grads {
                let _ = g.g_mul_scalar_(scale);
            }
        }
        norm
    }

    /// One AdamW update with learning rate `lr`, in place (see the type's docs).
    pub fn apply(&mut self, lr: f64, cfg: &OptimConfig) {
        self.step += 1;
        // One call per group the kernel takes as one list: same weight decay, kind and device.
        let mut groups: Vec<((bool, Kind, tch::Device), Vec<usize>)> = Vec::new();
        for (i, s) in self.slots.iter().enumerate() {
            if !s.param.grad().defined() {
                continue;
            }
            let key = (
                s.decay && cfg.weight_decay > 0.0,
                s.param.kind(),
                s.param.device(),
            );
            match groups.iter_mut().find(|(k, _)| *k == key) {
                Some((_, members)) => members.push(i),
                None => groups.push((key, vec![i])),
            }
        }
        for ((decay, _, _), members) in groups {
            let grads: Vec<Tensor> = members
                .iter()
                .map(|&i| self.slots[i].param.grad())
                .collect();
            let ptrs = |f: &dyn Fn(&Slot) -> &Tensor| -> Vec<*mut std::ffi::c_void> {
                members
                    .iter()
                    .map(|&i| f(&self.slots[i]).as_ptr() as *mut std::ffi::c_void)
                    .collect()
            };
            let (mut p, mut m, mut v) = (ptrs(&|s| &s.param), ptrs(&|s| &s.m), ptrs(&|s| &s.v));
            let mut g: Vec<*mut std::ffi::c_void> = grads
                .iter()
                .map(|t| t.as_ptr() as *mut std::ffi::c_void)
                .collect();
            let wd = if decay { cfg.weight_decay } else { 0.0 };
            // SAFETY: every pointer is a live `at::Tensor*` owned by `self.slots` or `grads` for
            // the whole call; csrc/adamw.cpp catches libtorch's exceptions.
            let rc = unsafe {
                pco_fused_adamw(
                    p.as_mut_ptr(),
                    g.as_mut_ptr(),
                    m.as_mut_ptr(),
                    v.as_mut_ptr(),
                    members.len() as i32,
                    lr,
                    cfg.beta1,
                    cfg.beta2,
                    wd,
                    cfg.eps,
                    self.step as f64,
                )
            };
            match rc {
                0 => {}
                -2 => panic!(
                    "AdamW updates contiguous parameters and moments in place; this is a bug"
                ),
                _ => panic!("libtorch's fused AdamW kernel failed"),
            }
        }
    }

    /// Write the moments to a safetensors file (`m.<name>`, `v.<name>`), streamed: each moment's
    /// bytes go to the file straight from its memory (CPU) or one copy at a time (other devices).
    /// Collecting copies first, as `Tensor::write_safetensors` does, held a second AdamW state
    /// (1 GB for SmolLM2-135M) and made the end-of-run checkpoint the peak of a whole fit.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut named = Vec::with_capacity(2 * self.slots.len());
        for s in &self.slots {
            named.push((format!("m.{}", s.name), Moment::new(&s.m)?));
            named.push((format!("v.{}", s.name), Moment::new(&s.v)?));
        }
        safetensors::serialize_to_file(named, None, path)
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
                *dst = t
                    .to_kind(s.param.kind())
                    .to_device(s.param.device())
                    .contiguous();
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

    /// Every element of `t` equals `want`, checked with one reduction each way.
    fn all_equal(t: &Tensor, want: f64) -> bool {
        let d = (t - want).abs();
        d.max().double_value(&[]) == 0.0
    }

    #[test]
    fn zero_grad_drops_gradients_and_the_next_backward_starts_from_none() {
        let k = (Kind::Float, tch::Device::Cpu);
        let p = Tensor::ones([1000], k).set_requires_grad(true);
        let mut opt = AdamW::new(vec![("p".into(), p.shallow_clone())]);
        (&p * 3.0).sum(Kind::Float).backward();
        assert!(all_equal(&p.grad(), 3.0));
        opt.zero_grad();
        assert!(!p.grad().defined(), "zero_grad left a gradient");
        // The handle the optimizer holds and the model's share one gradient.
        (&p * 2.0).sum(Kind::Float).backward();
        (&p * 0.5).sum(Kind::Float).backward();
        assert!(all_equal(&p.grad(), 2.5), "accumulation after a drop");
        // A parameter without a gradient is left alone by the update (torch skips grad None).
        opt.zero_grad();
        let before = p.copy();
        opt.apply(0.1, &OptimConfig::default());
        assert!(p.equal(&before));
    }

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

    /// The update as tensor expressions in PyTorch's arithmetic (`torch.optim.AdamW`'s
    /// single-tensor form).
    fn expression_form(
        p: &mut Tensor,
        m: &mut Tensor,
        v: &mut Tensor,
        step: i32,
        lr: f64,
        c: &OptimConfig,
    ) {
        let _guard = tch::no_grad_guard();
        let g = p.grad();
        let (bc1, bc2) = (1.0 - c.beta1.powi(step), 1.0 - c.beta2.powi(step));
        if p.dim() >= 2 && c.weight_decay > 0.0 {
            let _ = p.g_mul_scalar_(1.0 - lr * c.weight_decay);
        }
        *m = &*m + (&g - &*m) * (1.0 - c.beta1);
        *v = &*v * c.beta2 + g.square() * (1.0 - c.beta2);
        let denom = v.sqrt() / bc2.sqrt() + c.eps;
        let update = &*m / denom * (lr / bc1);
        let _ = p.g_sub_(&update);
    }

    /// The gradient of a loss that varies per element and per draw (libtorch's generator) into
    /// each of `params`; the third one's comes out transposed (non-contiguous) through `t()`.
    fn random_backward(params: &[Tensor]) {
        let k = (Kind::Float, tch::Device::Cpu);
        for (i, x) in params.iter().enumerate() {
            let w = Tensor::randn(x.size(), k);
            let l = if i == 2 {
                (x.transpose(0, 1) * w.transpose(0, 1))
                    .sin()
                    .sum(Kind::Float)
            } else {
                (x * &w).sin().sum(Kind::Float)
            };
            l.backward();
        }
    }

    /// Four steps of three parameters (a large matrix, a vector, a matrix whose gradient comes out
    /// transposed) with changing gradients and learning rates, once on 1 thread and once on 2.
    /// Returns the parameters and moments after each step, and whether the moments stayed where
    /// they were allocated.
    fn run_steps(threads: i32) -> (Vec<Vec<Tensor>>, bool) {
        tch::set_num_threads(threads);
        tch::manual_seed(3);
        let k = (Kind::Float, tch::Device::Cpu);
        let shapes: [&[i64]; 3] = [&[3, 200_003], &[17], &[6, 9]];
        let params: Vec<Tensor> = shapes
            .iter()
            .map(|s| Tensor::randn(*s, k).set_requires_grad(true))
            .collect();
        let mut opt = AdamW::new(
            params
                .iter()
                .enumerate()
                .map(|(i, t)| (format!("t{i}"), t.shallow_clone()))
                .collect(),
        );
        let cfg = OptimConfig {
            weight_decay: 0.05,
            ..Default::default()
        };
        let ptrs: Vec<usize> = opt.slots.iter().map(|s| s.m.data_ptr() as usize).collect();
        let mut after = Vec::new();
        for step in 1..=4 {
            random_backward(&params);
            opt.apply(1e-3 / step as f64, &cfg);
            opt.zero_grad();
            let mut state: Vec<Tensor> = params.iter().map(|p| p.detach().copy()).collect();
            for s in &opt.slots {
                state.push(s.m.copy());
                state.push(s.v.copy());
            }
            after.push(state);
        }
        let same = ptrs
            == opt
                .slots
                .iter()
                .map(|s| s.m.data_ptr() as usize)
                .collect::<Vec<_>>();
        (after, same)
    }

    /// The fused update equals PyTorch's arithmetic as tensor expressions to float rounding, for
    /// matrices (decayed) and vectors (not), a non-contiguous gradient and a parameter larger than
    /// a thread's share; it is bit for bit the same on 1 and 2 threads (so a resumed run continues
    /// exactly on another machine); and it updates the moments where they were allocated.
    #[test]
    fn fused_update_equals_the_expression_form_on_any_thread_count() {
        let (two, in_place) = run_steps(2);
        assert!(in_place, "the moments were reallocated");
        let (one, _) = run_steps(1);
        tch::set_num_threads(2);
        for (a, b) in one.iter().flatten().zip(two.iter().flatten()) {
            assert!(a.equal(b), "1 and 2 threads differ");
        }

        tch::manual_seed(3);
        let k = (Kind::Float, tch::Device::Cpu);
        let shapes: [&[i64]; 3] = [&[3, 200_003], &[17], &[6, 9]];
        let mut refs: Vec<Tensor> = shapes
            .iter()
            .map(|s| Tensor::randn(*s, k).set_requires_grad(true))
            .collect();
        let mut moments: Vec<(Tensor, Tensor)> = refs
            .iter()
            .map(|t| (t.zeros_like(), t.zeros_like()))
            .collect();
        let cfg = OptimConfig {
            weight_decay: 0.05,
            ..Default::default()
        };
        for (step, ours) in (1..=4).zip(&two) {
            random_backward(&refs);
            for (r, (m, v)) in refs.iter_mut().zip(moments.iter_mut()) {
                expression_form(r, m, v, step, 1e-3 / step as f64, &cfg);
                r.zero_grad();
            }
            // Parameters first, then each slot's m and v, as `run_steps` lists them.
            let want: Vec<&Tensor> = refs
                .iter()
                .chain(moments.iter().flat_map(|(m, v)| [m, v]))
                .collect();
            assert_eq!(ours.len(), want.len());
            for (o, w) in ours.iter().zip(want) {
                let diff = (o - w).abs().max().double_value(&[]);
                let scale = w.abs().max().double_value(&[]).max(1e-30);
                assert!(
                    diff <= 1e-6 * scale,
                    "step {step}: off by {diff} (scale {scale})"
                );
            }
        }
    }
}
