//! LoRA in PEFT's format, on tiny models from `exports init`.
//!
//! `tests/fixtures/lora/` was written by `scripts/reference/lora_fixture.py` with PEFT itself:
//! adapters PEFT saved (random `lora_B`, so they matter) and PEFT's logits/scores with them. The
//! tests check that our adapter forward and our merge (`exports::lora`) reproduce them, that our
//! adapter files carry PEFT's keys and names, that every objective trains adapters only, that DPO
//! with adapters (reference = the base with adapters off) equals DPO with a separately loaded
//! reference, and that an adapter run resumes exactly.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use exports::init::{init, InitConfig};
use exports::lora::{Adapter, AdapterConfig};
use exports::{Checkpoint, Head, ModelType};
use tch::{Device, Kind, Tensor};
use training::fit::{self, EvalConfig, FitConfig};
use training::metrics_log::read_metrics;
use training::model::LoraConfig;
use training::objectives::{Objective, ObjectiveConfig};
use training::weights::load_model;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/lora")
}

fn tiny_model(dir: &Path, seed: u64, head: Head) -> PathBuf {
    let mut cfg = InitConfig::tiny(ModelType::Llama, seed);
    cfg.head = head;
    init(&cfg, dir).expect("exports init");
    dir.to_path_buf()
}

fn reference() -> Checkpoint {
    Checkpoint::load(&fixtures().join("lora_reference.safetensors")).unwrap()
}

fn ids() -> (Tensor, Tensor) {
    let ids = common::fixture_tensor(&reference(), "input_ids");
    let mask = ids.ones_like();
    (ids, mask)
}

/// The base model of `seed` with the fixture adapter `key` attached and loaded.
fn with_adapter(
    dir: &Path,
    seed: u64,
    head: Head,
    key: &str,
) -> (tch::nn::VarStore, training::Model) {
    tiny_model(dir, seed, head);
    let (vs, mut model) = load_model(dir, Device::Cpu, head).unwrap();
    let adapter = Adapter::load(&fixtures().join(key)).unwrap();
    model
        .add_lora(&LoraConfig::from_adapter(&adapter.config), 0)
        .unwrap();
    model.load_adapter(&adapter).unwrap();
    (vs, model)
}

#[test]
fn peft_adapters_give_peft_logits_unmerged_and_merged() {
    let tmp = tempfile::tempdir().unwrap();
    let fx = reference();
    let (ids, mask) = ids();
    let want = common::fixture_tensor(&fx, "lm_logits");
    let (_vs, model) = with_adapter(&tmp.path().join("lm"), 21, Head::Lm, "lm");
    let got = tch::no_grad(|| model.forward(&ids, &mask));
    let d = common::max_abs_diff(&got, &want);
    assert!(d < 1e-5, "adapter forward vs PEFT: {d}");
    // The adapters matter: off, the logits are the base's, far from PEFT's.
    let base = tch::no_grad(|| model.without_adapters(|| model.forward(&ids, &mask)));
    assert!(common::max_abs_diff(&base, &want) > 1e-2);
    // Merged on the host by exports::lora, loaded as a plain model.
    let mut ckpt = Checkpoint::load(&tmp.path().join("lm")).unwrap();
    let adapter = Adapter::load(&fixtures().join("lm")).unwrap();
    let s = exports::lora::merge(&mut ckpt, &adapter).unwrap();
    assert_eq!(s.modules, 14);
    let (_vs2, plain) = load_model(&tmp.path().join("lm"), Device::Cpu, Head::Lm).unwrap();
    training::weights::fill_from_checkpoint(&plain, &ckpt).unwrap();
    let merged = tch::no_grad(|| plain.forward(&ids, &mask));
    let d = common::max_abs_diff(&merged, &common::fixture_tensor(&fx, "lm_merged_logits"));
    assert!(d < 1e-5, "merged vs PEFT merge_and_unload: {d}");
}

#[test]
fn peft_reward_adapter_with_saved_score_head_and_rslora() {
    let tmp = tempfile::tempdir().unwrap();
    let (ids, mask) = ids();
    let want = common::fixture_tensor(&reference(), "rm_scores");
    let (_vs, model) = with_adapter(&tmp.path().join("rm"), 22, Head::Reward, "rm");
    assert!(model.lora().unwrap().rslora);
    let got = tch::no_grad(|| model.score(&ids, &mask));
    let d = common::max_abs_diff(&got, &want);
    assert!(d < 1e-5, "reward adapter vs PEFT: {d} ({got} vs {want})");
    let mut ckpt = Checkpoint::load(&tmp.path().join("rm")).unwrap();
    let s =
        exports::lora::merge(&mut ckpt, &Adapter::load(&fixtures().join("rm")).unwrap()).unwrap();
    assert_eq!((s.modules, s.replaced), (4, 1));
    let (_vs2, plain) = load_model(&tmp.path().join("rm"), Device::Cpu, Head::Reward).unwrap();
    training::weights::fill_from_checkpoint(&plain, &ckpt).unwrap();
    let d = common::max_abs_diff(&tch::no_grad(|| plain.score(&ids, &mask)), &want);
    assert!(d < 1e-5, "merged reward model vs PEFT: {d}");
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

fn write_data(dir: &Path, binary: bool) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let mut text = String::new();
    for (p, c, r) in PAIRS {
        text.push_str(&serde_json::json!({"prompt": p, "chosen": c, "rejected": r}).to_string());
        text.push('\n');
    }
    if binary {
        text.push_str(
            "{\"prompt\":\"Say something nice.\",\"response\":\" You are kind.\",\"label\":true}\n",
        );
        text.push_str("{\"prompt\":\"Say something nice.\",\"response\":\" nice nice nice\",\"label\":false}\n");
    }
    let path = dir.join("data.jsonl");
    std::fs::write(&path, text).unwrap();
    path
}

fn lora_fit(model: &Path, data: &Path, out: &Path, objective: Objective) -> FitConfig {
    FitConfig {
        model: model.to_path_buf(),
        data: vec![data.to_path_buf()],
        out: out.to_path_buf(),
        batch_size: 4,
        micro_batch_size: 2,
        seed: 5,
        max_steps: Some(3),
        objective: ObjectiveConfig::new(objective),
        optim: training::optim::OptimConfig {
            lr: 2e-2,
            weight_decay: 0.01,
            ..Default::default()
        },
        lora: LoraConfig {
            r: 4,
            alpha: 8.0,
            ..Default::default()
        },
        ..Default::default()
    }
}

fn eval_cfg(
    model: &Path,
    data: &Path,
    adapter: Option<&Path>,
    reference: Option<&Path>,
) -> EvalConfig {
    EvalConfig {
        model: model.to_path_buf(),
        data: vec![data.to_path_buf()],
        objective: ObjectiveConfig {
            beta: 0.5,
            ..ObjectiveConfig::new(Objective::Dpo)
        },
        batch_size: 3,
        device: "cpu".into(),
        max_length: None,
        train_on_prompt: false,
        reference: reference.map(Path::to_path_buf),
        seed: 0,
        adapter: adapter.map(Path::to_path_buf),
        precision: training::amp::Precision::Auto,
    }
}

fn tensor_names(file: &Path) -> BTreeSet<String> {
    Checkpoint::load(file)
        .unwrap()
        .tensors
        .keys()
        .cloned()
        .collect()
}

/// Our adapter folder has PEFT's files, config keys and tensor names (the fixture's, which PEFT
/// wrote for the same model and targets), holds adapters only, and its probe is the merged model's.
#[test]
fn a_lora_fit_writes_what_peft_writes() {
    // Its dropout masks come from libtorch's global generator (see `torch_rng_turn`).
    let _turn = common::torch_rng_turn();
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(&tmp.path().join("m"), 21, Head::Lm);
    let data = write_data(&tmp.path().join("d"), true);
    let mut cfg = lora_fit(&model, &data, &tmp.path().join("run"), Objective::Sft);
    cfg.lora.dropout = 0.1;
    fit::run(&cfg).unwrap();
    let fin = tmp.path().join("run/final");
    assert!(
        !fin.join("model.safetensors").exists(),
        "an adapter run writes no full weights"
    );
    let ours: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fin.join("adapter_config.json")).unwrap())
            .unwrap();
    let peft: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("lm/adapter_config.json")).unwrap(),
    )
    .unwrap();
    let keys = |v: &serde_json::Value| {
        v.as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect::<BTreeSet<_>>()
    };
    assert_eq!(keys(&ours), keys(&peft));
    for k in [
        "peft_type",
        "task_type",
        "r",
        "lora_alpha",
        "bias",
        "fan_in_fan_out",
    ] {
        assert_eq!(ours[k], peft[k], "{k}");
    }
    // PEFT keeps target_modules as a set: compare them as sets.
    let set = |v: &serde_json::Value| {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_str().unwrap().to_string())
            .collect::<BTreeSet<_>>()
    };
    assert_eq!(set(&ours["target_modules"]), set(&peft["target_modules"]));
    assert_eq!(ours["lora_dropout"], 0.1);
    assert_eq!(ours["base_model_name_or_path"], model.display().to_string());
    assert_eq!(
        tensor_names(&fin.join("adapter_model.safetensors")),
        tensor_names(&fixtures().join("lm/adapter_model.safetensors"))
    );
    // AdamW state exists for the adapters only.
    let opt = tensor_names(&fin.join("trainer_state/optimizer.safetensors"));
    assert_eq!(opt.len(), 2 * 28);
    assert!(
        opt.iter()
            .all(|n| n.contains(".lora_A.") || n.contains(".lora_B.")),
        "{opt:?}"
    );
    // The probe (adapters on, dropout off) is what the merged folder computes.
    let merged = tmp.path().join("merged");
    exports::lora::merge_folder(&fin, None, &merged).unwrap();
    let (_vs, plain) = load_model(&merged, Device::Cpu, Head::Lm).unwrap();
    let probe = Checkpoint::load(&fin.join("probe.safetensors")).unwrap();
    let ids = common::fixture_tensor(&probe, "input_ids");
    let mask = common::fixture_tensor(&probe, "attention_mask");
    let got = tch::no_grad(|| plain.forward(&ids, &mask));
    let want = common::fixture_tensor(&probe, "logits");
    let d = common::max_abs_diff_where(&got, &want, &mask.unsqueeze(-1));
    assert!(d < 1e-5, "merged folder vs probe: {d}");
    // The base did not move, the adapters did.
    let (_vs0, base) = load_model(&model, Device::Cpu, Head::Lm).unwrap();
    let base_logits = tch::no_grad(|| base.forward(&ids, &mask));
    assert!(common::max_abs_diff_where(&base_logits, &want, &mask.unsqueeze(-1)) > 1e-3);
}

/// Every objective trains with adapters: the loss is finite, adapters change, the base does not
/// (only adapter tensors are written), and a reward head is trained and saved whole.
#[test]
fn every_objective_trains_adapters() {
    let tmp = tempfile::tempdir().unwrap();
    let lm = tiny_model(&tmp.path().join("lm"), 3, Head::Lm);
    let rm = tiny_model(&tmp.path().join("rm"), 3, Head::Reward);
    for (i, obj) in [
        Objective::Sft,
        Objective::BinaryCringe,
        Objective::PairwiseCringe,
        Objective::Dpo,
        Objective::Reward,
    ]
    .into_iter()
    .enumerate()
    {
        let data = write_data(
            &tmp.path().join(format!("d{i}")),
            obj != Objective::Dpo && obj != Objective::Reward,
        );
        let base = if obj == Objective::Reward { &rm } else { &lm };
        let out = tmp.path().join(format!("run{i}"));
        fit::run(&lora_fit(base, &data, &out, obj)).unwrap();
        let lines = read_metrics(&out.join("metrics.jsonl")).unwrap();
        assert!(
            lines
                .iter()
                .all(|l| l.loss.is_finite() && l.grad_norm > 0.0),
            "{obj:?}"
        );
        let a = Adapter::load(&out.join("final")).unwrap();
        let moved = a
            .modules
            .iter()
            .any(|m| m.b.to_f32().unwrap().iter().any(|&v| v != 0.0));
        assert!(moved, "{obj:?}: lora_B stayed zero");
        if obj == Objective::Reward {
            assert_eq!(a.config.task_type, exports::lora::TaskType::SeqCls);
            let before = Checkpoint::load(rm.as_path()).unwrap();
            let old = before.get("score.weight").unwrap().to_f32().unwrap();
            let new = a.saved[0].1.to_f32().unwrap();
            assert_eq!(a.saved[0].0, "score.weight");
            assert_ne!(old, new, "the reward head trains");
        } else {
            assert!(a.saved.is_empty());
        }
    }
}

/// DPO with adapters takes its reference from the same model with the adapters off; that equals
/// DPO with the reference loaded separately (and the merged model against the base), ≤ 1e-5.
#[test]
fn dpo_with_lora_equals_dpo_with_a_separate_reference() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tiny_model(&tmp.path().join("m"), 9, Head::Lm);
    let data = write_data(&tmp.path().join("d"), false);
    let mut cfg = lora_fit(&base, &data, &tmp.path().join("run"), Objective::Dpo);
    cfg.objective.beta = 0.5;
    cfg.max_steps = Some(4);
    fit::run(&cfg).unwrap();
    let adapter = tmp.path().join("run/final");
    // Fresh copies of the data so that no reference cache is shared between the three.
    let d1 = write_data(&tmp.path().join("e1"), false);
    let d2 = write_data(&tmp.path().join("e2"), false);
    let d3 = write_data(&tmp.path().join("e3"), false);
    let same = fit::evaluate(&eval_cfg(&base, &d1, Some(&adapter), None)).unwrap();
    let separate = fit::evaluate(&eval_cfg(&base, &d2, Some(&adapter), Some(&base))).unwrap();
    let merged_dir = tmp.path().join("merged");
    exports::lora::merge_folder(&adapter, Some(&base), &merged_dir).unwrap();
    let merged = fit::evaluate(&eval_cfg(&merged_dir, &d3, None, Some(&base))).unwrap();
    let (m, l) = (same.margin.unwrap(), same.loss);
    assert!(
        m.abs() > 0.05 && (l - std::f64::consts::LN_2).abs() > 1e-2,
        "training moved nothing: {l} {m}"
    );
    assert!(
        (l - separate.loss).abs() <= 1e-5,
        "{l} vs {}",
        separate.loss
    );
    assert!(
        (l - merged.loss).abs() <= 1e-5,
        "{l} vs merged {}",
        merged.loss
    );
    assert!((m - separate.margin.unwrap()).abs() <= 1e-5);
}

/// An adapter run resumes exactly, recomputing DPO's reference (cache deleted) from the resumed
/// model with its trained adapters off; adapter dropout draws the same masks.
#[test]
fn a_lora_run_resumes_exactly() {
    // Exactness needs the same dropout masks: no other test may reseed the generator meanwhile.
    let _turn = common::torch_rng_turn();
    let tmp = tempfile::tempdir().unwrap();
    let base = tiny_model(&tmp.path().join("m"), 4, Head::Lm);
    let data = write_data(&tmp.path().join("d"), false);
    let mut full = lora_fit(&base, &data, &tmp.path().join("full"), Objective::Dpo);
    full.max_steps = Some(4);
    full.save_every = Some(2);
    full.lora.dropout = 0.2;
    fit::run(&full).unwrap();
    let part = tmp.path().join("part");
    std::fs::create_dir_all(&part).unwrap();
    copy_dir(
        &tmp.path().join("full/checkpoint-2"),
        &part.join("checkpoint-2"),
    );
    let metrics = std::fs::read_to_string(tmp.path().join("full/metrics.jsonl")).unwrap();
    let first_two: String = metrics.lines().take(2).map(|l| format!("{l}\n")).collect();
    std::fs::write(part.join("metrics.jsonl"), first_two).unwrap();
    for e in std::fs::read_dir(data.parent().unwrap()).unwrap() {
        let p = e.unwrap().path();
        if p.to_string_lossy().contains(".refLogps.") {
            std::fs::remove_file(p).unwrap();
        }
    }
    let mut resumed = full.clone();
    resumed.out = part.clone();
    resumed.resume = true;
    let mut other = resumed.clone();
    other.lora.r = 8;
    let e = fit::run(&other).unwrap_err().to_string();
    assert!(e.contains("lora"), "{e}");
    fit::run(&resumed).unwrap();
    let a = read_metrics(&tmp.path().join("full/metrics.jsonl")).unwrap();
    let b = read_metrics(&part.join("metrics.jsonl")).unwrap();
    assert_eq!(b.len(), 4);
    for (x, y) in a.iter().zip(&b) {
        assert!(
            (x.loss - y.loss).abs() <= 1e-6,
            "step {}: {} vs {}",
            x.step,
            x.loss,
            y.loss
        );
    }
    let wa = Checkpoint::load(&tmp.path().join("full/final/adapter_model.safetensors")).unwrap();
    let wb = Checkpoint::load(&part.join("final/adapter_model.safetensors")).unwrap();
    assert_tensors_within(&wa, &wb, 1e-6);
}

/// `exports::lora` refuses an adapter that does not fit the base, naming the tensor.
#[test]
fn a_mismatched_adapter_is_refused_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = InitConfig::tiny(ModelType::Llama, 1);
    c.hidden_size = 64;
    init(&c, &tmp.path().join("wide")).unwrap();
    let e = exports::lora::merge_folder(
        &fixtures().join("lm"),
        Some(&tmp.path().join("wide")),
        &tmp.path().join("o"),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("lora_A.weight") && e.contains("do not fit"),
        "{e}"
    );
    assert!(!tmp.path().join("o").exists());
    let cfg = AdapterConfig::load(&fixtures().join("lm")).unwrap();
    assert_eq!((cfg.r, cfg.scaling()), (4, 2.0));
    let _ = Kind::Float;
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

/// Gradient checkpointing with adapters on a frozen model (the embeddings have no gradient, so
/// the recomputed backward must stop at the first block) trains exactly as the plain path:
/// the same losses and gradient norms at every step, and the same adapters at the end.
#[test]
fn a_lora_fit_with_gradient_checkpointing_equals_the_plain_path() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tiny_model(&tmp.path().join("m"), 8, Head::Lm);
    let data = write_data(&tmp.path().join("d"), false);
    let plain = lora_fit(&base, &data, &tmp.path().join("plain"), Objective::Dpo);
    let mut ckpt = plain.clone();
    ckpt.out = tmp.path().join("ckpt");
    ckpt.gradient_checkpointing = true;
    fit::run(&plain).unwrap();
    fit::run(&ckpt).unwrap();
    let a = read_metrics(&plain.out.join("metrics.jsonl")).unwrap();
    let b = read_metrics(&ckpt.out.join("metrics.jsonl")).unwrap();
    assert_eq!((a.len(), b.len()), (3, 3));
    for (x, y) in a.iter().zip(&b) {
        assert!(
            (x.loss - y.loss).abs() <= 1e-6 && (x.grad_norm - y.grad_norm).abs() <= 1e-6,
            "step {}: loss {} vs {}, grad norm {} vs {}",
            x.step,
            x.loss,
            y.loss,
            x.grad_norm,
            y.grad_norm
        );
        assert!(x.grad_norm > 0.0, "adapters received no gradient");
    }
    let wa = Checkpoint::load(&plain.out.join("final/adapter_model.safetensors")).unwrap();
    let wb = Checkpoint::load(&ckpt.out.join("final/adapter_model.safetensors")).unwrap();
    assert_eq!(wa.tensors.len(), wb.tensors.len());
    assert_tensors_within(&wa, &wb, 1e-6);
}

/// Every tensor of `a` is in `b` and equal to it within `tol` (max |Δ|).
fn assert_tensors_within(a: &Checkpoint, b: &Checkpoint, tol: f32) {
    for (n, t) in &a.tensors {
        let (x, y) = (t.to_f32().unwrap(), b.get(n).unwrap().to_f32().unwrap());
        let d = x
            .iter()
            .zip(&y)
            .map(|(p, q)| (p - q).abs())
            .fold(0f32, f32::max);
        assert!(d <= tol, "{n}: {d}");
    }
}
