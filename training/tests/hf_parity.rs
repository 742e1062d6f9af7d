//! tch models vs Hugging Face transformers on the same weights, in fp32.
//!
//! The expected outputs come from `scripts/reference/model_reference.py`, which runs transformers
//! on tiny models written by `exports init` with the seeds listed in
//! `tests/fixtures/model_reference/cases.json`; this test regenerates the same folders with
//! `exports::init::init` and compares logits (every 5th vocabulary entry, real positions) or
//! reward scores within 1e-5.

mod common;

use std::path::{Path, PathBuf};

use exports::checkpoint::Checkpoint;
use exports::init::InitConfig;
use exports::Head;
use serde_json::Value;

const TOLERANCE: f64 = 1e-5;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/model_reference")
}

fn init_config(case: &Value) -> InitConfig {
    let ty = common::model_type(case["arch"].as_str().expect("arch"));
    let mut cfg = InitConfig::tiny(ty, case["seed"].as_u64().expect("seed"));
    if let Some(k) = case["kv_heads"].as_u64() {
        cfg.kv_heads = k as usize;
    }
    cfg.tied = !case["untied"].as_bool().expect("untied");
    cfg.attention_bias = case["attention_bias"].as_bool().expect("attention_bias");
    cfg.head = match case["head"].as_str() {
        Some("lm") => Head::Lm,
        Some("reward") => Head::Reward,
        other => panic!("unknown head {other:?}"),
    };
    cfg
}

fn check_case(case: &Value) {
    let name = case["name"].as_str().expect("name");
    let cfg = init_config(case);
    let dir = tempfile::tempdir().unwrap();
    let (_vs, model) = common::tiny(dir.path(), &cfg);

    // The fixture is only meaningful for the same weights: say so if `exports init` changed.
    let weights = Checkpoint::load(dir.path()).unwrap();
    let sum: f64 = weights
        .tensors
        .values()
        .map(|t| t.to_f32().unwrap().iter().map(|&v| v as f64).sum::<f64>())
        .sum();
    let want_sum = case["weights_sum"].as_f64().expect("weights_sum");
    assert!(
        (sum - want_sum).abs() < 1e-6 * want_sum.abs().max(1.0),
        "{name}: exports init now writes different weights (sum {sum} vs {want_sum}); \
         rerun scripts/reference/model_reference.py"
    );

    let fx = Checkpoint::load(&fixtures().join(format!("{name}.safetensors"))).unwrap();
    let ids = common::fixture_tensor(&fx, "input_ids");
    let mask = common::fixture_tensor(&fx, "attention_mask");
    let _guard = tch::no_grad_guard();
    let diff = match cfg.head {
        Head::Lm => {
            let index = common::fixture_tensor(&fx, "vocab_index");
            let want = common::fixture_tensor(&fx, "logits");
            let got = model.forward(&ids, &mask).index_select(2, &index);
            assert_eq!(got.size(), want.size(), "{name}");
            common::max_abs_diff_where(&got, &want, &mask.unsqueeze(-1))
        }
        Head::Reward => {
            let want = common::fixture_tensor(&fx, "scores");
            common::max_abs_diff(&model.score(&ids, &mask), &want)
        }
    };
    println!("{name}: max |tch - transformers| = {diff:.3e}");
    assert!(
        diff < TOLERANCE,
        "{name}: max |tch - transformers| = {diff:e} > {TOLERANCE:e}"
    );
}

fn cases() -> Vec<Value> {
    let text = std::fs::read_to_string(fixtures().join("cases.json")).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    v["cases"].as_array().expect("cases").clone()
}

fn run(names: &[&str]) {
    let all = cases();
    for name in names {
        let case = all
            .iter()
            .find(|c| c["name"] == *name)
            .unwrap_or_else(|| panic!("no case `{name}` in cases.json"));
        check_case(case);
    }
}

#[test]
fn every_fixture_case_is_tested() {
    let names: Vec<String> = cases()
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect();
    let tested = [
        "llama_gqa_tied",
        "llama_bias_untied",
        "llama_mha_untied",
        "mistral_mqa_tied",
        "qwen2_tied",
        "gpt2_tied",
        "gpt2_untied",
        "llama_reward",
        "qwen2_reward",
        "gpt2_reward",
    ];
    assert_eq!(names, tested);
}

#[test]
fn llama_family_logits_match_transformers() {
    run(&[
        "llama_gqa_tied",
        "llama_bias_untied",
        "llama_mha_untied",
        "mistral_mqa_tied",
        "qwen2_tied",
    ]);
}

#[test]
fn gpt2_logits_match_transformers() {
    run(&["gpt2_tied", "gpt2_untied"]);
}

#[test]
fn reward_scores_match_sequence_classification() {
    run(&["llama_reward", "qwen2_reward", "gpt2_reward"]);
}

// ---- Checkpoints saved by transformers 5 (scripts/reference/hf5_reference.py) ----

fn hf5() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf5")
}

fn hf5_cases() -> Vec<Value> {
    let text = std::fs::read_to_string(hf5().join("cases.json")).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    v["cases"].as_array().expect("cases").clone()
}

/// Logits of the folder as transformers saved it (bf16 weights, a real transformers 5 config with
/// `rope_parameters`, `dtype`, `layer_types` …) against transformers' own, within 1e-5.
fn check_hf5_logits(name: &str, head: Head) {
    let dir = hf5().join(name);
    let (_vs, model) = training::weights::load_model(&dir, tch::Device::Cpu, head)
        .unwrap_or_else(|e| panic!("{name}: {e:#}"));
    let fx = Checkpoint::load(&hf5().join(format!("{name}.safetensors"))).unwrap();
    let ids = common::fixture_tensor(&fx, "input_ids");
    let mask = common::fixture_tensor(&fx, "attention_mask");
    if head == Head::Reward {
        let want = common::fixture_tensor(&fx, "scores");
        let _guard = tch::no_grad_guard();
        let diff = common::max_abs_diff(&model.score(&ids, &mask), &want);
        println!("{name}: max |score tch - transformers| = {diff:.3e}");
        assert!(diff < TOLERANCE, "{name}: scores differ by {diff:e}");
        return;
    }
    let index = common::fixture_tensor(&fx, "vocab_index");
    let want = common::fixture_tensor(&fx, "logits");
    let _guard = tch::no_grad_guard();
    let got = model.forward(&ids, &mask).index_select(2, &index);
    let diff = common::max_abs_diff_where(&got, &want, &mask.unsqueeze(-1));
    let scale = common::max_abs_diff(&want, &want.zeros_like());
    println!("{name}: max |tch - transformers| = {diff:.3e} (max |logit| {scale:.3})");
    assert!(
        diff < TOLERANCE,
        "{name}: max |tch - transformers| = {diff:e}"
    );
}

/// `training eval` (the library call behind it) against losses_reference.py run with
/// transformers on the same folder and pairs: relative 1e-4.
fn check_hf5_loss(case: &Value) {
    use training::fit::{self, EvalConfig};
    use training::objectives::ObjectiveConfig;
    let name = case["name"].as_str().unwrap();
    let objective: ObjectiveConfig =
        serde_json::from_value(serde_json::json!({"name": case["objective"]})).unwrap();
    let cfg = EvalConfig {
        model: hf5().join(name),
        data: vec![hf5().join("pairs.jsonl")],
        objective: ObjectiveConfig {
            cringe_k: 1,
            ..objective
        },
        batch_size: 3,
        device: "cpu".into(),
        max_length: None,
        train_on_prompt: false,
        reference: None,
        seed: 0,
        precision: training::amp::Precision::Auto,
        adapter: None,
    };
    let got = serde_json::to_value(fit::evaluate(&cfg).unwrap()).unwrap();
    let want = case["loss"].as_object().expect("loss");
    for (k, w) in want {
        let (g, w) = (got[k].as_f64().unwrap_or(f64::NAN), w.as_f64().unwrap());
        assert!(
            (g - w).abs() <= 1e-4 * w.abs().max(0.1),
            "{name} {k}: training eval {g}, transformers {w}"
        );
    }
    println!("{name}: eval {got} matches transformers");
}

#[test]
fn transformers5_checkpoints_match_transformers() {
    let cases = hf5_cases();
    let names: Vec<&str> = cases.iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "qwen3_tied",
            "qwen3_untied_bias",
            "llama32_tied",
            "qwen2_tied",
            "mistral_untied",
            "mistral_window4",
            "smollm3_tied",
            "qwen3_reward"
        ]
    );
    for case in &cases {
        let name = case["name"].as_str().unwrap();
        let head = match case["head"].as_str() {
            Some("lm") => Head::Lm,
            Some("reward") => Head::Reward,
            other => panic!("{name}: head {other:?}"),
        };
        check_hf5_logits(name, head);
        check_hf5_loss(case);
    }
}
