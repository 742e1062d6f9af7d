//! Shared fixtures for the end-to-end tests: the three binaries, tiny random model folders, and
//! one ONNX Runtime environment per test process.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use exports::init::{init, InitConfig};
use exports::{Head, ModelType};

/// Path of a workspace binary (`exports`, `engine`, `training`) built by the same cargo profile as
/// this test. `cargo test --workspace` builds them because each of their packages has integration tests.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>");
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: run the tests with `cargo test --workspace` (which builds every binary)",
        path.display()
    );
    path
}

/// Run a binary and return its output; panics with stderr when it fails.
pub fn run_ok(name: &str, args: &[&str]) -> Output {
    let out = Command::new(bin(name)).args(args).output().expect("spawn");
    assert!(
        out.status.success(),
        "{name} {} failed:\n{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Run a binary that must fail; returns its stderr.
pub fn run_err(name: &str, args: &[&str]) -> String {
    let out = Command::new(bin(name)).args(args).output().expect("spawn");
    assert!(
        !out.status.success(),
        "{name} {} unexpectedly succeeded",
        args.join(" ")
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The tiny model variants the parity tests cover.
#[derive(Debug, Clone, Copy)]
pub struct Variant {
    pub name: &'static str,
    pub model_type: ModelType,
    pub kv_heads: usize,
    pub tied: bool,
    pub attention_bias: bool,
}

pub const VARIANTS: &[Variant] = &[
    Variant {
        name: "llama-gqa-tied",
        model_type: ModelType::Llama,
        kv_heads: 2,
        tied: true,
        attention_bias: false,
    },
    Variant {
        name: "llama-bias-untied",
        model_type: ModelType::Llama,
        kv_heads: 4,
        tied: false,
        attention_bias: true,
    },
    Variant {
        name: "qwen2-gqa",
        model_type: ModelType::Qwen2,
        kv_heads: 1,
        tied: false,
        attention_bias: false,
    },
    Variant {
        name: "gpt2",
        model_type: ModelType::Gpt2,
        kv_heads: 4,
        tied: true,
        attention_bias: false,
    },
];

/// Write a tiny random model folder. Head dim 16 (hidden 64, 4 heads): ONNX Runtime's CPU
/// GroupQueryAttention kernel needs a head size that is a multiple of 16.
pub fn tiny_model(dir: &Path, v: Variant, head: Head, seed: u64) -> exports::ModelConfig {
    let mut cfg = InitConfig::tiny(v.model_type, seed);
    cfg.hidden_size = 64;
    cfg.heads = 4;
    cfg.kv_heads = v.kv_heads;
    cfg.tied = v.tied;
    cfg.attention_bias = v.attention_bias;
    cfg.head = head;
    init(&cfg, dir).expect("init tiny model")
}

/// The process's ONNX Runtime (the library allows one environment per process).
pub fn runtime() -> &'static engine::runtime::Runtime {
    engine::runtime::Runtime::shared(None).expect("ONNX Runtime (run scripts/setup.sh)")
}

/// The imported SmolLM2 folder, or `None` with a message saying how to get it.
pub fn smollm2() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/smollm2-135m-instruct");
    if dir.join("model.safetensors").is_file() {
        Some(dir)
    } else {
        eprintln!(
            "skipped: {} is missing; run scripts/setup.sh to import SmolLM2",
            dir.display()
        );
        None
    }
}

/// Largest |a − b| over positions where `mask` is 1; `a` and `b` are `[B, T, V]`, mask `[B, T]`.
pub fn max_masked_diff(a: &[f32], b: &[f32], mask: &[i64], vocab: usize) -> f32 {
    assert_eq!(a.len(), b.len());
    let mut worst = 0f32;
    for (pos, &m) in mask.iter().enumerate() {
        if m == 0 {
            continue;
        }
        for v in 0..vocab {
            worst = worst.max((a[pos * vocab + v] - b[pos * vocab + v]).abs());
        }
    }
    worst
}
