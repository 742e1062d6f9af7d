//! Reward-model scoring: an exported reward graph (`exports onnx --head reward`, output `score`
//! `[batch]`, LOSSES.md's head on the last non-padding token) behind the [`Scorer`] trait, so that
//! `engine label --reward-model` and the win rate of `engine eval` use it like any other scorer.
//!
//! Each (prompt, response) becomes `ids(prompt) ++ ids(response) ++ [eos]` by DATA.md's rule
//! (`exports::Tokenizer::example`, the token policy of `exports::encode`), as in training. Items are sorted by length and cut into
//! batches of at most `batch_size` rows, each right-padded with the pad token (both graph flavors
//! accept right padding, and the head picks each row's last real token), so scores do not depend
//! on batching. A sequence longer than the model's context (`max_position_embeddings`) is cut by
//! `exports::Truncation::KeepEnd`: prompt tokens from the left, and if the response alone is too
//! long, the sequence keeps its last tokens (the head reads the end).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use exports::tokenizer::ids_to_i64;
use exports::{Completion, ModelConfig, Tokenizer, Truncation};

use crate::runtime::Runtime;
use crate::scorer::{ScoreItem, Scorer};
use crate::session::{DecoderSession, HeadOutput, SessionOptions};

/// Settings of a reward-model scorer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RewardModelConfig {
    /// Exported folder: `model.onnx`, `config.json`, `tokenizer.json`, `tokenizer_config.json`.
    pub dir: PathBuf,
    /// Rows per forward pass.
    pub batch_size: usize,
    /// Device, threads and CUDA options of the session (`--device`, `--threads`).
    pub session: SessionOptions,
    /// ONNX Runtime library (`--ort-lib`); found by `runtime::locate_library` when `None`.
    pub ort_lib: Option<PathBuf>,
}

impl RewardModelConfig {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        RewardModelConfig {
            dir: dir.into(),
            batch_size: 16,
            session: SessionOptions::default(),
            ort_lib: None,
        }
    }
}

/// The process's ONNX Runtime (see [`Runtime::shared`]).
pub fn shared_runtime(ort_lib: Option<&Path>) -> Result<&'static Runtime> {
    Runtime::shared(ort_lib)
}

/// A loaded reward model.
pub struct RewardModelScorer {
    session: DecoderSession,
    tokenizer: Tokenizer,
    max_length: Option<usize>,
    batch_size: usize,
    tokens: u64,
    dir: PathBuf,
}

impl RewardModelScorer {
    /// Load the reward graph and its tokenizer on the process's [`shared_runtime`].
    pub fn open(cfg: &RewardModelConfig) -> Result<Self> {
        if cfg.batch_size == 0 {
            bail!("reward model batch size must be at least 1");
        }
        let runtime = shared_runtime(cfg.ort_lib.as_deref())?;
        let session = DecoderSession::load(runtime, &cfg.dir, &cfg.session)?;
        if session.io().head != HeadOutput::Score {
            bail!(
                "{}: not a reward model (the graph outputs `logits`, not `score`); export it with the reward head",
                cfg.dir.display()
            );
        }
        let tokenizer = Tokenizer::load(&cfg.dir)?;
        let config = cfg.dir.join("config.json");
        let max_length = if config.is_file() {
            Some(ModelConfig::load(&config)?.max_position_embeddings)
        } else {
            None
        };
        Ok(RewardModelScorer {
            session,
            tokenizer,
            max_length,
            batch_size: cfg.batch_size,
            tokens: 0,
            dir: cfg.dir.clone(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `ids(prompt) ++ ids(response) ++ [eos]`, fitted to the model's context.
    fn encode(&self, item: &ScoreItem<'_>) -> Result<Vec<i64>> {
        let response = Completion::Text(item.response.to_owned());
        let ex = self
            .tokenizer
            .example(
                item.prompt,
                &response,
                true,
                self.max_length,
                Truncation::KeepEnd,
            )?
            .context("KeepEnd truncation refused a sequence; this is a bug")?;
        Ok(ids_to_i64(&ex.ids))
    }

    /// Scores of rows that are already tokenized (one batch, right-padded here).
    fn score_batch(&mut self, rows: &[&[i64]]) -> Result<Vec<f32>> {
        let width = rows.iter().map(|r| r.len()).max().unwrap_or(0);
        let pad = self.tokenizer.pad().as_i64();
        let mut ids = Vec::with_capacity(rows.len() * width);
        let mut mask = Vec::with_capacity(rows.len() * width);
        for r in rows {
            ids.extend_from_slice(r);
            ids.extend(std::iter::repeat_n(pad, width - r.len()));
            mask.extend(std::iter::repeat_n(1i64, r.len()));
            mask.extend(std::iter::repeat_n(0i64, width - r.len()));
        }
        self.session.scores(&ids, rows.len(), width, &mask)
    }
}

impl Scorer for RewardModelScorer {
    fn score(&mut self, items: &[ScoreItem<'_>]) -> Result<Vec<f64>> {
        let encoded: Vec<Vec<i64>> = items
            .iter()
            .map(|it| self.encode(it))
            .collect::<Result<_>>()
            .with_context(|| format!("tokenizing for the reward model {}", self.dir.display()))?;
        // Shortest first, so each batch pads little; the stable sort keeps equal lengths in order.
        let mut order: Vec<usize> = (0..encoded.len()).collect();
        order.sort_by_key(|&i| encoded[i].len());
        let mut scores = vec![0f64; items.len()];
        for chunk in order.chunks(self.batch_size) {
            let rows: Vec<&[i64]> = chunk.iter().map(|&i| encoded[i].as_slice()).collect();
            let got = self.score_batch(&rows)?;
            if got.len() != chunk.len() {
                bail!(
                    "{}: {} scores for a batch of {}",
                    self.dir.display(),
                    got.len(),
                    chunk.len()
                );
            }
            for (&i, s) in chunk.iter().zip(got) {
                scores[i] = f64::from(s);
            }
            self.tokens += rows.iter().map(|r| r.len() as u64).sum::<u64>();
        }
        Ok(scores)
    }

    fn source(&self) -> String {
        format!("reward-model:{}", self.dir.display())
    }

    fn tokens_scored(&self) -> Option<u64> {
        Some(self.tokens)
    }
}
