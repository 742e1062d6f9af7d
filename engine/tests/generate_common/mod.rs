//! Shared fixtures of the `engine generate` tests: tiny random Llama models exported in both ONNX
//! flavors, prompt files, and a runner.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use engine::generate::backend::{Backend, BackendConfig};
use engine::generate::device::MoverChoice;
use engine::generate::{self, GenerateConfig};
use engine::runtime::Runtime;
use engine::sampling::Decoding;
use engine::session::{Device, SessionOptions};
use exports::init::{init, InitConfig};
use exports::onnx::{export, Flavor, OnnxExportConfig};
use exports::records::{GenerationRecord, Message, PromptRecord};
use exports::ModelType;

pub struct Models {
    pub dir: tempfile::TempDir,
    pub hf: PathBuf,
    /// GroupQueryAttention graph, last-position logits.
    pub ort: PathBuf,
    /// Standard-op graph with `position_ids`, logits at every position.
    pub portable: PathBuf,
}

/// A tiny Llama (head_dim 16, as ONNX Runtime's CPU GroupQueryAttention needs a multiple of 16).
pub fn models(seed: u64) -> Models {
    let dir = tempfile::tempdir().unwrap();
    let hf = dir.path().join("hf");
    let mut cfg = InitConfig::tiny(ModelType::Llama, seed);
    cfg.hidden_size = 64;
    cfg.heads = 4;
    cfg.kv_heads = 2;
    cfg.intermediate_size = 96;
    // Untied output weights: with tied ones a random model mostly repeats its input token.
    cfg.tied = false;
    init(&cfg, &hf).unwrap();
    let ort = dir.path().join("ort");
    let mut e = OnnxExportConfig::new(&hf, &ort);
    e.flavor = Some(Flavor::Ort);
    e.last_logits_only = true;
    export(&e).unwrap();
    let portable = dir.path().join("portable");
    let mut e = OnnxExportConfig::new(&hf, &portable);
    e.flavor = Some(Flavor::Portable);
    export(&e).unwrap();
    Models {
        dir,
        hf,
        ort,
        portable,
    }
}

/// The ort graph of `m` with int8 projections and LM head (`exports onnx --weights int8`).
pub fn int8_export(m: &Models) -> PathBuf {
    let out = m.dir.path().join("ort-int8");
    let mut e = OnnxExportConfig::new(&m.hf, &out);
    e.flavor = Some(Flavor::Ort);
    e.last_logits_only = true;
    e.weights = exports::onnx::WeightFormat::Int8;
    export(&e).unwrap();
    out
}

/// The int8 graph of `m` with an int8 KV cache too, its scales measured on the fp32 ort graph
/// over `prompts` (`engine kv-scales`, then `exports onnx --kv-cache int8`): decode attention
/// by the engine's own operator, the default.
pub fn int8_kv8_export(m: &Models, prompts: &Path) -> PathBuf {
    int8_kv8_export_with(m, prompts, exports::onnx::KvAttention::Engine)
}

/// [`int8_kv8_export`] with the decode graph's attention named (`--kv-attention`).
pub fn int8_kv8_export_with(
    m: &Models,
    prompts: &Path,
    attention: exports::onnx::KvAttention,
) -> PathBuf {
    let scales = m.dir.path().join("kv-scales.safetensors");
    let cfg = engine::kv_scales::KvScalesConfig {
        model: m.ort.clone(),
        prompts: prompts.to_path_buf(),
        out: scales.clone(),
        limit: 64,
        session: Default::default(),
    };
    engine::kv_scales::run(runtime(), &cfg).unwrap();
    let out = m.dir.path().join(format!("ort-int8-kv8-{attention:?}"));
    let mut e = OnnxExportConfig::new(&m.hf, &out);
    e.kv_attention = attention;
    e.flavor = Some(Flavor::Ort);
    e.last_logits_only = true;
    e.weights = exports::onnx::WeightFormat::Int8;
    let model = exports::ModelConfig::load(&m.hf).unwrap();
    e.kv_cache =
        exports::onnx::KvCache::Int8(exports::onnx::KvScales::read(&scales, &model).unwrap());
    export(&e).unwrap();
    out
}

/// Prompts of varied lengths, text and chat.
pub fn prompts(n: usize) -> Vec<PromptRecord> {
    let texts = [
        "The cat sat on the mat and",
        "In the beginning",
        "We hold these truths to be self-evident, that all men are created equal, that they are endowed",
        "a",
        "Numbers: 1 2 3 4 5 6 7",
        "The state of the union is strong, and the",
    ];
    (0..n)
        .map(|i| {
            if i % 4 == 3 {
                PromptRecord {
                    id: format!("p{i}"),
                    prompt: None,
                    messages: Some(vec![Message::new(
                        "user",
                        format!("Tell me about thing {i}."),
                    )]),
                    reference: Some(format!("ref {i}")),
                    extra: Default::default(),
                }
            } else {
                PromptRecord::text(format!("p{i}"), format!("{} {i}", texts[i % texts.len()]))
            }
        })
        .collect()
}

pub fn write_prompts(path: &Path, records: &[PromptRecord]) {
    exports::records::write_jsonl(path, records).unwrap();
}

/// A config for `model` with test-friendly defaults (no progress bar, 2 threads).
pub fn config(model: &Path, prompts: &Path, out: &Path) -> GenerateConfig {
    let mut c = GenerateConfig::new(model, prompts, out);
    c.progress = false;
    c.threads = Some(2);
    c.max_new_tokens = 12;
    c.batch_size = 4.into();
    c
}

pub fn greedy(c: &mut GenerateConfig) {
    c.sampling.decoding = Decoding::Greedy;
}

pub fn read(out: &Path) -> Vec<GenerationRecord> {
    exports::records::read_jsonl(out).unwrap()
}

/// The process's one ONNX Runtime environment.
pub fn runtime() -> &'static Runtime {
    Runtime::shared(None).expect("ONNX Runtime (run scripts/setup.sh)")
}

pub fn run(c: &GenerateConfig) -> generate::Summary {
    generate::run_with(runtime(), c).unwrap_or_else(|e| panic!("generate failed: {e:#}"))
}

/// Output records without the timing field, which legitimately varies.
pub fn untimed(records: &[GenerationRecord]) -> Vec<String> {
    records
        .iter()
        .map(|r| {
            let mut r = r.clone();
            r.seconds = 0.0;
            serde_json::to_string(&r).unwrap()
        })
        .collect()
}

/// A backend on `device` for `model` (1 thread, 128 positions).
pub fn backend(
    model: &std::path::Path,
    device: Device,
    slots: usize,
    fixed_shape: bool,
) -> Backend {
    backend_with(model, device, slots, fixed_shape, MoverChoice::Auto)
}

pub fn backend_with(
    model: &std::path::Path,
    device: Device,
    slots: usize,
    fixed_shape: bool,
    mover: MoverChoice,
) -> Backend {
    Backend::load(
        runtime(),
        &BackendConfig {
            model: model.to_path_buf(),
            session: SessionOptions {
                device,
                threads: 1,
                ..SessionOptions::default()
            },
            slots,
            max_len: 128,
            fixed_shape,
            mover,
        },
    )
    .unwrap()
}

/// The portable graph of `m` on one thread: the uncached reference the generation tests
/// recompute greedy tokens with.
pub fn reference_session(m: &Models) -> engine::session::DecoderSession {
    engine::session::DecoderSession::load(
        runtime(),
        &m.portable,
        &SessionOptions {
            threads: 1,
            ..SessionOptions::default()
        },
    )
    .unwrap()
}
