//! The one ONNX Runtime layer of the engine: where a session runs ([`Device`]), how it is built
//! ([`SessionOptions`], [`open`]: execution provider, threads, graph optimisation, CUDA options),
//! and what its graph takes and gives ([`GraphIo`], discovered from the session). Generation
//! (`generate::backend`), reward scoring and `engine verify` all load their graphs through
//! [`open`]; [`DecoderSession`] is the simple full-step runner the last two use.
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

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{anyhow, bail, ensure, Context, Result};
use exports::onnx::MODEL_FILE;
use ort::session::builder::{GraphOptimizationLevel, SessionBuilder};
use ort::session::{Session, SessionInputValue};
use ort::value::{DynTensor, DynValue, Tensor, TensorElementType, ValueType};

use crate::runtime::Runtime;

/// Where a session runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Device {
    #[default]
    Cpu,
    /// CUDA execution provider on the GPU with this ordinal.
    Cuda(usize),
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(id) => write!(f, "cuda:{id}"),
        }
    }
}

impl FromStr for Device {
    type Err = String;
    /// `cpu` or `cuda:N`.
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s == "cpu" {
            return Ok(Device::Cpu);
        }
        s.strip_prefix("cuda:")
            .and_then(|n| n.parse::<usize>().ok())
            .map(Device::Cuda)
            .ok_or_else(|| format!("--device: `{s}` is not `cpu` or `cuda:N`"))
    }
}

/// CUDA execution provider settings; ignored on CPU.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CudaOptions {
    /// Capture the decode step as a CUDA graph (`enable_cuda_graph`). It replays fixed input
    /// addresses and shapes, so the generation backend then decodes with fixed shapes.
    pub cuda_graph: bool,
    /// The CUDA allocator's arena limit in bytes (`gpu_mem_limit`); `None`: ONNX Runtime's
    /// default (the whole device).
    pub mem_limit: Option<usize>,
}

/// `--cuda-mem-limit`: bytes, or a number with a `K`, `M` or `G` suffix (powers of 1024).
pub fn parse_bytes(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let (num, unit) = match t.char_indices().last() {
        Some((i, 'K' | 'k')) => (&t[..i], 1usize << 10),
        Some((i, 'M' | 'm')) => (&t[..i], 1 << 20),
        Some((i, 'G' | 'g')) => (&t[..i], 1 << 30),
        _ => (t, 1),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a size (bytes, or with K, M or G)"))?;
    if !(n.is_finite() && n > 0.0) {
        return Err(format!("`{s}`: a size must be positive"));
    }
    Ok((n * unit as f64) as usize)
}

/// How to build a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionOptions {
    pub device: Device,
    /// Intra-op threads; 0 means one per physical core (see [`resolve_threads`]), everywhere.
    pub threads: usize,
    /// Graph optimizations (ORT_ENABLE_ALL); off only to measure what they buy.
    pub optimize: bool,
    pub cuda: CudaOptions,
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions {
            device: Device::Cpu,
            threads: 0,
            optimize: true,
            cuda: CudaOptions::default(),
        }
    }
}

/// The one meaning of `--threads N`: N intra-op threads, and 0 (or no flag) one per physical core.
pub fn resolve_threads(threads: usize) -> usize {
    if threads == 0 {
        physical_cores()
    } else {
        threads
    }
}

/// Physical cores (hyper-threads share a core's FMA units, so more threads than cores only adds
/// contention for GEMM): distinct (physical id, core id) pairs in /proc/cpuinfo, else the
/// logical count.
pub fn physical_cores() -> usize {
    let logical = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let Ok(info) = std::fs::read_to_string("/proc/cpuinfo") else {
        return logical;
    };
    let mut pairs = std::collections::BTreeSet::new();
    let mut phys = String::new();
    for line in info.lines() {
        if let Some((k, v)) = line.split_once(':') {
            match k.trim() {
                "physical id" => phys = v.trim().to_string(),
                "core id" => {
                    pairs.insert((phys.clone(), v.trim().to_string()));
                }
                _ => {}
            }
        }
    }
    // Containers may expose fewer CPUs than the host's core list.
    if pairs.is_empty() {
        logical
    } else {
        pairs.len().min(logical)
    }
}

/// What the graph outputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadOutput {
    /// `logits` `[B, S, V]`.
    Logits,
    /// `logits` `[B, 1, V]` at each row's last real token (`exports onnx --last-logits-only`).
    LastLogits,
    /// `score` `[B]`.
    Score,
}

/// How the graph keeps its cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheForm {
    /// GroupQueryAttention (`ort` flavor, no `position_ids`): past and present may share one
    /// buffer, new keys are written in place at `Σ mask − 1`; right padding only.
    SharedKv,
    /// Standard attention (`portable` flavor, takes `position_ids`): `present = concat(past, new)`.
    Concat,
}

/// The I/O of a decoder graph, discovered from the session.
#[derive(Debug, Clone, PartialEq)]
pub struct GraphIo {
    pub layers: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    /// Element type of the cache and (for the heads) of the outputs.
    pub kv_type: TensorElementType,
    pub form: CacheForm,
    pub head: HeadOutput,
    /// Fixed vocabulary size of `logits`; `None` for a `score` head.
    pub vocab: Option<usize>,
}

impl GraphIo {
    pub fn has_position_ids(&self) -> bool {
        self.form == CacheForm::Concat
    }
}

/// `past_key_values.{i}.{kind}` and `present.{i}.{kind}`.
pub fn kv_names(kind: &str, i: usize) -> (String, String) {
    (
        format!("past_key_values.{i}.{kind}"),
        format!("present.{i}.{kind}"),
    )
}

/// The one session builder: execution provider for `opts.device` (with its CUDA options),
/// intra-op threads, graph optimisation level.
pub fn builder(runtime: &Runtime, opts: &SessionOptions) -> Result<SessionBuilder> {
    let level = if opts.optimize {
        GraphOptimizationLevel::All
    } else {
        GraphOptimizationLevel::Disable
    };
    let threads = resolve_threads(opts.threads);
    // Builder errors carry the builder back (`ort::Error<SessionBuilder>`); drop it for anyhow.
    let mut builder = Session::builder(&runtime.env)
        .context("creating a session builder")?
        .with_optimization_level(level)
        .map_err(ort::Error::<()>::from)
        .context("setting the graph optimization level")?
        .with_intra_threads(threads)
        .map_err(ort::Error::<()>::from)
        .with_context(|| format!("setting {threads} intra-op threads"))?;
    // Our own operators (`ai.pco`), for the graphs that use them; a graph without them is unaffected.
    builder = builder
        .with_operators(
            crate::int8_attention::domain().context("creating the ai.pco operator domain")?,
        )
        .map_err(ort::Error::<()>::from)
        .context("registering the ai.pco operators")?;
    // A developer's switch, not a setting: ONNX Runtime's per-node profile (issue #14's "profile
    // the decode step"), written as `{prefix}_{date}.json` when the session ends.
    if let Some(prefix) = std::env::var_os("PCO_ORT_PROFILE") {
        builder = builder
            .with_profiling(&prefix)
            .map_err(ort::Error::<()>::from)
            .context("PCO_ORT_PROFILE: enabling ONNX Runtime's profiler")?;
    }
    if let Device::Cuda(id) = opts.device {
        let mut ep = ort::ep::CUDA::default()
            .with_device_id(id as i32)
            // fp32 graphs compute in fp32: TF32 matmuls would move logits by ~1e-3 relative,
            // past `engine verify`'s bound; half-precision exports are the fast path on GPUs.
            .with_tf32(false)
            .with_cuda_graph(opts.cuda.cuda_graph);
        if let Some(limit) = opts.cuda.mem_limit {
            ep = ep.with_memory_limit(limit);
        }
        builder = builder
            .with_execution_providers([ep.build().error_on_failure()])
            .map_err(|e| {
                anyhow!(
                    "--device cuda:{id}: the CUDA execution provider could not be registered ({e}); \
                     this needs an onnxruntime build with CUDA (scripts/setup.sh --gpu) and a visible GPU"
                )
            })?;
    }
    Ok(builder)
}

/// Build a session for `dir/model.onnx` (weights in `model.onnx.data` beside it) with
/// [`builder`], and discover its I/O.
pub fn open(runtime: &Runtime, dir: &Path, opts: &SessionOptions) -> Result<(Session, GraphIo)> {
    open_file(runtime, &dir.join(MODEL_FILE), opts, None)
}

/// Sessions are committed one at a time in a process: ONNX Runtime 1.31 refuses a commit that
/// races another over the custom-operator domain both register ([`builder`] adds `ai.pco` to
/// every session: "the domain is already exist"), which parallel tests hit.
static COMMIT: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Hold while committing a session built by [`builder`].
pub(crate) fn committing() -> std::sync::MutexGuard<'static, ()> {
    COMMIT
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// [`open`] for one graph file of an exported folder; sessions given the same `prepacked`
/// container share the packed form of identical weights (an int8-cache folder's two graphs).
pub fn open_file(
    runtime: &Runtime,
    file: &Path,
    opts: &SessionOptions,
    prepacked: Option<&ort::session::builder::PrepackedWeights>,
) -> Result<(Session, GraphIo)> {
    ensure!(
        file.is_file(),
        "{}: no such file (not a folder written by `exports onnx`)",
        file.display()
    );
    let mut b = builder(runtime, opts)?;
    if let Some(p) = prepacked {
        b = b
            .with_prepacked_weights(p)
            .map_err(|e| anyhow::anyhow!("sharing packed weights: {e}"))?;
    }
    let session = {
        let _one_at_a_time = committing();
        b.commit_from_file(file)
    }
    .with_context(|| format!("loading {} on {}", file.display(), opts.device))?;
    let io =
        discover(&session).with_context(|| format!("{}: unexpected graph I/O", file.display()))?;
    Ok((session, io))
}

/// Read the cache form, dimensions and head from the session's declared inputs and outputs.
fn discover(session: &Session) -> Result<GraphIo> {
    let input = |name: &str| session.inputs().iter().find(|i| i.name() == name);
    let output = |name: &str| session.outputs().iter().find(|o| o.name() == name);
    for name in ["input_ids", "attention_mask"] {
        ensure!(
            input(name).is_some(),
            "no `{name}` input (not a decoder export)"
        );
    }
    let layers = (0..)
        .take_while(|&i| input(&kv_names("key", i).0).is_some())
        .count();
    ensure!(
        layers > 0,
        "no `past_key_values.0.key` input (not a decoder with a KV cache)"
    );
    for i in 0..layers {
        for kind in ["key", "value"] {
            let (past, present) = kv_names(kind, i);
            ensure!(input(&past).is_some(), "no `{past}` input");
            ensure!(output(&present).is_some(), "no `{present}` output");
        }
    }
    let past = input(&kv_names("key", 0).0).expect("counted above").dtype();
    let (kv_type, shape) = match past {
        ValueType::Tensor { ty, shape, .. } => (*ty, shape.to_vec()),
        other => bail!("`past_key_values.0.key` is not a tensor: {other:?}"),
    };
    ensure!(
        shape.len() == 4 && shape[1] > 0 && shape[3] > 0,
        "`past_key_values.0.key` has shape {shape:?}, expected [batch, kv_heads, past, head_dim] with fixed kv_heads and head_dim"
    );
    let outputs: Vec<&str> = session.outputs().iter().map(|o| o.name()).collect();
    let (head, vocab) = if let Some(o) = output("logits") {
        let s = o
            .dtype()
            .tensor_shape()
            .map(|s| s.to_vec())
            .unwrap_or_default();
        ensure!(
            s.len() == 3,
            "`logits` has shape {s:?}, expected [batch, seq, vocab]"
        );
        let head = if s[1] == 1 {
            HeadOutput::LastLogits
        } else {
            HeadOutput::Logits
        };
        (head, usize::try_from(s[2]).ok().filter(|v| *v > 0))
    } else if outputs.contains(&"score") {
        (HeadOutput::Score, None)
    } else {
        bail!("neither a `logits` nor a `score` output (outputs: {outputs:?})");
    };
    Ok(GraphIo {
        layers,
        kv_heads: shape[1] as usize,
        head_dim: shape[3] as usize,
        kv_type,
        form: if input("position_ids").is_some() {
            CacheForm::Concat
        } else {
            CacheForm::SharedKv
        },
        head,
        vocab,
    })
}

/// Per-layer past keys and values `[B, kv_heads, len, head_dim]`, as the last step returned them
/// (the full-step runner's cache; generation keeps its own, `generate::kv::SlotCache`).
pub struct PastKv {
    keys: Vec<DynValue>,
    values: Vec<DynValue>,
    batch: usize,
    len: usize,
}

impl PastKv {
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

    /// Layer `layer`'s keys and values, f32 `[batch, kv_heads, len, head_dim]` row-major (an
    /// fp32 cache only).
    pub fn layer_f32(&self, layer: usize) -> Result<(&[f32], &[f32])> {
        let (_, k) = self.keys[layer].try_extract_tensor::<f32>()?;
        let (_, v) = self.values[layer].try_extract_tensor::<f32>()?;
        Ok((k, v))
    }

    /// [`PastKv::layer_f32`] of an int8 cache.
    pub fn layer_i8(&self, layer: usize) -> Result<(&[i8], &[i8])> {
        let (_, k) = self.keys[layer].try_extract_tensor::<i8>()?;
        let (_, v) = self.values[layer].try_extract_tensor::<i8>()?;
        Ok((k, v))
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
    io: GraphIo,
    dir: PathBuf,
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
    /// Load `dir/model.onnx` through [`open`].
    pub fn load(runtime: &Runtime, dir: &Path, opts: &SessionOptions) -> Result<Self> {
        let (session, io) = open(runtime, dir, opts)?;
        Ok(DecoderSession {
            session,
            io,
            dir: dir.to_path_buf(),
        })
    }

    pub fn io(&self) -> &GraphIo {
        &self.io
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// True for GroupQueryAttention graphs, which take no `position_ids`.
    pub fn needs_right_padding(&self) -> bool {
        !self.io.has_position_ids()
    }

    /// An empty cache (zero-length past) for `batch` rows.
    pub fn new_cache(&self, batch: usize) -> Result<PastKv> {
        let l = &self.io;
        let shape = [batch, l.kv_heads, 0, l.head_dim];
        let empty = || -> Result<DynValue> {
            let t = DynTensor::new(self.session.allocator(), l.kv_type, shape)?;
            Ok(t.into_dyn())
        };
        Ok(PastKv {
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
        cache: &mut PastKv,
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
        cache: &mut PastKv,
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
        if self.io.has_position_ids() {
            let pos = position_ids(attention_mask, batch, seq);
            inputs.push((
                "position_ids".into(),
                Tensor::from_array(([batch, seq], pos))?.into(),
            ));
        }
        for i in 0..self.io.layers {
            inputs.push((kv_names("key", i).0, (&cache.keys[i]).into()));
            inputs.push((kv_names("value", i).0, (&cache.values[i]).into()));
        }
        let mut outputs = self.session.run(inputs).with_context(|| {
            format!(
                "{}: running a step of [{batch}, {seq}] after {} cached",
                self.dir.display(),
                cache.len
            )
        })?;
        let out = match self.io.head {
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
        for i in 0..self.io.layers {
            for (kind, slot) in [("key", &mut cache.keys), ("value", &mut cache.values)] {
                let name = kv_names(kind, i).1;
                slot[i] = outputs
                    .remove(&name)
                    .with_context(|| format!("graph has no output `{name}`"))?;
            }
        }
        cache.len = total;
        Ok(out)
    }
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
