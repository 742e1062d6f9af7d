//! Reward-model scoring from text, through ONNX Runtime, against transformers: the tiny Llama
//! reward model (`exports init`, seed 16) scored per item by
//! `scripts/reference/reward_scores_reference.py` (fixture `fixtures/reward_scores.json`), and the
//! same scores driving `engine label --reward-model` and the win rate of `engine eval`.

use std::io::Write;
use std::path::{Path, PathBuf};

use engine::bootstrap::BootstrapConfig;
use engine::eval::{EvalConfig, ResponseSelection, WinRateConfig};
use engine::label::{LabelConfig, RewardSpec, ScoreItem, Scorer};
use engine::reward::{RewardModelConfig, RewardModelScorer};
use exports::init::{init, InitConfig};
use exports::onnx::{export, Flavor, OnnxExportConfig};
use exports::records::{read_jsonl, PairRecord, Prompt};
use exports::{Head, ModelType};
use serde_json::{json, Value};

/// transformers (fp32, batch 1) against ONNX Runtime (fp32, padded batches).
const TOL: f64 = 1e-4;

fn fixture() -> Vec<(String, String, f64)> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/reward_scores.json"
    );
    let v: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["prompt"].as_str().unwrap().to_owned(),
                i["response"].as_str().unwrap().to_owned(),
                i["score"].as_f64().unwrap(),
            )
        })
        .collect()
}

/// The reward model of the fixture, exported in `flavor` under `tmp`.
fn exported(tmp: &Path, flavor: Flavor) -> PathBuf {
    let mut c = InitConfig::tiny(ModelType::Llama, 16);
    c.hidden_size = 64;
    c.head = Head::Reward;
    let hf = tmp.join("hf");
    if !hf.exists() {
        init(&c, &hf).unwrap();
    }
    let dir = tmp.join(format!("onnx-{flavor:?}"));
    let mut cfg = OnnxExportConfig::new(&hf, &dir);
    cfg.flavor = Some(flavor);
    cfg.head = Head::Reward;
    export(&cfg).unwrap();
    dir
}

#[test]
fn scores_from_text_match_transformers_in_every_batching() {
    let tmp = tempfile::tempdir().unwrap();
    let items = fixture();
    let prompts: Vec<Prompt> = items.iter().map(|i| Prompt::Text(i.0.clone())).collect();
    let batch: Vec<ScoreItem<'_>> = items
        .iter()
        .zip(&prompts)
        .map(|(i, prompt)| ScoreItem {
            prompt,
            response: &i.1,
        })
        .collect();
    for flavor in [Flavor::Ort, Flavor::Portable] {
        let dir = exported(tmp.path(), flavor);
        for batch_size in [1, 4, 16] {
            let mut cfg = RewardModelConfig::new(&dir);
            cfg.batch_size = batch_size;
            let mut scorer = RewardModelScorer::open(&cfg).unwrap();
            let got = scorer.score(&batch).unwrap();
            for ((p, r, want), g) in items.iter().zip(&got) {
                assert!(
                    (g - want).abs() < TOL,
                    "{flavor:?} batch {batch_size}: {p:?} + {r:?}: {g} vs {want}"
                );
            }
            assert!(scorer.tokens_scored().unwrap() > 0);
        }
    }
}

fn gen_line(id: &str, prompt: &str, responses: &[&str]) -> String {
    json!({
        "id": id,
        "prompt": prompt,
        "responses": responses
            .iter()
            .map(|t| json!({"text": t, "tokens": 1, "finish_reason": "eos"}))
            .collect::<Vec<_>>(),
        "seconds": 0.0,
    })
    .to_string()
}

fn write(path: &Path, lines: &[String]) {
    let mut f = std::fs::File::create(path).unwrap();
    for l in lines {
        writeln!(f, "{l}").unwrap();
    }
}

#[test]
fn label_and_win_rate_use_the_reward_model() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = exported(tmp.path(), Flavor::Ort);
    let items = fixture();
    // Fixture items 0 and 1 share a prompt: one record with both responses.
    let (p, r0, s0) = &items[0];
    let (_, r1, s1) = &items[1];
    let gens = tmp.path().join("gens.jsonl");
    write(&gens, &[gen_line("x", p, &[r0, r1])]);
    // The default scorer, and one row per pass on one thread (`--batch-size 1 --threads 1`).
    let one_by_one = RewardModelConfig {
        batch_size: 1,
        session: engine::session::SessionOptions {
            threads: 1,
            ..Default::default()
        },
        ..RewardModelConfig::new(dir.clone())
    };
    for scorer in [RewardModelConfig::new(dir.clone()), one_by_one] {
        let cfg = LabelConfig {
            generations: gens.clone(),
            out: tmp.path().join("pairs.jsonl"),
            reward: RewardSpec::Model(scorer),
            min_gap: 0.0,
            scores_out: None,
            binary: None,
        };
        let summary = engine::label::run(&cfg).unwrap();
        assert_eq!(summary.pairs, 1);
        assert!(summary.tokens.unwrap() > 0);
        let pair = &read_jsonl::<PairRecord>(&cfg.out).unwrap()[0];
        let (chosen, rejected) = if s0 > s1 { (r0, r1) } else { (r1, r0) };
        assert_eq!(
            (pair.chosen.as_str(), pair.rejected.as_str()),
            (Some(chosen.as_str()), Some(rejected.as_str()))
        );
        assert!((pair.chosen_reward.unwrap() - s0.max(*s1)).abs() < TOL);
        assert!((pair.rejected_reward.unwrap() - s0.min(*s1)).abs() < TOL);
    }

    // Candidate response 1 against response 0 of the same prompt.
    let cand = tmp.path().join("cand.jsonl");
    let base = tmp.path().join("base.jsonl");
    write(&cand, &[gen_line("x", p, &[r1])]);
    write(&base, &[gen_line("x", p, &[r0])]);
    let report = engine::eval::run(&EvalConfig {
        generations: cand,
        metrics: Vec::new(),
        responses: ResponseSelection::First,
        win_rate: Some(WinRateConfig {
            reward: RewardSpec::Model(RewardModelConfig::new(dir)),
            against: base,
        }),
        bootstrap: BootstrapConfig::default(),
    })
    .unwrap();
    let want = if s1 > s0 { 100.0 } else { 0.0 };
    assert_eq!(report.win_rate.unwrap().rate, want);
}
