//! An exported decoder folder (`exports onnx`) loaded into an ONNX Runtime session, with an
//! explicit KV cache.
//!
//! The graph is its own spec (as in text-embeddings-inference's ORT backend): the layer count,
//! KV heads, head size and cache type are read from the session's `past_key_values.{i}.key`
//! inputs, `position_ids` is fed only when the graph declares it, and the head is `logits` or
//! `score`, whichever the graph outputs.
//!
//! Padding: graphs with `position_ids` (the portable flavor) accept left or right padding;
//! positions are `cumsum(attention_mask) − 1` (clamped at 0), as training computes them. Graphs
//! without it (the `ort` flavor, GroupQueryAttention) need RIGHT-padded batches: GQA takes a row's
//! length from `Σ attention_mask` and assumes its tokens come first. [`DecoderSession::needs_right_padding`]
//! says which; [`DecoderSession::forward`] refuses a mask that breaks the rule.

use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use ort::session::builder::GraphOptimizationLevel;
use ort::session::{Session, SessionInputValue};
use ort::value::{DynTensor, DynValue, Tensor, TensorElementType};

use crate::runtime::Runtime;

pub const MODEL_FILE: &str = "model.onnx";

/// How to build the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionOptions {
    /// Intra-op threads; 0 lets ONNX Runtime choose.
    pub threads: usize,
    /// Graph optimizations (ORT_ENABLE_ALL); off only to measure what they buy.
    pub optimize: bool,
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions {
            threads: 0,
            optimize: true,
        }
    }
}

/// What the graph outputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadOutput {
    /// `logits` `[B, S, V]`.
    Logits,
    /// `logits` `[B, 1, V]` at each row's last real token.
    LastLogits,
    /// `score` `[B]`.
    Score,
}

/// The I/O of a decoder graph, discovered from the session.
#[derive(Debug, Clone, PartialEq)]
pub struct IoLayout {
    pub layers: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub kv_type: TensorElementType,
    pub has_position_ids: bool,
    pub head: HeadOutput,
    pub vocab: Option<usize>,
}

/// Per-layer past keys and values `[B, kv_heads, len, head_dim]`, as returned by the last step.
pub struct KvCache {
    keys: Vec<DynValue>,
    values: Vec<DynValue>,
    batch: usize,
    len: usize,
}

impl KvCache {
    /// Number of positions already in the cache (`past_sequence_length`).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn batch(&self) -> usize {
        self.batch
    }
}

/// Row-major logits `[batch, seq, vocab]` (f32).
#[derive(Debug, Clone, PartialEq)]
pub struct Logits {
    pub data: Vec<f32>,
    pub batch: usize,
    pub seq: usize,
    pub vocab: usize,
}

impl Logits {
    /// The logits of row `b` at step position `t`.
    pub fn at(&self, b: usize, t: usize) -> &[f32] {
        let start = (b * self.seq + t) * self.vocab;
        &self.data[start..start + self.vocab]
    }
}

/// One step's output.
#[derive(Debug, Clone, PartialEq)]
pub enum StepOutput {
    Logits(Logits),
    Scores(Vec<f32>),
}

/// A loaded decoder graph.
pub struct DecoderSession {
    session: Session,
    layout: IoLayout,
    dir: PathBuf,
}

fn kv_name(kind: &str, i: usize) -> (String, String) {
    (
        format!("past_key_values.{i}.{kind}"),
        format!("present.{i}.{kind}"),
    )
}

/// `cumsum(mask) − 1` clamped at 0, over the full mask `[B, T]`, keeping the last `seq` columns.
pub fn position_ids(mask: &[i64], batch: usize, seq: usize) -> Vec<i64> {
    let total = mask.len() / batch.max(1);
    let mut out = Vec::with_capacity(batch * seq);
    for row in mask.chunks(total) {
        let mut sum = 0i64;
        let pos: Vec<i64> = row
            .iter()
            .map(|m| {
                sum += m;
                (sum - 1).max(0)
            })
            .collect();
        out.extend_from_slice(&pos[total - seq..]);
    }
    out
}

impl DecoderSession {
    /// Load `dir/model.onnx` (weights in `model.onnx.data` beside it).
    pub fn load(runtime: &Runtime, dir: &Path, opts: &SessionOptions) -> Result<Self> {
        let file = dir.join(MODEL_FILE);
        ensure!(
            file.is_file(),
            "{}: no such file (not an exported model folder)",
            file.display()
        );
        let level = if opts.optimize {
            GraphOptimizationLevel::All
        } else {
            GraphOptimizationLevel::Disable
        };
        // Builder errors carry the builder back (`ort::Error<SessionBuilder>`); drop it for anyhow.
        let mut builder = Session::builder(&runtime.env)?
            .with_optimization_level(level)
            .map_err(ort::Error::<()>::from)?;
        if opts.threads > 0 {
            builder = builder
                .with_intra_threads(opts.threads)
                .map_err(ort::Error::<()>::from)?;
        }
        let session = builder
            .commit_from_file(&file)
            .with_context(|| format!("loading {}", file.display()))?;
        let layout = discover(&session)
            .with_context(|| format!("{}: unexpected graph I/O", file.display()))?;
        Ok(DecoderSession {
            session,
            layout,
            dir: dir.to_path_buf(),
        })
    }

    pub fn layout(&self) -> &IoLayout {
        &self.layout
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// True for GroupQueryAttention graphs, which take no `position_ids`.
    pub fn needs_right_padding(&self) -> bool {
        !self.layout.has_position_ids
    }

    /// An empty cache (zero-length past) for `batch` rows.
    pub fn new_cache(&self, batch: usize) -> Result<KvCache> {
        let l = &self.layout;
        let shape = [batch, l.kv_heads, 0, l.head_dim];
        let empty = || -> Result<DynValue> {
            let t = DynTensor::new(self.session.allocator(), l.kv_type, shape)?;
            Ok(t.into_dyn())
        };
        Ok(KvCache {
            keys: (0..l.layers).map(|_| empty()).collect::<Result<_>>()?,
            values: (0..l.layers).map(|_| empty()).collect::<Result<_>>()?,
            batch,
            len: 0,
        })
    }

    /// Logits for `input_ids` `[batch, seq]` given `attention_mask` `[batch, cache.len() + seq]`;
    /// appends the step to `cache`.
    pub fn forward(
        &mut self,
        input_ids: &[i64],
        batch: usize,
        seq: usize,
        attention_mask: &[i64],
        cache: &mut KvCache,
    ) -> Result<Logits> {
        match self.step(input_ids, batch, seq, attention_mask, cache)? {
            StepOutput::Logits(l) => Ok(l),
            StepOutput::Scores(_) => bail!(
                "{}: this is a reward model (output `score`); use scores()",
                self.dir.display()
            ),
        }
    }

    /// Reward scores `[batch]` of one full sequence per row (no cache reuse).
    pub fn scores(
        &mut self,
        input_ids: &[i64],
        batch: usize,
        seq: usize,
        attention_mask: &[i64],
    ) -> Result<Vec<f32>> {
        let mut cache = self.new_cache(batch)?;
        match self.step(input_ids, batch, seq, attention_mask, &mut cache)? {
            StepOutput::Scores(s) => Ok(s),
            StepOutput::Logits(_) => bail!(
                "{}: this is a language model (output `logits`); use forward()",
                self.dir.display()
            ),
        }
    }

    /// Run one step and append it to `cache`.
    pub fn step(
        &mut self,
        input_ids: &[i64],
        batch: usize,
        seq: usize,
        attention_mask: &[i64],
        cache: &mut KvCache,
    ) -> Result<StepOutput> {
        let total = cache.len + seq;
        ensure!(
            input_ids.len() == batch * seq,
            "input_ids: {} values for [{batch}, {seq}]",
            input_ids.len()
        );
        ensure!(
            attention_mask.len() == batch * total,
            "attention_mask: {} values for [{batch}, {total}] (past {} + seq {seq})",
            attention_mask.len(),
            cache.len
        );
        ensure!(
            cache.batch == batch,
            "cache holds {} rows, step has {batch}",
            cache.batch
        );
        // GQA takes a row's length from Σ mask and its tokens as the first positions of the cache,
        // so the prompt must be right-padded; later steps append 1-columns after the pads (the
        // onnxruntime-genai convention) and the new keys land at slot Σ mask − 1.
        if self.needs_right_padding() && cache.is_empty() {
            for (b, row) in attention_mask.chunks(total).enumerate() {
                let real = row.iter().sum::<i64>() as usize;
                ensure!(
                    row[..real].iter().all(|m| *m == 1),
                    "row {b}: this graph (GroupQueryAttention) needs right padding: all real tokens first, then pads"
                );
            }
        }
        let mut inputs: Vec<(String, SessionInputValue)> = vec![
            (
                "input_ids".into(),
                Tensor::from_array(([batch, seq], input_ids.to_vec()))?.into(),
            ),
            (
                "attention_mask".into(),
                Tensor::from_array(([batch, total], attention_mask.to_vec()))?.into(),
            ),
        ];
        if self.layout.has_position_ids {
            let pos = position_ids(attention_mask, batch, seq);
            inputs.push((
                "position_ids".into(),
                Tensor::from_array(([batch, seq], pos))?.into(),
            ));
        }
        for i in 0..self.layout.layers {
            inputs.push((kv_name("key", i).0, (&cache.keys[i]).into()));
            inputs.push((kv_name("value", i).0, (&cache.values[i]).into()));
        }
        let mut outputs = self.session.run(inputs).with_context(|| {
            format!(
                "{}: running a step of [{batch}, {seq}] after {} cached",
                self.dir.display(),
                cache.len
            )
        })?;
        let out = match self.layout.head {
            HeadOutput::Score => {
                let (_, s) = outputs["score"].try_extract_tensor::<f32>()?;
                StepOutput::Scores(s.to_vec())
            }
            HeadOutput::Logits | HeadOutput::LastLogits => {
                let (shape, l) = outputs["logits"].try_extract_tensor::<f32>()?;
                StepOutput::Logits(Logits {
                    data: l.to_vec(),
                    batch,
                    seq: shape[1] as usize,
                    vocab: shape[2] as usize,
                })
            }
        };
        for i in 0..self.layout.layers {
            for (kind, slot) in [("key", &mut cache.keys), ("value", &mut cache.values)] {
                let name = kv_name(kind, i).1;
                slot[i] = outputs
                    .remove(&name)
                    .with_context(|| format!("graph has no output `{name}`"))?;
            }
        }
        cache.len = total;
        Ok(out)
    }
}

fn discover(session: &Session) -> Result<IoLayout> {
    let find = |name: &str| session.inputs().iter().find(|i| i.name() == name);
    let has_position_ids = find("position_ids").is_some();
    ensure!(find("input_ids").is_some(), "no `input_ids` input");
    ensure!(
        find("attention_mask").is_some(),
        "no `attention_mask` input"
    );
    let mut layers = 0;
    while find(&kv_name("key", layers).0).is_some() {
        layers += 1;
    }
    ensure!(
        layers > 0,
        "no `past_key_values.0.key` input (not a decoder with a KV cache)"
    );
    let past = find(&kv_name("key", 0).0).expect("found above").dtype();
    let (kv_type, shape) = match past {
        ort::value::ValueType::Tensor { ty, shape, .. } => (*ty, shape.to_vec()),
        other => bail!("`past_key_values.0.key` is not a tensor: {other:?}"),
    };
    ensure!(
        shape.len() == 4 && shape[1] > 0 && shape[3] > 0,
        "`past_key_values.0.key` has shape {shape:?}, expected [batch, kv_heads, past, head_dim]"
    );
    let outputs: Vec<&str> = session.outputs().iter().map(|o| o.name()).collect();
    let (head, vocab) = if let Some(o) = session.outputs().iter().find(|o| o.name() == "logits") {
        let s = o
            .dtype()
            .tensor_shape()
            .map(|s| s.to_vec())
            .unwrap_or_default();
        let head = if s.get(1) == Some(&1) {
            HeadOutput::LastLogits
        } else {
            HeadOutput::Logits
        };
        (head, s.get(2).filter(|v| **v > 0).map(|v| *v as usize))
    } else if outputs.contains(&"score") {
        (HeadOutput::Score, None)
    } else {
        bail!("neither a `logits` nor a `score` output (outputs: {outputs:?})");
    };
    Ok(IoLayout {
        layers,
        kv_heads: shape[1] as usize,
        head_dim: shape[3] as usize,
        kv_type,
        has_position_ids,
        head,
        vocab,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_count_real_tokens_and_keep_the_step() {
        // Row 0 left-padded by 2, row 1 right-padded by 1; a 2-token step after 3 cached.
        let mask = [0, 0, 1, 1, 1, 1, 1, 1, 1, 0];
        assert_eq!(
            position_ids(&mask, 2, 5),
            vec![0, 0, 0, 1, 2, 0, 1, 2, 3, 3]
        );
        assert_eq!(position_ids(&mask, 2, 2), vec![1, 2, 3, 3]);
    }
}
