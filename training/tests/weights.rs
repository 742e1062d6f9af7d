//! Hugging Face folder ⇄ VarStore: bit-exact round trips, named errors, the reward head started
//! from an LM folder, weight-decay groups and the probe file.

mod common;

use std::collections::BTreeSet;

use exports::checkpoint::Checkpoint;
use exports::{Head, ModelConfig, ModelType};
use tch::{Device, Kind, Tensor};
use training::model::{DECAY_GROUP, NO_DECAY_GROUP};
use training::probe::{write_probe, PROBE_FILE};
use training::weights::{load_model, save_model};
use training::Model;

fn probe_batch() -> (Tensor, Tensor) {
    let ids = common::i64_tensor(&[1, 40, 41, 42, 43, 2, 2, 50, 60, 70], &[2, 5]);
    let mask = common::i64_tensor(&[1, 1, 1, 1, 1, 0, 0, 1, 1, 1], &[2, 5]);
    (ids, mask)
}

fn config_json(dir: &std::path::Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap()
}

#[test]
fn load_save_load_is_bit_exact_for_every_architecture() {
    let cases = [
        (ModelType::Llama, true),
        (ModelType::Qwen2, false),
        (ModelType::Gpt2, true),
    ];
    for (ty, tied) in cases {
        let src = tempfile::tempdir().unwrap();
        let mut cfg = common::tiny_cfg(ty, 3, Head::Lm);
        cfg.tied = tied;
        let (vs, model) = common::tiny(src.path(), &cfg);
        // Move the weights away from what the source folder holds, so the save must read the
        // live variables rather than copy the source file.
        tch::no_grad(|| {
            for p in model.parameters() {
                let mut t = p.tensor.shallow_clone();
                let _ = t.g_add_scalar_(1.0 / 1024.0);
            }
        });
        let out = tempfile::tempdir().unwrap();
        save_model(&vs, &model, src.path(), out.path()).unwrap();
        let (_vs2, again) = load_model(out.path(), Device::Cpu, Head::Lm).unwrap();
        for (a, b) in model.parameters().iter().zip(again.parameters()) {
            assert_eq!(a.name, b.name);
            assert!(
                a.tensor.equal(&b.tensor),
                "{ty:?}: {} changed in the round trip",
                a.name
            );
        }
        let (ids, mask) = probe_batch();
        let _g = tch::no_grad_guard();
        assert!(model
            .forward(&ids, &mask)
            .equal(&again.forward(&ids, &mask)));

        // The folder is a complete HF folder of the right class, with no tied head written.
        let saved = Checkpoint::load(out.path()).unwrap();
        assert_eq!(
            saved.tensors.contains_key("lm_head.weight"),
            !tied,
            "{ty:?}"
        );
        assert!(saved
            .tensors
            .values()
            .all(|t| t.dtype == exports::DType::F32));
        let v = config_json(out.path());
        assert_eq!(v["architectures"][0], ty.causal_lm_class());
        assert_eq!(ModelConfig::load(out.path()).unwrap(), *model.config());
        for f in [
            "tokenizer.json",
            "tokenizer_config.json",
            "generation_config.json",
        ] {
            assert_eq!(
                std::fs::read(src.path().join(f)).unwrap(),
                std::fs::read(out.path().join(f)).unwrap(),
                "{f}"
            );
        }
    }
}

#[test]
fn unmodified_weights_are_written_back_byte_for_byte() {
    let src = tempfile::tempdir().unwrap();
    let (vs, model) = common::tiny(src.path(), &common::tiny_cfg(ModelType::Llama, 4, Head::Lm));
    let out = tempfile::tempdir().unwrap();
    save_model(&vs, &model, src.path(), out.path()).unwrap();
    let a = Checkpoint::load(src.path()).unwrap();
    let b = Checkpoint::load(out.path()).unwrap();
    assert_eq!(a.tensors, b.tensors);
}

#[test]
fn missing_unexpected_and_misshaped_tensors_are_all_named() {
    let dir = tempfile::tempdir().unwrap();
    common::tiny(dir.path(), &common::tiny_cfg(ModelType::Llama, 2, Head::Lm));
    let mut ckpt = Checkpoint::load(dir.path()).unwrap();
    ckpt.tensors.remove("model.layers.1.mlp.up_proj.weight");
    let norm = ckpt.tensors.remove("model.norm.weight").unwrap();
    ckpt.insert(
        "model.norm.weight",
        exports::HostTensor::from_f32(vec![31], &norm.to_f32().unwrap()[..31]),
    );
    ckpt.insert("model.layers.7.extra.weight", norm.clone());
    ckpt.save(dir.path(), None).unwrap();
    let e = format!(
        "{:#}",
        load_model(dir.path(), Device::Cpu, Head::Lm).err().unwrap()
    );
    for want in [
        "missing (1): model.layers.1.mlp.up_proj.weight",
        "unexpected (1): model.layers.7.extra.weight",
        "model.norm.weight (expected [32], got [31])",
    ] {
        assert!(e.contains(want), "`{want}` not in: {e}");
    }
}

#[test]
fn reward_head_from_an_lm_folder_is_seeded_and_saves_as_sequence_classification() {
    let src = tempfile::tempdir().unwrap();
    let mut cfg = common::tiny_cfg(ModelType::Llama, 8, Head::Lm);
    cfg.tied = false; // an lm_head.weight that the reward model must ignore
    common::tiny(src.path(), &cfg);
    let (vs, a) = load_model(src.path(), Device::Cpu, Head::Reward).unwrap();
    let (_vs, b) = load_model(src.path(), Device::Cpu, Head::Reward).unwrap();
    let score = |m: &Model| {
        m.parameters()
            .iter()
            .find(|p| p.name == "score.weight")
            .unwrap()
            .tensor
            .shallow_clone()
    };
    assert!(
        score(&a).equal(&score(&b)),
        "the initialisation is deterministic"
    );
    assert_eq!(score(&a).size(), vec![1, 32]);
    let std = score(&a).std(true).double_value(&[]);
    assert!(std > 0.008 && std < 0.04, "std {std}");

    let out = tempfile::tempdir().unwrap();
    save_model(&vs, &a, src.path(), out.path()).unwrap();
    let v = config_json(out.path());
    assert_eq!(v["architectures"][0], "LlamaForSequenceClassification");
    assert_eq!(v["num_labels"], 1);
    let saved = Checkpoint::load(out.path()).unwrap();
    assert!(saved.tensors.contains_key("score.weight"));
    assert!(!saved.tensors.contains_key("lm_head.weight"));
    let (_vs, c) = load_model(out.path(), Device::Cpu, Head::Reward).unwrap();
    let (ids, mask) = probe_batch();
    let _g = tch::no_grad_guard();
    assert!(a.score(&ids, &mask).equal(&c.score(&ids, &mask)));
    // A reward folder is not an LM: its score head is reported, not dropped.
    let e = format!(
        "{:#}",
        load_model(out.path(), Device::Cpu, Head::Lm).err().unwrap()
    );
    assert!(e.contains("score.weight"), "{e}");
}

#[test]
fn norms_and_biases_are_exempt_from_weight_decay() {
    let dir = tempfile::tempdir().unwrap();
    let (vs, model) = common::tiny(dir.path(), &common::tiny_cfg(ModelType::Gpt2, 1, Head::Lm));
    let vars = vs.variables_.lock().unwrap();
    let mut groups = std::collections::HashMap::new();
    for v in &vars.trainable_variables {
        let name = model
            .parameters()
            .iter()
            .find(|p| p.tensor.data_ptr() == v.tensor.data_ptr())
            .map(|p| p.name.clone())
            .unwrap();
        groups.insert(name, v.group);
    }
    assert_eq!(groups.len(), model.parameters().len());
    assert_eq!(groups["transformer.wte.weight"], DECAY_GROUP);
    assert_eq!(groups["transformer.h.0.attn.c_attn.weight"], DECAY_GROUP);
    assert_eq!(groups["transformer.h.0.attn.c_attn.bias"], NO_DECAY_GROUP);
    assert_eq!(groups["transformer.h.1.ln_2.weight"], NO_DECAY_GROUP);
    assert_eq!(groups["transformer.ln_f.bias"], NO_DECAY_GROUP);
    // VarStore names are the HF names.
    let names: BTreeSet<&String> = vars.named_variables.keys().collect();
    let hf: BTreeSet<&String> = model.parameters().iter().map(|p| &p.name).collect();
    assert_eq!(names, hf);
}

#[test]
fn declaring_a_model_twice_under_one_path_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (vs, model) = common::tiny(dir.path(), &common::tiny_cfg(ModelType::Llama, 1, Head::Lm));
    let e = Model::new(&vs.root(), model.config(), Head::Lm)
        .err()
        .unwrap();
    assert!(e.to_string().contains("already declared"), "{e}");
    // Under a sub-path it works, and the HF names follow the prefix.
    let other = Model::new(&(vs.root() / "reference"), model.config(), Head::Lm).unwrap();
    assert_eq!(
        other.parameters()[0].var_name,
        "reference.model.embed_tokens.weight"
    );
}

#[test]
fn probe_holds_the_models_own_outputs() {
    for head in [Head::Lm, Head::Reward] {
        let dir = tempfile::tempdir().unwrap();
        let (_vs, model) = common::tiny(dir.path(), &common::tiny_cfg(ModelType::Qwen2, 9, head));
        write_probe(&model, dir.path()).unwrap();
        let probe = Checkpoint::load(&dir.path().join(PROBE_FILE)).unwrap();
        // The model's own weights are untouched by writing the probe next to them.
        assert!(Checkpoint::load(dir.path())
            .unwrap()
            .tensors
            .contains_key("model.embed_tokens.weight"));
        let ids = common::fixture_tensor(&probe, "input_ids");
        let mask = common::fixture_tensor(&probe, "attention_mask");
        assert_eq!(ids.size(), vec![3, 16]);
        assert_eq!(mask.sum(Kind::Int64).int64_value(&[]), 16 + 12 + 9);
        let _g = tch::no_grad_guard();
        match head {
            Head::Lm => {
                let logits = common::fixture_tensor(&probe, "logits");
                assert_eq!(logits.size(), vec![3, 16, 279]);
                assert!(logits.equal(&model.forward(&ids, &mask)));
            }
            Head::Reward => {
                let scores = common::fixture_tensor(&probe, "scores");
                assert!(scores.equal(&model.score(&ids, &mask)));
            }
        }
    }
}
