//! DPO's reference log-probabilities: `log pi_ref(y|x)` of every pair under the frozen starting
//! model, computed once before training and cached beside each data file as
//! `<data>.refLogps.<key>.json`, where `key` hashes the data file, the model's weights, config and
//! tokenizer, and the encoding settings. A resumed run (or a second run on the same data) reads the
//! cache instead of keeping a second model in memory.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use exports::Head;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tch::Device;

use crate::data::{collate, CollateConfig, Dataset, Item};
use crate::model::Model;
use crate::objectives::{seq_terms, Objective};

/// Where and how reference log-probs are computed.
#[derive(Debug, Clone)]
pub struct ReferenceConfig {
    /// The frozen reference model (the run's starting model).
    pub model_dir: PathBuf,
    pub device: Device,
    pub max_length: Option<usize>,
    pub train_on_prompt: bool,
    /// Pairs per forward pass.
    pub batch_size: usize,
    pub autocast: bool,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CacheFile {
    key: String,
    data: String,
    model: String,
    /// 1-based line → `[chosen, rejected]` summed response log-probs.
    logps: BTreeMap<usize, [f64; 2]>,
}

fn hash_file(h: &mut Sha256, path: &Path) -> Result<()> {
    let mut f = std::fs::File::open(path).with_context(|| format!("hashing {}", path.display()))?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .with_context(|| format!("hashing {}", path.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    h.update(b"\0");
    Ok(())
}

/// The cache key of `data` under reference model `cfg.model_dir`.
pub fn cache_key(data: &Path, cfg: &ReferenceConfig) -> Result<String> {
    let mut h = Sha256::new();
    h.update(b"refLogps v1\0");
    hash_file(&mut h, data)?;
    let mut model_files: Vec<PathBuf> = std::fs::read_dir(&cfg.model_dir)
        .with_context(|| format!("listing {}", cfg.model_dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            name.ends_with(".safetensors") && name != "probe.safetensors"
                || matches!(
                    name,
                    "config.json"
                        | "tokenizer.json"
                        | "tokenizer_config.json"
                        | "chat_template.jinja"
                )
        })
        .collect();
    model_files.sort();
    for p in &model_files {
        h.update(
            p.file_name()
                .map(|n| n.as_encoded_bytes())
                .unwrap_or_default(),
        );
        hash_file(&mut h, p)?;
    }
    h.update(
        format!(
            "max_length={:?};train_on_prompt={}",
            cfg.max_length, cfg.train_on_prompt
        )
        .as_bytes(),
    );
    let digest = h.finalize();
    Ok(digest.iter().take(8).map(|b| format!("{b:02x}")).collect())
}

/// `<data>.refLogps.<key>.json`.
pub fn cache_path(data: &Path, key: &str) -> PathBuf {
    let name = data
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    data.with_file_name(format!("{name}.refLogps.{key}.json"))
}

/// Fill `reference` of every pair of `ds`, from caches where they exist, otherwise by running the
/// reference model (`model` when given — with its LoRA adapters off, if it has any — else loaded
/// from `cfg.model_dir`). Returns the cache files.
pub fn attach(
    ds: &mut Dataset,
    cfg: &ReferenceConfig,
    model: Option<&Model>,
) -> Result<Vec<PathBuf>> {
    let mut caches = Vec::new();
    let mut missing: Vec<usize> = Vec::new();
    let mut keys = Vec::new();
    for (fi, file) in ds.files.iter().enumerate() {
        let key = cache_key(file, cfg)?;
        let path = cache_path(file, &key);
        let cached: Option<CacheFile> = if path.exists() {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            Some(
                serde_json::from_str(&text)
                    .with_context(|| format!("parsing {}", path.display()))?,
            )
        } else {
            None
        };
        for (i, (item, origin)) in ds.items.iter_mut().zip(&ds.origins).enumerate() {
            if origin.file != fi {
                continue;
            }
            if let Item::Pair { reference, .. } = item {
                match cached.as_ref().and_then(|c| c.logps.get(&origin.line)) {
                    Some([c, r]) => *reference = Some((*c, *r)),
                    None => missing.push(i),
                }
            }
        }
        keys.push((path.clone(), key, cached.is_some()));
        caches.push(path);
    }
    if missing.is_empty() {
        tracing::info!(files = caches.len(), "reference log-probs read from cache");
        return Ok(caches);
    }
    tracing::info!(pairs = missing.len(), model = %cfg.model_dir.display(), "computing reference log-probs");
    let loaded;
    let model = match model {
        Some(m) => m,
        None => {
            loaded = crate::weights::load_model(&cfg.model_dir, cfg.device, Head::Lm)?;
            &loaded.1
        }
    };
    let pad = exports::encode::config_pad_id(model.config()).as_i64();
    let ccfg = CollateConfig {
        // sft collation: rows without cringe draws or reference tensors.
        objective: Objective::Sft,
        pad,
        device: cfg.device,
        seed: 0,
        step: 0,
        train_on_prompt: cfg.train_on_prompt,
    };
    let _guard = tch::no_grad_guard();
    for chunk in missing.chunks(cfg.batch_size.max(1)) {
        let items: Vec<(usize, &Item)> = chunk.iter().map(|&i| (i, &ds.items[i])).collect();
        let mb = collate(&items, &ccfg)?;
        let p = mb.layout.pairs as i64;
        // A LoRA model is its own reference with the adapters off (the base model).
        let logp = model.without_adapters(|| {
            crate::amp::autocast(cfg.device, cfg.autocast, || -> Result<tch::Tensor> {
                let logits = model.forward(&mb.input_ids, &mb.attention_mask);
                Ok(seq_terms(&logits, &mb.input_ids, &mb.response_mask, None, None)?.logp_sum)
            })
        })?;
        let logp = Vec::<f64>::try_from(logp.to_kind(tch::Kind::Double).to_device(Device::Cpu))?;
        for (j, &i) in chunk.iter().enumerate() {
            if let Item::Pair { reference, .. } = &mut ds.items[i] {
                *reference = Some((logp[p as usize + j], logp[j]));
            }
        }
    }
    for (fi, (path, key, _)) in keys.iter().enumerate() {
        let mut logps = BTreeMap::new();
        for (item, origin) in ds.items.iter().zip(&ds.origins) {
            if let (
                Item::Pair {
                    reference: Some((c, r)),
                    ..
                },
                true,
            ) = (item, origin.file == fi)
            {
                logps.insert(origin.line, [*c, *r]);
            }
        }
        let file = CacheFile {
            key: key.clone(),
            data: ds.files[fi].display().to_string(),
            model: cfg.model_dir.display().to_string(),
            logps,
        };
        let text = serde_json::to_string(&file)?;
        exports::fsutil::write_atomic(path, text.as_bytes())?;
    }
    if ds.items.iter().any(|i| {
        matches!(
            i,
            Item::Pair {
                reference: None,
                ..
            }
        )
    }) {
        bail!("some pairs have no reference log-probs; this is a bug");
    }
    Ok(caches)
}
