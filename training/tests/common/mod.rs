//! Fixture helpers shared by the model tests: tiny model folders from `exports::init` and tensor
//! comparisons that report where two results differ.
#![allow(dead_code)] // each test binary uses a different subset

use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use exports::init::{init, InitConfig};
use exports::{Head, ModelType};
use tch::{Device, Kind, Tensor};
use training::weights::load_model;
use training::Model;

/// libtorch has one global generator (`manual_seed`), shared by every test in a binary. A test
/// whose result depends on its draws (batches from `randint`, adapter dropout masks) holds this
/// turn for its whole body, so a test running in parallel cannot reseed or draw in between.
pub fn torch_rng_turn() -> MutexGuard<'static, ()> {
    static TORCH_RNG: Mutex<()> = Mutex::new(());
    TORCH_RNG.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn model_type(arch: &str) -> ModelType {
    match arch {
        "llama" => ModelType::Llama,
        "mistral" => ModelType::Mistral,
        "qwen2" => ModelType::Qwen2,
        "gpt2" => ModelType::Gpt2,
        other => panic!("unknown arch `{other}` in a fixture"),
    }
}

/// Write a tiny model folder into `dir` and load it on the CPU.
pub fn tiny(dir: &Path, cfg: &InitConfig) -> (tch::nn::VarStore, Model) {
    init(cfg, dir).expect("exports init writes a tiny model");
    load_model(dir, Device::Cpu, cfg.head).expect("a tiny model folder loads")
}

pub fn tiny_cfg(ty: ModelType, seed: u64, head: Head) -> InitConfig {
    let mut c = InitConfig::tiny(ty, seed);
    c.head = head;
    c
}

pub fn i64_tensor(values: &[i64], shape: &[i64]) -> Tensor {
    Tensor::from_slice(values).view(shape)
}

/// Max |a - b| over positions where `keep` (broadcastable to a's shape) is nonzero.
pub fn max_abs_diff_where(a: &Tensor, b: &Tensor, keep: &Tensor) -> f64 {
    let keep = keep.to_kind(Kind::Float);
    ((a.to_kind(Kind::Double) - b.to_kind(Kind::Double)).abs() * keep.to_kind(Kind::Double))
        .max()
        .double_value(&[])
}

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size(), "shapes differ");
    (a.to_kind(Kind::Double) - b.to_kind(Kind::Double))
        .abs()
        .max()
        .double_value(&[])
}

/// A checkpoint tensor as a libtorch tensor of its own dtype (f32 or i64 fixtures).
pub fn fixture_tensor(ckpt: &exports::Checkpoint, name: &str) -> Tensor {
    let t = ckpt.get(name).unwrap_or_else(|e| panic!("{e}"));
    let dims: Vec<i64> = t.shape.iter().map(|&d| d as i64).collect();
    let kind = match t.dtype {
        exports::DType::F32 => Kind::Float,
        exports::DType::I64 => Kind::Int64,
        other => panic!("fixture tensor `{name}` has dtype {other:?}"),
    };
    Tensor::from_data_size(&t.data, &dims, kind)
}
