//! Checkpoints of a run: `<out>/checkpoint-<step>/` during training and `<out>/final/` at the end,
//! each a Hugging Face model folder (weights via `weights::save_model`; with LoRA a PEFT adapter
//! folder via `weights::save_adapter` instead), `probe.safetensors` (with LoRA: the adapted model's
//! outputs, which a merged export must reproduce), plus
//! `trainer_state/` — `state.json` (step, data position, RNG scheme, the run's settings) and
//! `optimizer.safetensors` (AdamW moments). Written under a temporary name and renamed.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::model::Model;
use crate::optim::AdamW;

pub const STATE_DIR: &str = "trainer_state";
pub const STATE_FILE: &str = "state.json";
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
pub const FINAL_DIR: &str = "final";

/// `trainer_state/state.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainerState {
    /// Optimizer steps completed.
    pub step: u64,
    pub total_steps: u64,
    /// Data position of the next step: epoch and batch within the epoch.
    pub epoch: u64,
    pub batch_in_epoch: u64,
    pub seed: u64,
    /// How the cringe draws are derived (no mutable RNG state is carried between steps).
    pub rng: String,
    /// The run's settings, as TOML would spell them.
    pub config: serde_json::Value,
    /// DPO reference caches the run reads.
    pub reference_caches: Vec<PathBuf>,
}

pub const RNG_SCHEME: &str =
    "ChaCha8(splitmix64(seed ^ splitmix64(step))), stream = example position in the optimizer batch";

/// What goes into one checkpoint.
pub struct CheckpointParts<'a> {
    pub vs: &'a tch::nn::VarStore,
    pub model: &'a Model,
    pub tokenizer_src: &'a Path,
    pub optimizer: &'a AdamW,
    pub state: &'a TrainerState,
}

fn to_exports(e: anyhow::Error) -> exports::Error {
    exports::Error::Invalid(format!("{e:#}"))
}

/// Write a checkpoint folder atomically.
pub fn save(dir: &Path, parts: &CheckpointParts) -> Result<()> {
    exports::fsutil::write_dir_atomic(dir, |tmp| {
        (|| -> Result<()> {
            if parts.model.lora().is_some() {
                // The base is the run's starting model, which also holds the tokenizer.
                let base = parts.tokenizer_src;
                crate::weights::save_adapter(parts.model, base, parts.tokenizer_src, tmp)?;
            } else {
                crate::weights::save_model(parts.vs, parts.model, parts.tokenizer_src, tmp)?;
            }
            crate::probe::write_probe(parts.model, tmp)?;
            let sd = tmp.join(STATE_DIR);
            std::fs::create_dir_all(&sd).with_context(|| format!("creating {}", sd.display()))?;
            parts.optimizer.save(&sd.join(OPTIMIZER_FILE))?;
            let text = serde_json::to_string_pretty(parts.state)?;
            exports::fsutil::write_atomic(&sd.join(STATE_FILE), text.as_bytes())?;
            Ok(())
        })()
        .map_err(to_exports)
    })
    .with_context(|| format!("writing checkpoint {}", dir.display()))
}

pub fn read_state(dir: &Path) -> Result<TrainerState> {
    let path = dir.join(STATE_DIR).join(STATE_FILE);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// Checkpoint folders of `out` (`checkpoint-*` and `final`) with their states.
pub fn list(out: &Path) -> Result<Vec<(PathBuf, TrainerState)>> {
    let mut found = Vec::new();
    if !out.exists() {
        return Ok(found);
    }
    for entry in std::fs::read_dir(out).with_context(|| format!("listing {}", out.display()))? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if (name.starts_with("checkpoint-") || name == FINAL_DIR)
            && path.join(STATE_DIR).join(STATE_FILE).exists()
        {
            let state = read_state(&path)?;
            found.push((path, state));
        }
    }
    found.sort_by_key(|(p, s)| (s.step, p.file_name().map(|n| n == FINAL_DIR)));
    Ok(found)
}

/// The checkpoint with the most steps in `out`, if any.
pub fn latest(out: &Path) -> Result<Option<(PathBuf, TrainerState)>> {
    Ok(list(out)?.pop())
}

/// Delete all but the newest `keep` complete `checkpoint-<step>` folders of `out` (never `final`).
pub fn prune_checkpoints(out: &Path, keep: usize) -> Result<()> {
    let checkpoints: Vec<PathBuf> = list(out)?
        .into_iter()
        .map(|(path, _)| path)
        .filter(|p| p.file_name().is_some_and(|n| n != FINAL_DIR))
        .collect();
    let old = checkpoints.len().saturating_sub(keep);
    for dir in &checkpoints[..old] {
        std::fs::remove_dir_all(dir)
            .with_context(|| format!("deleting the old checkpoint {}", dir.display()))?;
        tracing::info!(dir = %dir.display(), "deleted an old checkpoint (save_total_limit)");
    }
    Ok(())
}

pub fn checkpoint_dir(out: &Path, step: u64) -> PathBuf {
    out.join(format!("checkpoint-{step}"))
}
