//! Mixed precision: `--precision fp32|bf16` and libtorch's autocast on CPU as well as CUDA.
//!
//! Under autocast, libtorch runs the matrix products (`linear`, `matmul`, SDPA, ...) in bfloat16
//! (on CUDA too, where libtorch's default would be float16, which needs loss scaling) and keeps
//! everything else in fp32: the weights stay fp32 (their bf16 copies are cached for the span of
//! one autocast region), the residual stream, the norms' statistics, the log-sum-exp and every
//! loss reduction stay fp32, and so do the gradients the optimizer sees.

use serde::{Deserialize, Serialize};
use tch::Device;

/// Numeric precision of the forward and backward passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Precision {
    /// bf16 autocast on CUDA, fp32 on CPU (the behaviour before `--precision` existed).
    #[default]
    Auto,
    /// fp32 everywhere.
    Fp32,
    /// Autocast on the run's device: bf16 matrix products, fp32 weights and reductions.
    Bf16,
}

impl Precision {
    /// Whether the passes run under autocast on `device`.
    pub fn autocast(self, device: Device) -> bool {
        match self {
            Precision::Auto => device.is_cuda(),
            Precision::Fp32 => false,
            Precision::Bf16 => true,
        }
    }
}

extern "C" {
    fn pco_autocast_is_enabled(cuda: i32) -> i32;
    fn pco_autocast_enter(cuda: i32, enabled: i32) -> i32;
    fn pco_autocast_exit(cuda: i32, prev: i32) -> i32;
}

fn device_code(device: Device) -> i32 {
    i32::from(device.is_cuda())
}

/// Whether autocast is on for `device`'s type right now.
pub fn is_enabled(device: Device) -> bool {
    // SAFETY: a plain C function of csrc/autocast.cpp; it catches libtorch's exceptions.
    match unsafe { pco_autocast_is_enabled(device_code(device)) } {
        -1 => panic!("libtorch failed to report the autocast state"),
        v => v != 0,
    }
}

/// Leaves the region on drop, also when `f` panics.
struct Region {
    cuda: i32,
    prev: i32,
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: as in `is_enabled`.
        let rc = unsafe { pco_autocast_exit(self.cuda, self.prev) };
        if rc != 0 && !std::thread::panicking() {
            panic!("libtorch failed to leave an autocast region");
        }
    }
}

/// Run `f` with autocast switched on (`enabled`) or off for `device`'s type, as
/// `torch.autocast(device_type, dtype=torch.bfloat16, enabled=...)` does.
pub fn autocast<T>(device: Device, enabled: bool, f: impl FnOnce() -> T) -> T {
    let cuda = device_code(device);
    // SAFETY: as in `is_enabled`.
    let prev = unsafe { pco_autocast_enter(cuda, i32::from(enabled)) };
    if prev < 0 {
        panic!("libtorch failed to enter an autocast region");
    }
    let _region = Region { cuda, prev };
    f()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Kind, Tensor};

    /// On CPU, a matrix product under autocast is computed in bf16: the result's kind, and its
    /// value equal to the product of the bf16-rounded inputs (accumulated in fp32, rounded once
    /// to bf16), not the fp32 product; elementwise ops and the state outside stay fp32.
    #[test]
    fn cpu_autocast_runs_matmuls_in_bf16_and_restores_the_state() {
        let a = Tensor::from_slice(&[1.001f32, 2.003, -0.5, 0.25]).view([2, 2]);
        let b = Tensor::from_slice(&[0.3337f32, -1.25, 4.0, 0.1]).view([2, 2]);
        assert!(!is_enabled(Device::Cpu));
        let (mm, add) = autocast(Device::Cpu, true, || {
            assert!(is_enabled(Device::Cpu));
            // Nested regions restore the outer state.
            autocast(Device::Cpu, false, || assert!(!is_enabled(Device::Cpu)));
            assert!(is_enabled(Device::Cpu));
            (a.matmul(&b), &a + &b)
        });
        assert!(!is_enabled(Device::Cpu));
        assert_eq!(mm.kind(), Kind::BFloat16);
        assert_eq!(add.kind(), Kind::Float);
        let bf = |t: &Tensor| t.to_kind(Kind::BFloat16).to_kind(Kind::Float);
        let want = bf(&bf(&a).matmul(&bf(&b)));
        assert!(mm.to_kind(Kind::Float).equal(&want), "{mm} vs {want}");
        assert!(!mm.to_kind(Kind::Float).equal(&a.matmul(&b)));
        let plain = autocast(Device::Cpu, false, || a.matmul(&b));
        assert_eq!(plain.kind(), Kind::Float);
    }

    #[test]
    fn precision_auto_is_bf16_on_cuda_only() {
        assert!(!Precision::Auto.autocast(Device::Cpu));
        assert!(Precision::Auto.autocast(Device::Cuda(0)));
        assert!(Precision::Bf16.autocast(Device::Cpu));
        assert!(!Precision::Fp32.autocast(Device::Cuda(0)));
    }
}
