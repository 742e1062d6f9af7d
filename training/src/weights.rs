//! Hugging Face model folders ⇄ a `VarStore` holding a [`Model`], through `exports::Checkpoint`.
//!
//! Loading builds the model first (declaring every parameter under its HF name), then fills each
//! one by name under `no_grad`. Any missing, unexpected or mis-shaped tensor is an error that lists
//! all of them at once. Saving writes fp32 `model.safetensors` (bit-exact round trip), `config.json`
//! for the head's HF class, the tokenizer files and `generation_config.json`.

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::{bail, Context};
use exports::checkpoint::{Checkpoint, DType, HostTensor};
use exports::{Head, ModelConfig};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tch::{Device, Kind, Tensor};

use crate::model::Model;

/// Seed of the `score.weight` initialisation when a reward model starts from an LM folder.
pub const SCORE_INIT_SEED: u64 = 0x5C04E;
/// Standard deviation of that initialisation (transformers' `initializer_range` default).
pub const SCORE_INIT_STD: f64 = 0.02;

/// The files of a model folder that describe its tokenizer, copied by [`save_model`].
pub const TOKENIZER_FILES: &[&str] = &[
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
];

/// Load the model in HF folder `dir` onto `device` with `head`.
///
/// A reward head loaded from an LM folder (no `score.weight`) gets `score.weight` drawn from a
/// normal distribution with std [`SCORE_INIT_STD`] from a ChaCha8 stream seeded with
/// [`SCORE_INIT_SEED`] (so every run starts from the same head), and the LM folder's
/// `lm_head.weight`, if any, is ignored; both are reported with `tracing::warn`.
pub fn load_model(
    dir: &Path,
    device: Device,
    head: Head,
) -> anyhow::Result<(tch::nn::VarStore, Model)> {
    let cfg = ModelConfig::load(dir)
        .with_context(|| format!("loading the model config of {}", dir.display()))?;
    if head == Head::Reward {
        if let Some(n) = cfg.num_labels.filter(|&n| n != 1) {
            bail!(
                "{}: a reward model needs num_labels = 1, this config has {n}",
                dir.display()
            );
        }
    }
    let vs = tch::nn::VarStore::new(device);
    let model = Model::new(&vs.root(), &cfg, head)?;
    let ckpt = Checkpoint::load(dir)
        .with_context(|| format!("reading the weights of {}", dir.display()))?;
    fill_from_checkpoint(&model, &ckpt)?;
    Ok((vs, model))
}

/// GPT-2 checkpoints from the original repositories name tensors without the `transformer.`
/// prefix and carry attention-mask buffers; map them to the layout's names.
fn canonical_name(cfg: &ModelConfig, name: &str) -> Option<String> {
    if cfg.model_type.is_llama_family() {
        return Some(name.to_string());
    }
    if name.ends_with(".attn.bias") || name.ends_with(".attn.masked_bias") {
        return None; // causal-mask buffers, not parameters
    }
    if name.starts_with("transformer.") || name == "lm_head.weight" || name == "score.weight" {
        Some(name.to_string())
    } else {
        Some(format!("transformer.{name}"))
    }
}

/// A checkpoint tensor as an fp32 libtorch tensor on the CPU.
pub fn host_to_tensor(name: &str, t: &HostTensor) -> anyhow::Result<Tensor> {
    let kind = match t.dtype {
        DType::F32 => Kind::Float,
        DType::F16 => Kind::Half,
        DType::BF16 => Kind::BFloat16,
        other => {
            bail!("tensor `{name}` has dtype {other:?}; model weights must be f32, f16 or bf16")
        }
    };
    let dims: Vec<i64> = t.shape.iter().map(|&d| d as i64).collect();
    let tensor = Tensor::f_from_data_size(&t.data, &dims, kind)
        .with_context(|| format!("tensor `{name}`"))?;
    Ok(tensor.to_kind(Kind::Float))
}

/// An fp32 host copy of a libtorch tensor (any device).
pub fn tensor_to_host(t: &Tensor) -> anyhow::Result<HostTensor> {
    let t = t
        .detach()
        .to_device(Device::Cpu)
        .to_kind(Kind::Float)
        .contiguous();
    let shape: Vec<usize> = t.size().iter().map(|&d| d as usize).collect();
    let numel = t.numel();
    let mut data = vec![0u8; numel * 4];
    t.f_copy_data_u8(&mut data, numel)?;
    Ok(HostTensor {
        dtype: DType::F32,
        shape,
        data,
    })
}

/// Normal(0, std) values from a ChaCha8 stream (Box–Muller), independent of libtorch's RNG.
fn seeded_normal(n: usize, seed: u64, std: f64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let u1: f64 = 1.0 - rng.random::<f64>(); // (0, 1]
            let u2: f64 = rng.random::<f64>();
            (std * (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
        })
        .collect()
}

/// Fill every parameter of `model` from `ckpt` by name (see [`load_model`]).
pub fn fill_from_checkpoint(model: &Model, ckpt: &Checkpoint) -> anyhow::Result<()> {
    let cfg = model.config();
    let mut by_name = std::collections::BTreeMap::new();
    for (name, t) in &ckpt.tensors {
        if let Some(canon) = canonical_name(cfg, name) {
            by_name.insert(canon, t);
        }
    }
    let expected: BTreeSet<&str> = model.parameters().iter().map(|p| p.name.as_str()).collect();
    let mut missing = Vec::new();
    let mut misshaped = Vec::new();
    let mut init_score = false;
    for p in model.parameters() {
        match by_name.get(p.name.as_str()) {
            None if p.name == "score.weight" => init_score = true,
            None => missing.push(p.name.clone()),
            Some(t) => {
                let want: Vec<usize> = p.tensor.size().iter().map(|&d| d as usize).collect();
                if t.shape != want {
                    misshaped.push(format!("{} (expected {want:?}, got {:?})", p.name, t.shape));
                }
            }
        }
    }
    let mut ignored = Vec::new();
    let mut unexpected = Vec::new();
    for (name, t) in &by_name {
        if expected.contains(name.as_str()) {
            continue;
        }
        if name == "lm_head.weight" {
            if model.head() == Head::Reward {
                ignored.push(name.clone());
                continue;
            }
            // Some exporters write a tied head out as well: accept it if it is the embedding.
            let emb = by_name.get(exports::layout::embedding_name(cfg));
            if cfg.tie_word_embeddings
                && emb.is_some_and(|e| e.data == t.data && e.dtype == t.dtype)
            {
                continue;
            }
        }
        unexpected.push(name.clone());
    }
    if !(missing.is_empty() && unexpected.is_empty() && misshaped.is_empty()) {
        let mut msg = format!(
            "{}: the checkpoint does not match a {} model with a {:?} head",
            ckpt.source.display(),
            cfg.model_type.as_str(),
            model.head()
        );
        for (what, names) in [
            ("missing", &missing),
            ("unexpected", &unexpected),
            ("mis-shaped", &misshaped),
        ] {
            if !names.is_empty() {
                msg.push_str(&format!(
                    "\n  {what} ({}): {}",
                    names.len(),
                    names.join(", ")
                ));
            }
        }
        bail!(msg);
    }
    let _guard = tch::no_grad_guard();
    for p in model.parameters() {
        let src = match by_name.get(p.name.as_str()) {
            Some(t) => host_to_tensor(&p.name, t)?,
            None => {
                let n = p.tensor.numel();
                Tensor::from_slice(&seeded_normal(n, SCORE_INIT_SEED, SCORE_INIT_STD))
                    .view(p.tensor.size().as_slice())
            }
        };
        let mut dst = p.tensor.shallow_clone();
        dst.f_copy_(&src.to_device(dst.device()))
            .with_context(|| format!("copying `{}`", p.name))?;
    }
    if init_score {
        tracing::warn!(
            source = %ckpt.source.display(),
            "no score.weight in this LM checkpoint: the reward head starts from normal(0, {SCORE_INIT_STD}) \
             drawn with seed {SCORE_INIT_SEED:#x}"
        );
    }
    if !ignored.is_empty() {
        tracing::warn!(source = %ckpt.source.display(), "ignoring {} (not part of a reward model)", ignored.join(", "));
    }
    Ok(())
}

/// The fp32 checkpoint of `model`'s parameters, read from `vs` by their variable names.
pub fn checkpoint_of(vs: &tch::nn::VarStore, model: &Model) -> anyhow::Result<Checkpoint> {
    let vars = vs.variables();
    let mut ckpt = Checkpoint::new();
    for p in model.parameters() {
        let t = vars
            .get(&p.var_name)
            .with_context(|| format!("variable `{}` is not in this VarStore", p.var_name))?;
        ckpt.insert(
            p.name.clone(),
            tensor_to_host(t).with_context(|| format!("reading `{}`", p.name))?,
        );
    }
    Ok(ckpt)
}

/// Write `model` as a Hugging Face folder `dir`: `config.json` (the head's HF class),
/// `model.safetensors` in fp32 (a tied head is not written), the tokenizer files of
/// `tokenizer_src` and its `generation_config.json` (or one made from the config).
pub fn save_model(
    vs: &tch::nn::VarStore,
    model: &Model,
    tokenizer_src: &Path,
    dir: &Path,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut cfg = model.config().clone();
    let arch = match model.head() {
        Head::Lm => {
            cfg.num_labels = None;
            cfg.model_type.causal_lm_class()
        }
        Head::Reward => {
            cfg.num_labels = Some(1);
            cfg.model_type.sequence_classification_class()
        }
    };
    checkpoint_of(vs, model)?
        .save(dir, None)
        .with_context(|| format!("writing the weights to {}", dir.display()))?;
    cfg.save(dir, arch)?;
    copy_tokenizer(tokenizer_src, dir)?;
    if !dir.join("generation_config.json").exists() {
        exports::init::write_generation_config(dir, &cfg)?;
    }
    Ok(())
}

/// Write `model`'s LoRA adapters as PEFT does into `dir`: `adapter_config.json` (with `base` as
/// `base_model_name_or_path`) and `adapter_model.safetensors` (fp32, PEFT's names), plus the
/// tokenizer files of `tokenizer_src` (as TRL saves them beside an adapter).
pub fn save_adapter(
    model: &Model,
    base: &Path,
    tokenizer_src: &Path,
    dir: &Path,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    model
        .adapter_checkpoint()?
        .save_file(&dir.join(exports::lora::ADAPTER_WEIGHTS_FILE))
        .with_context(|| format!("writing the adapter to {}", dir.display()))?;
    model.adapter_config(base)?.save(dir)?;
    copy_tokenizer(tokenizer_src, dir)
}

/// Copy the tokenizer files and `generation_config.json` of `src` into `dir` (unless they are
/// the same folder).
fn copy_tokenizer(tokenizer_src: &Path, dir: &Path) -> anyhow::Result<()> {
    let same_folder = match (tokenizer_src.canonicalize(), dir.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    if !same_folder {
        if !tokenizer_src.join("tokenizer.json").exists() {
            bail!("{}: no tokenizer.json to copy", tokenizer_src.display());
        }
        for name in TOKENIZER_FILES
            .iter()
            .chain(["generation_config.json"].iter())
        {
            let src = tokenizer_src.join(name);
            if src.exists() {
                let bytes =
                    std::fs::read(&src).with_context(|| format!("reading {}", src.display()))?;
                exports::fsutil::write_atomic(&dir.join(name), &bytes)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_normal_is_deterministic_with_the_requested_spread() {
        let a = seeded_normal(20_000, 1, 0.02);
        assert_eq!(a, seeded_normal(20_000, 1, 0.02));
        let mean = a.iter().map(|&v| v as f64).sum::<f64>() / a.len() as f64;
        let var = a.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / a.len() as f64;
        assert!(mean.abs() < 1e-3, "{mean}");
        assert!((var.sqrt() - 0.02).abs() < 5e-4, "{}", var.sqrt());
    }

    #[test]
    fn gpt2_names_without_prefix_and_mask_buffers_are_mapped() {
        let cfg = exports::ModelConfig::from_json(
            &serde_json::json!({"model_type": "gpt2", "vocab_size": 10, "n_embd": 8, "n_layer": 1,
                "n_head": 2, "n_positions": 16}),
            Path::new("config.json"),
        )
        .unwrap();
        assert_eq!(
            canonical_name(&cfg, "h.0.ln_1.weight").unwrap(),
            "transformer.h.0.ln_1.weight"
        );
        assert_eq!(
            canonical_name(&cfg, "transformer.wte.weight").unwrap(),
            "transformer.wte.weight"
        );
        assert_eq!(canonical_name(&cfg, "h.0.attn.bias"), None);
        assert_eq!(
            canonical_name(&cfg, "lm_head.weight").unwrap(),
            "lm_head.weight"
        );
    }
}
