//! The fit loop and `training eval` end to end on tiny models from `exports::init`.
//!
//! `eval_matches_pytorch_reference` compares against `tests/fixtures/losses_reference.json`,
//! written by `scripts/reference/losses_fixture.py` (an independent PyTorch + transformers
//! implementation of LOSSES.md, `scripts/reference/losses_reference.py`).

use std::path::{Path, PathBuf};

use exports::init::{init, InitConfig};
use exports::{Checkpoint, Head, ModelType};
use training::fit::{self, EvalConfig, FitConfig};
use training::metrics_log::read_metrics;
use training::objectives::{Gate, MarginReduction, Objective, ObjectiveConfig};

fn tiny_model(dir: &Path, seed: u64, head: Head) -> PathBuf {
    let mut cfg = InitConfig::tiny(ModelType::Llama, seed);
    cfg.head = head;
    init(&cfg, dir).expect("exports init");
    dir.to_path_buf()
}

const PAIRS: &[(&str, &str, &str)] = &[
    (
        "Tell me about the cat.",
        " It sleeps on the mat.",
        " the cat the cat the cat",
    ),
    (
        "Where is the sun?",
        " It is up in the sky.",
        " sun sun sun sun",
    ),
    ("Name a bird.", " A robin sings.", " the the the the bird"),
    ("What is 2024?", " A year.", " 2024 2024 2024"),
    ("Say hello.", " Hello, how are you?", " hello hello hello"),
    (
        "Pick a color.",
        " Blue, like the sea.",
        " blue blue blue blue",
    ),
];

fn write_data(dir: &Path) -> PathBuf {
    let mut text = String::new();
    for (p, c, r) in PAIRS {
        text.push_str(&serde_json::json!({"prompt": p, "chosen": c, "rejected": r}).to_string());
        text.push('\n');
    }
    text.push_str(
        "{\"prompt\":\"Say something nice.\",\"response\":\" You are kind.\",\"label\":true}\n",
    );
    text.push_str(
        "{\"prompt\":\"Say something nice.\",\"response\":\" nice nice nice\",\"label\":false}\n",
    );
    let path = dir.join("data.jsonl");
    std::fs::write(&path, text).unwrap();
    path
}

fn fit_cfg(model: &Path, data: &Path, out: &Path) -> FitConfig {
    FitConfig {
        model: model.to_path_buf(),
        data: vec![data.to_path_buf()],
        out: out.to_path_buf(),
        batch_size: 4,
        micro_batch_size: 4,
        seed: 5,
        objective: ObjectiveConfig {
            alpha: 0.5,
            b: 2.0,
            tau: 3.0,
            ..ObjectiveConfig::new(Objective::PairwiseCringe)
        },
        optim: training::optim::OptimConfig {
            lr: 3e-3,
            ..Default::default()
        },
        ..Default::default()
    }
}

fn weights(dir: &Path) -> Vec<(String, Vec<f32>)> {
    Checkpoint::load(dir)
        .unwrap()
        .tensors
        .iter()
        .map(|(n, t)| (n.clone(), t.to_f32().unwrap()))
        .collect()
}

fn max_weight_diff(a: &Path, b: &Path) -> f64 {
    let (wa, wb) = (weights(a), weights(b));
    assert_eq!(wa.len(), wb.len());
    let mut worst = 0f64;
    for ((na, va), (nb, vb)) in wa.iter().zip(&wb) {
        assert_eq!(na, nb);
        for (x, y) in va.iter().zip(vb) {
            worst = worst.max((x - y).abs() as f64);
        }
    }
    worst
}

#[test]
fn accumulation_equals_one_big_batch() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(&tmp.path().join("m"), 3, Head::Lm);
    let data = write_data(tmp.path());
    let whole = fit_cfg(&model, &data, &tmp.path().join("whole"));
    let mut split = fit_cfg(&model, &data, &tmp.path().join("split"));
    split.micro_batch_size = 1;
    for c in [&whole, &split] {
        // Adam's first update is about lr * sign(g), so weights differ by lr times the relative
        // float noise of the accumulated gradient; a small lr keeps that far below 1e-6.
        let mut c = c.clone();
        c.max_steps = Some(1);
        c.optim.lr = 1e-4;
        c.objective.cringe_k = 5; // draws are keyed by example position, not micro-batch
        fit::run(&c).unwrap();
    }
    let d = max_weight_diff(
        &tmp.path().join("whole/final"),
        &tmp.path().join("split/final"),
    );
    assert!(d < 1e-6, "weights differ by {d}");
    // ... and the step did change them.
    assert!(max_weight_diff(&model, &tmp.path().join("whole/final")) > 5e-5);
    let a = read_metrics(&tmp.path().join("whole/metrics.jsonl")).unwrap();
    let b = read_metrics(&tmp.path().join("split/metrics.jsonl")).unwrap();
    assert!((a[0].loss - b[0].loss).abs() < 1e-6 && a[0].examples == 4);
}

#[test]
fn resume_continues_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(&tmp.path().join("m"), 4, Head::Lm);
    let data = write_data(tmp.path());
    let mut full = fit_cfg(&model, &data, &tmp.path().join("full"));
    full.max_steps = Some(4);
    full.save_every = Some(2);
    full.micro_batch_size = 2;
    full.optim.warmup_steps = 1;
    full.optim.weight_decay = 0.1;
    fit::run(&full).unwrap();
    // A run that stopped after its step-2 checkpoint: only that checkpoint and its metrics remain.
    let part = tmp.path().join("part");
    std::fs::create_dir_all(&part).unwrap();
    copy_dir(
        &tmp.path().join("full/checkpoint-2"),
        &part.join("checkpoint-2"),
    );
    let metrics = std::fs::read_to_string(tmp.path().join("full/metrics.jsonl")).unwrap();
    let first_two: String = metrics.lines().take(2).map(|l| format!("{l}\n")).collect();
    std::fs::write(part.join("metrics.jsonl"), first_two).unwrap();
    let mut resumed = full.clone();
    resumed.out = part.clone();
    // Without --resume an existing run is refused rather than overwritten.
    assert!(fit::run(&resumed)
        .unwrap_err()
        .to_string()
        .contains("--resume"));
    resumed.resume = true;
    fit::run(&resumed).unwrap();
    assert_eq!(
        max_weight_diff(&tmp.path().join("full/final"), &part.join("final")),
        0.0
    );
    let a = read_metrics(&tmp.path().join("full/metrics.jsonl")).unwrap();
    let b = read_metrics(&part.join("metrics.jsonl")).unwrap();
    assert_eq!(b.len(), 4);
    for (x, y) in a.iter().zip(&b) {
        assert_eq!((x.step, x.loss, x.lr), (y.step, y.loss, y.lr));
    }
}

/// `save_total_limit` keeps the newest checkpoints and `final`, and a run limited that way still
/// resumes from what it kept.
#[test]
fn save_total_limit_keeps_the_newest_checkpoints() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(&tmp.path().join("m"), 4, Head::Lm);
    let data = write_data(tmp.path());
    let mut cfg = fit_cfg(&model, &data, &tmp.path().join("run"));
    cfg.max_steps = Some(5);
    cfg.save_every = Some(1);
    cfg.save_total_limit = Some(2);
    fit::run(&cfg).unwrap();
    let mut names: Vec<String> = std::fs::read_dir(&cfg.out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["checkpoint-3", "checkpoint-4", "final", "metrics.jsonl"]
    );
    std::fs::remove_dir_all(cfg.out.join("final")).unwrap();
    let mut resumed = cfg.clone();
    resumed.resume = true;
    let summary = fit::run(&resumed).unwrap();
    assert_eq!(summary.steps, 5);
    let mut zero = cfg.clone();
    zero.save_total_limit = Some(0);
    assert!(zero.validate().is_err());
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        let dest = to.join(p.file_name().unwrap());
        if p.is_dir() {
            copy_dir(&p, &dest);
        } else {
            std::fs::copy(&p, &dest).unwrap();
        }
    }
}

fn eval_cfg(model: &Path, data: &Path, objective: ObjectiveConfig) -> EvalConfig {
    EvalConfig {
        model: model.to_path_buf(),
        data: vec![data.to_path_buf()],
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
    }
}

#[test]
fn tiny_model_learns_a_toy_preference() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(&tmp.path().join("m"), 8, Head::Lm);
    let data = write_data(tmp.path());
    let mut cfg = fit_cfg(&model, &data, &tmp.path().join("run"));
    cfg.max_steps = Some(30);
    cfg.optim.lr = 1e-2;
    cfg.objective.b = 5.0;
    fit::run(&cfg).unwrap();
    let before = fit::evaluate(&eval_cfg(&model, &data, cfg.objective.clone())).unwrap();
    let after = fit::evaluate(&eval_cfg(
        &tmp.path().join("run/final"),
        &data,
        cfg.objective.clone(),
    ))
    .unwrap();
    let (m0, m1) = (before.margin.unwrap(), after.margin.unwrap());
    assert!(m1 > m0 + 5.0, "margin {m0} -> {m1}");
    assert_eq!(after.accuracy, Some(1.0));
    assert!(
        after.loss < before.loss,
        "loss {} -> {}",
        before.loss,
        after.loss
    );
    let lines = read_metrics(&tmp.path().join("run/metrics.jsonl")).unwrap();
    assert_eq!(lines.len(), 30);
    assert!(lines
        .iter()
        .all(|l| l.grad_norm.is_finite() && l.tokens_per_s > 0.0 && l.cringe.is_some()));
}

#[test]
fn dpo_starts_at_ln2_against_itself() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(&tmp.path().join("m"), 9, Head::Lm);
    let data = write_data(&tmp.path().join("d").tap_mkdir());
    let pairs_only: String = std::fs::read_to_string(&data)
        .unwrap()
        .lines()
        .take(PAIRS.len())
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&data, pairs_only).unwrap();
    let stats = fit::evaluate(&eval_cfg(
        &model,
        &data,
        ObjectiveConfig::new(Objective::Dpo),
    ))
    .unwrap();
    assert!(
        (stats.loss - std::f64::consts::LN_2).abs() < 1e-6,
        "{}",
        stats.loss
    );
    let mut cfg = fit_cfg(&model, &data, &tmp.path().join("run"));
    cfg.objective = ObjectiveConfig::new(Objective::Dpo);
    cfg.max_steps = Some(2);
    fit::run(&cfg).unwrap();
    let lines = read_metrics(&tmp.path().join("run/metrics.jsonl")).unwrap();
    assert!(
        (lines[0].loss - std::f64::consts::LN_2).abs() < 1e-6,
        "{}",
        lines[0].loss
    );
    assert!(lines[1].loss < std::f64::consts::LN_2);
    // The reference log-probs were cached beside the data.
    let cached = std::fs::read_dir(data.parent().unwrap())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .contains(".refLogps.")
        })
        .count();
    assert_eq!(cached, 1);
}

trait TapMkdir {
    fn tap_mkdir(self) -> Self;
}
impl TapMkdir for PathBuf {
    fn tap_mkdir(self) -> Self {
        std::fs::create_dir_all(&self).unwrap();
        self
    }
}

#[test]
fn non_finite_loss_stops_and_keeps_the_last_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(&tmp.path().join("m"), 10, Head::Lm);
    let data = write_data(tmp.path());
    let mut cfg = fit_cfg(&model, &data, &tmp.path().join("run"));
    cfg.max_steps = Some(3);
    cfg.save_every = Some(1);
    cfg.optim.lr = 1e30; // one step blows the weights up to overflow
    cfg.optim.grad_clip = 0.0;
    cfg.optim.schedule = training::optim::Schedule::Constant;
    let err = format!("{:#}", fit::run(&cfg).unwrap_err());
    assert!(
        err.contains("checkpoint-1") && (err.contains("NaN") || err.contains("inf")),
        "{err}"
    );
    assert!(tmp.path().join("run/checkpoint-1").exists());
    assert!(!tmp.path().join("run/final").exists());
}

#[test]
fn toml_config_errors_name_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("c.toml");
    let cases = [
        ("lrr = 1.0\n", "lrr"),
        ("[objective]\nalpah = 0.1\n", "alpah"),
        ("[optim]\nlr = \"fast\"\n", "lr"),
        ("[objective]\ngate = \"sometimes\"\n", "gate"),
    ];
    for (text, key) in cases {
        std::fs::write(&p, text).unwrap();
        let e = format!("{:#}", FitConfig::load_toml(&p).unwrap_err());
        assert!(e.contains(key) && e.contains("c.toml"), "{text:?}: {e}");
    }
    std::fs::write(
        &p,
        "model = \"m\"\ndata = [\"a.jsonl\"]\nout = \"o\"\nbatch_size = 8\n[objective]\nname = \"pairwise-cringe\"\ngate = \"hard\"\nmargin_reduction = \"mean\"\n[optim]\nlr = 2e-5\nschedule = \"cosine\"\n",
    )
    .unwrap();
    let c = FitConfig::load_toml(&p).unwrap();
    assert_eq!(
        (c.batch_size, c.objective.gate, c.objective.margin_reduction),
        (8, Gate::Hard, MarginReduction::Mean)
    );
    assert_eq!(c.optim.lr, 2e-5);
    c.validate().unwrap();
}

#[derive(serde::Deserialize)]
struct Fixture {
    models: std::collections::BTreeMap<String, FixtureModel>,
    data: std::collections::BTreeMap<String, String>,
    cases: Vec<FixtureCase>,
}
#[derive(serde::Deserialize)]
struct FixtureModel {
    seed: u64,
    head: String,
}
#[derive(serde::Deserialize)]
struct FixtureCase {
    model: String,
    data: String,
    args: serde_json::Map<String, serde_json::Value>,
    expected: serde_json::Map<String, serde_json::Value>,
}

#[test]
fn eval_matches_pytorch_reference() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/losses_reference.json"
    ))
    .unwrap();
    let fx: Fixture = serde_json::from_str(&text).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    for (key, m) in &fx.models {
        let head = if m.head == "reward" {
            Head::Reward
        } else {
            Head::Lm
        };
        tiny_model(&tmp.path().join(key), m.seed, head);
    }
    for (key, d) in &fx.data {
        std::fs::write(tmp.path().join(format!("{key}.jsonl")), d).unwrap();
    }
    for case in &fx.cases {
        let mut args = case.args.clone();
        args.remove("reference");
        let objective: ObjectiveConfig = serde_json::from_value(serde_json::json!({
            "name": args.remove("objective").unwrap(),
        }))
        .unwrap();
        let mut v = serde_json::to_value(&objective).unwrap();
        for (k, x) in args {
            v[k] = x;
        }
        let objective: ObjectiveConfig = serde_json::from_value(v).unwrap();
        let mut cfg = eval_cfg(
            &tmp.path().join(&case.model),
            &tmp.path().join(format!("{}.jsonl", case.data)),
            objective,
        );
        cfg.reference = case
            .args
            .get("reference")
            .map(|r| tmp.path().join(r.as_str().unwrap()));
        let got = serde_json::to_value(fit::evaluate(&cfg).unwrap()).unwrap();
        for (k, want) in &case.expected {
            let (g, w) = (got[k].as_f64().unwrap_or(f64::NAN), want.as_f64().unwrap());
            // Relative 1e-4; margins are differences of sums of ~50 f32 log-probs, so their
            // absolute error floor is about 1e-5.
            assert!(
                (g - w).abs() <= 1e-4 * w.abs().max(0.1),
                "{:?} {k}: got {g}, reference {w}",
                case.args
            );
        }
        for k in ["ce", "cringe", "gate", "margin", "accuracy"] {
            assert_eq!(
                got.get(k).is_some(),
                case.expected.contains_key(k),
                "{:?}: field {k}",
                case.args
            );
        }
    }
}

/// A response cut by the token limit (`finish_reason: length`) is encoded without the closing
/// EOS for LM objectives, and with it for the reward head (which reads that position); records
/// without a reason keep DATA.md's rule. Expected ids are built from the tokenizer directly.
#[test]
fn cut_responses_are_trained_without_the_closing_eos() {
    use exports::records::Prompt;
    use training::data::{Dataset, EncodeConfig, Item};
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(&tmp.path().join("m"), 0, Head::Lm);
    let tok = exports::Tokenizer::load(&model).unwrap();
    let data = tmp.path().join("cut.jsonl");
    std::fs::write(
        &data,
        concat!(
            r#"{"prompt":"Say hello.","chosen":" Hello there, my","rejected":" hello hello","chosen_finish_reason":"length","rejected_finish_reason":"eos"}"#,
            "\n",
            r#"{"prompt":"Say hello.","chosen":" Hello there, my","rejected":" hello hello"}"#,
            "\n",
        ),
    )
    .unwrap();
    let prompt = Prompt::Text("Say hello.".into());
    let ended = |response: &str| {
        let mut ids = tok.prompt_ids(&prompt).unwrap();
        ids.extend(tok.response_ids(response).unwrap());
        ids
    };
    let mut cut = ended(" Hello there, my");
    assert_eq!(cut.pop(), Some(tok.eos()));

    for (objective, want_first_chosen) in [
        (Objective::PairwiseCringe, cut.clone()),
        (Objective::Reward, ended(" Hello there, my")),
    ] {
        let cfg = EncodeConfig {
            objective,
            max_length: None,
        };
        let ds = Dataset::load(std::slice::from_ref(&data), &tok, &cfg).unwrap();
        let sides: Vec<_> = ds
            .items
            .iter()
            .map(|item| match item {
                Item::Pair {
                    chosen, rejected, ..
                } => (chosen.ids.clone(), rejected.ids.clone()),
                Item::Binary { .. } => panic!("pairs expected"),
            })
            .collect();
        assert_eq!(
            sides,
            [
                (want_first_chosen, ended(" hello hello")),
                (ended(" Hello there, my"), ended(" hello hello")),
            ],
            "{objective}"
        );
    }
}

/// A Qwen3 folder as transformers 5 saved it (training/tests/fixtures/hf5), with a key nobody
/// knows added: one step of `fit` writes a `final/` whose config keeps that key and the file's
/// bookkeeping keys, in the transformers 5 layout, and describes the same model.
#[test]
fn unknown_config_keys_survive_a_fit() {
    let tmp = tempfile::tempdir().unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf5/qwen3_tied");
    let model = tmp.path().join("qwen3");
    std::fs::create_dir_all(&model).unwrap();
    for e in std::fs::read_dir(&src).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), model.join(e.file_name())).unwrap();
    }
    let read = |p: &Path| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(p.join("config.json")).unwrap()).unwrap()
    };
    let mut config = read(&model);
    config["my_unknown_key"] = serde_json::json!({"kept": [1, 2, 3]});
    std::fs::write(model.join("config.json"), config.to_string()).unwrap();
    let data = write_data(tmp.path());
    let mut cfg = fit_cfg(&model, &data, &tmp.path().join("run"));
    cfg.max_steps = Some(1);
    let summary = fit::run(&cfg).unwrap();
    let written = read(&summary.final_dir);
    for key in [
        "my_unknown_key",
        "layer_types",
        "use_sliding_window",
        "max_window_layers",
        "initializer_range",
        "head_dim",
        "tie_word_embeddings",
    ] {
        assert_eq!(written[key], config[key], "{key}");
    }
    assert_eq!(written["rope_parameters"], config["rope_parameters"]);
    assert_eq!(written["dtype"], "float32");
    assert!(written.get("rope_theta").is_none() && written.get("torch_dtype").is_none());
    let before = exports::ModelConfig::load(&model).unwrap();
    let after = exports::ModelConfig::load(&summary.final_dir).unwrap();
    assert_eq!(before, after);
}

/// `gradient_checkpointing` trains what the plain path trains: same losses and gradient norms
/// and (after 3 steps with 2 accumulated micro-batches) the same weights.
#[test]
fn gradient_checkpointing_trains_the_same_model() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(&tmp.path().join("m"), 3, Head::Lm);
    let data = write_data(tmp.path());
    let mut runs = Vec::new();
    for ckpt in [false, true] {
        let out = tmp.path().join(format!("ckpt-{ckpt}"));
        let mut c = fit_cfg(&model, &data, &out);
        c.max_steps = Some(3);
        c.micro_batch_size = 2;
        c.optim.lr = 1e-4;
        c.gradient_checkpointing = ckpt;
        fit::run(&c).unwrap();
        runs.push(out);
    }
    let d = max_weight_diff(&runs[0].join("final"), &runs[1].join("final"));
    assert!(d < 1e-6, "weights differ by {d}");
    let a = read_metrics(&runs[0].join("metrics.jsonl")).unwrap();
    let b = read_metrics(&runs[1].join("metrics.jsonl")).unwrap();
    assert_eq!(a.len(), 3);
    for (x, y) in a.iter().zip(&b) {
        assert!((x.loss - y.loss).abs() < 1e-6, "{} vs {}", x.loss, y.loss);
        assert!(
            (x.grad_norm - y.grad_norm).abs() < 1e-6 * x.grad_norm.max(1.0),
            "{} vs {}",
            x.grad_norm,
            y.grad_norm
        );
    }
}

/// `precision = bf16` on the CPU runs autocast (the step-1 loss moves off fp32's by bf16
/// rounding, but not by more than 2 %) and trains: over 6 steps its losses stay within 2 % of
/// fp32's (alone and with checkpointing), and the gradient norms within 5 %.
#[test]
fn bf16_autocast_on_cpu_follows_the_fp32_loss_curve() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(&tmp.path().join("m"), 3, Head::Lm);
    let data = write_data(tmp.path());
    let mut curves = Vec::new();
    for (name, precision, ckpt) in [
        ("fp32", training::amp::Precision::Fp32, false),
        ("bf16", training::amp::Precision::Bf16, false),
        ("bf16-ckpt", training::amp::Precision::Bf16, true),
    ] {
        let out = tmp.path().join(name);
        let mut c = fit_cfg(&model, &data, &out);
        c.max_steps = Some(6);
        c.precision = precision;
        c.gradient_checkpointing = ckpt;
        fit::run(&c).unwrap();
        curves.push(read_metrics(&out.join("metrics.jsonl")).unwrap());
    }
    let fp32 = &curves[0];
    assert!(
        fp32.last().unwrap().loss < fp32[0].loss,
        "fp32 did not learn"
    );
    assert_ne!(curves[1][0].loss, fp32[0].loss, "bf16 ran in fp32");
    for c in &curves[1..] {
        for (x, y) in fp32.iter().zip(c) {
            let rel = (x.loss - y.loss).abs() / x.loss.abs();
            assert!(
                rel < 0.02,
                "step {}: loss {} vs fp32 {}",
                x.step,
                y.loss,
                x.loss
            );
            let rel = (x.grad_norm - y.grad_norm).abs() / x.grad_norm;
            assert!(
                rel < 0.05,
                "step {}: grad norm {} vs {}",
                x.step,
                y.grad_norm,
                x.grad_norm
            );
        }
    }
}
