//! From JSONL records to padded tensors (`DATA.md`, "How a record becomes token ids").
//!
//! * [`Dataset::load`] reads pairs and binary feedback (`exports::records::TrainRecord`, mixed
//!   freely; JSON Lines or Parquet; ours or TRL's forms; extra fields ignored), encodes each
//!   response with `exports::Tokenizer::example` under `exports::Truncation::Prompt` (prompt cut
//!   from the left, response never) and skips — and counts — records that still do not fit.
//! * [`plan`] orders examples into length-bucketed optimizer batches, deterministically from the
//!   seed and epoch.
//! * [`collate`] turns one micro-batch into right-padded tensors in the row layout of
//!   `crate::objectives::Layout`.

mod collate;
pub mod plan;

pub use collate::{collate, cringe_stream, CollateConfig, MicroBatch};

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use exports::records::{for_each_record, Completion, FinishReason, Prompt, TrainRecord};
use exports::tokenizer::Example;
use exports::{Tokenizer, Truncation};

use crate::objectives::Objective;

/// One training example after encoding.
#[derive(Debug, Clone)]
pub enum Item {
    Pair {
        chosen: Example,
        rejected: Example,
        /// Reference-model sequence log-probs `(chosen, rejected)` (DPO only).
        reference: Option<(f64, f64)>,
    },
    Binary {
        example: Example,
        /// `true`: a positive (likelihood); `false`: a negative (cringe).
        label: bool,
    },
}

impl Item {
    /// Padded length this example needs.
    pub fn padded_len(&self) -> usize {
        match self {
            Item::Pair {
                chosen, rejected, ..
            } => chosen.ids.len().max(rejected.ids.len()),
            Item::Binary { example, .. } => example.ids.len(),
        }
    }

    /// Non-padding tokens this example feeds the model.
    pub fn tokens(&self) -> usize {
        match self {
            Item::Pair {
                chosen, rejected, ..
            } => chosen.ids.len() + rejected.ids.len(),
            Item::Binary { example, .. } => example.ids.len(),
        }
    }
}

/// Where an item came from (file and 1-based line), for caches and error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub file: usize,
    pub line: usize,
}

/// Counts of what loading did with the records.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadReport {
    pub records: usize,
    pub pairs: usize,
    pub positives: usize,
    pub negatives: usize,
    /// Records whose response does not fit `max_length` even after dropping the whole prompt.
    pub too_long: usize,
    /// Records the objective has no use for (negatives under `sft`).
    pub unused: usize,
    /// Records whose prompt was cut from the left to fit.
    pub truncated: usize,
}

/// Encoded examples of one or more JSONL files.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub files: Vec<PathBuf>,
    pub items: Vec<Item>,
    pub origins: Vec<Origin>,
    pub report: LoadReport,
}

/// How records are encoded.
#[derive(Debug, Clone, PartialEq)]
pub struct EncodeConfig {
    pub objective: Objective,
    /// Longest sequence (prompt + response + EOS); `None` for no limit.
    pub max_length: Option<usize>,
}

impl Dataset {
    /// Read and encode every record of `files`.
    pub fn load(files: &[PathBuf], tok: &Tokenizer, cfg: &EncodeConfig) -> Result<Dataset> {
        let mut ds = Dataset {
            files: files.to_vec(),
            items: Vec::new(),
            origins: Vec::new(),
            report: LoadReport::default(),
        };
        for (fi, path) in files.iter().enumerate() {
            for_each_record::<TrainRecord>(path, |at, rec| {
                ds.push(fi, at.ordinal(), rec, tok, cfg)
                    .map_err(|e| exports::Error::Invalid(format!("{}{at}: {e:#}", path.display())))
            })
            .with_context(|| format!("reading training records from {}", path.display()))?;
        }
        if ds.items.is_empty() {
            bail!(
                "no usable examples in {} ({} records, {} too long for max_length {:?}, {} unused by {})",
                display_files(files),
                ds.report.records,
                ds.report.too_long,
                cfg.max_length,
                ds.report.unused,
                cfg.objective
            );
        }
        Ok(ds)
    }

    fn push(
        &mut self,
        file: usize,
        line: usize,
        rec: TrainRecord,
        tok: &Tokenizer,
        cfg: &EncodeConfig,
    ) -> Result<()> {
        self.report.records += 1;
        // A response cut by the token limit keeps its closing EOS only for the reward head, which
        // reads that position; LM objectives must not learn to stop where the text was cut.
        let lm = !cfg.objective.is_reward();
        let fit = |prompt: &Prompt, response: &Completion, finish: Option<FinishReason>| {
            let ended = !lm || FinishReason::ended(finish);
            tok.example(prompt, response, ended, cfg.max_length, Truncation::Prompt)
        };
        let item = match rec {
            TrainRecord::Pair(p) if cfg.objective == Objective::Sft => {
                fit(&p.prompt, &p.chosen, p.chosen_finish_reason)?.map(|example| Item::Binary {
                    example,
                    label: true,
                })
            }
            TrainRecord::Pair(p) => {
                match (
                    fit(&p.prompt, &p.chosen, p.chosen_finish_reason)?,
                    fit(&p.prompt, &p.rejected, p.rejected_finish_reason)?,
                ) {
                    (Some(chosen), Some(rejected)) => Some(Item::Pair {
                        chosen,
                        rejected,
                        reference: None,
                    }),
                    _ => None,
                }
            }
            TrainRecord::Binary(_) if cfg.objective.needs_pairs() => {
                bail!(
                    "`{}` trains on pairs; this is a binary feedback record",
                    cfg.objective
                )
            }
            TrainRecord::Binary(b) if cfg.objective == Objective::Sft && !b.label => {
                self.report.unused += 1;
                return Ok(());
            }
            TrainRecord::Binary(b) => {
                fit(&b.prompt, &b.response, b.finish_reason)?.map(|example| Item::Binary {
                    example,
                    label: b.label,
                })
            }
        };
        let Some(item) = item else {
            self.report.too_long += 1;
            return Ok(());
        };
        match &item {
            Item::Pair {
                chosen, rejected, ..
            } => {
                self.report.pairs += 1;
                self.report.truncated += usize::from(chosen.truncated + rejected.truncated > 0);
            }
            Item::Binary { example, label } => {
                if *label {
                    self.report.positives += 1;
                } else {
                    self.report.negatives += 1;
                }
                self.report.truncated += usize::from(example.truncated > 0);
            }
        }
        self.items.push(item);
        self.origins.push(Origin { file, line });
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn lengths(&self) -> Vec<usize> {
        self.items.iter().map(Item::padded_len).collect()
    }
}

pub fn display_files(files: &[PathBuf]) -> String {
    files
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The default `max_length` for a model folder: its context size, capped at 2048 tokens.
pub fn default_max_length(model_max_positions: usize) -> usize {
    model_max_positions.min(2048)
}

/// True when `path` looks like a JSONL data file (used to give a clear error before tokenizing).
pub fn check_data_file(path: &Path) -> Result<()> {
    if !path.is_file() {
        bail!("data file {} does not exist", path.display());
    }
    Ok(())
}
