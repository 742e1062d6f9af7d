//! Prompts of an int8-cache folder through its float-cache twin (`prefill.onnx`).
//!
//! ONNX Runtime's CPU GroupQueryAttention with an int8 cache attends over the quantized cache in
//! the prompt as well, with per-position dequantizing loops: on the real job's prompts that
//! attention takes 4.6× the float cache's (BENCHMARKS.md). `exports onnx --kv-cache int8` also
//! writes the same graph and weights with a float cache and the scales it used; a prompt runs
//! through that graph into host scratch, and its keys and values are quantized into the slot's
//! int8 cache exactly as the int8 graph quantizes a new position (`round half to even (x / scale)`,
//! saturated to −128..=127; the engine tests compare against the int8 graph's own writes), so
//! decoding continues over the very cache it would have written. The prompt's own attention (and
//! the first token's logits) are then the float cache's, which is also closer to fp32.

use std::ffi::CString;
use std::path::Path;

use anyhow::{ensure, Context, Result};
use exports::onnx::{KvScales, KV_SCALES_FILE, PREFILL_FILE};
use exports::{ModelConfig, TokenId};
use ort::memory::MemoryInfo;
use ort::session::builder::PrepackedWeights;
use ort::session::Session;
use ort::value::TensorElementType;

use super::backend::right_padded;
use super::device::{run, Feed};
use super::kv::SlotCache;
use super::kv_quant::quantize;
use crate::runtime::Runtime;
use crate::session::{CacheForm, Device, GraphIo, HeadOutput, SessionOptions};

/// The most bytes of float keys and values one prompt run writes (prompts beyond it run in
/// further groups): 64 prompts of 552 tokens would otherwise take 2.4 GB for SmolLM2.
const SCRATCH_BYTES: usize = 256 << 20;

pub struct FloatPrefill {
    session: Session,
    scales: KvScales,
    head: HeadOutput,
    /// Host f32 `[rows, kv_heads, len, head_dim]` per buffer (keys of layers 0..L, then values),
    /// bound as the graph's shared past and present; reused between prompts.
    scratch: Vec<Vec<f32>>,
    /// [`SCRATCH_BYTES`] unless a test lowers it.
    pub scratch_limit: usize,
    logits: Vec<f32>,
}

impl FloatPrefill {
    /// Whether `dir` runs its prompts through a float twin on this device: an int8-cache graph
    /// (`main`) beside a `prefill.onnx`, on the CPU.
    pub fn applies(dir: &Path, opts: &SessionOptions, main: &GraphIo) -> bool {
        main.kv_type == TensorElementType::Int8 && Self::present(dir, opts)
    }

    /// A `prefill.onnx` beside the graph, on the CPU.
    pub fn present(dir: &Path, opts: &SessionOptions) -> bool {
        opts.device == Device::Cpu && dir.join(PREFILL_FILE).is_file()
    }

    /// The folder's prompt graph, for an int8-cache `main` graph on the CPU (where the cache is
    /// host memory the quantization writes); `None` for every other folder or device.
    pub fn open(
        rt: &Runtime,
        dir: &Path,
        opts: &SessionOptions,
        main: &GraphIo,
        prepacked: Option<&PrepackedWeights>,
    ) -> Result<Option<Self>> {
        if !Self::applies(dir, opts, main) {
            return Ok(None);
        }
        let file = dir.join(PREFILL_FILE);
        let (session, io) = crate::session::open_file(rt, &file, opts, prepacked)?;
        ensure!(
            io.kv_type == TensorElementType::Float32
                && io.form == CacheForm::SharedKv
                && (io.layers, io.kv_heads, io.head_dim, io.head, io.vocab)
                    == (
                        main.layers,
                        main.kv_heads,
                        main.head_dim,
                        main.head,
                        main.vocab
                    ),
            "{}: not the float-cache twin of {} ({io:?} against {main:?})",
            file.display(),
            dir.join(exports::onnx::MODEL_FILE).display()
        );
        let cfg = ModelConfig::load(dir)?;
        let scales = KvScales::read(&dir.join(KV_SCALES_FILE), &cfg)?;
        ensure!(
            (scales.layers(), scales.kv_heads, scales.head_dim)
                == (io.layers, io.kv_heads, io.head_dim),
            "{}: scales for {} layers × {} × {}, the graph has {} × {} × {}",
            dir.join(KV_SCALES_FILE).display(),
            scales.layers(),
            scales.kv_heads,
            scales.head_dim,
            io.layers,
            io.kv_heads,
            io.head_dim
        );
        Ok(Some(FloatPrefill {
            session,
            scales,
            head: io.head,
            scratch: vec![Vec::new(); 2 * io.layers],
            scratch_limit: SCRATCH_BYTES,
            logits: Vec::new(),
        }))
    }

    /// Run `prompts` (right padded, as `Backend::prefill_rows`) and quantize each one's keys and
    /// values into slot `first + i` of `cache`; returns the last real position's logits per
    /// prompt, `[prompts.len(), vocab]` (all `[P, vocab]` of a lone prompt under a full-logits
    /// head). Prompts go in groups whose float scratch stays under the limit: rows are
    /// independent of their batch, so the grouping changes no value.
    pub fn run(
        &mut self,
        names: (&[CString], &[CString]),
        cache: &mut SlotCache,
        first: usize,
        prompts: &[&[TokenId]],
        vocab: usize,
    ) -> Result<&[f32]> {
        let b = prompts.len();
        let p = prompts.iter().map(|ids| ids.len()).max().unwrap_or(0);
        assert!(
            b > 0 && p > 0 && first + b <= cache.slots && p < cache.capacity,
            "float prefill of {b} prompts up to {p} into slots {first}.. of {} × {}; this is a bug",
            cache.slots,
            cache.capacity
        );
        assert!(
            b == 1 || self.head == HeadOutput::LastLogits,
            "batched prefill needs last-logits graphs; this is a bug"
        );
        let rows = if self.head == HeadOutput::LastLogits {
            1
        } else {
            p
        };
        let row_bytes = self.scratch.len() * cache.kv_heads * p * cache.head_dim * 4;
        let group = (self.scratch_limit / row_bytes).clamp(1, b);
        let mut logits = std::mem::take(&mut self.logits);
        logits.resize(b * rows * vocab, 0.0);
        let done = prompts
            .chunks(group)
            .zip(logits.chunks_mut(group * rows * vocab))
            .enumerate()
            .try_for_each(|(i, (g, out))| {
                self.run_group(names, cache, first + i * group, g, vocab, out)
            });
        self.logits = logits;
        done?;
        let last = (rows - 1) * vocab;
        Ok(if rows == 1 {
            &self.logits[..b * vocab]
        } else {
            &self.logits[last..last + vocab]
        })
    }

    /// [`FloatPrefill::run`] of one group, its logits into `out`.
    fn run_group(
        &mut self,
        names: (&[CString], &[CString]),
        cache: &mut SlotCache,
        first: usize,
        prompts: &[&[TokenId]],
        vocab: usize,
        out: &mut [f32],
    ) -> Result<()> {
        let b = prompts.len();
        let p = prompts.iter().map(|ids| ids.len()).max().unwrap_or(0);
        let (kvh, hd) = (cache.kv_heads, cache.head_dim);
        for s in &mut self.scratch {
            s.resize(b * kvh * p * hd, 0.0);
        }
        let (mut input_ids, mut mask) = right_padded(prompts);
        let rows = out.len() / (b * vocab);
        let mem = MemoryInfo::default();
        // SAFETY: every view points into a vector or slice that is neither moved nor resized until
        // `run` returns, and each shape's element count is its length.
        unsafe {
            let mut feed = Feed::default();
            feed.ints(&mem, input_ids.as_mut_ptr(), &[b, p])?;
            feed.ints(&mem, mask.as_mut_ptr(), &[b, p])?;
            feed.output(&mem, out.as_mut_ptr(), &[b, rows, vocab])?;
            for s in &mut self.scratch {
                let ptr = s.as_mut_ptr();
                feed.typed(
                    &mem,
                    ptr,
                    &[b, kvh, p, hd],
                    TensorElementType::Float32,
                    false,
                )?;
                feed.typed(
                    &mem,
                    ptr,
                    &[b, kvh, p, hd],
                    TensorElementType::Float32,
                    true,
                )?;
            }
            run(&self.session, names.0, names.1, &feed).context("prefill (float cache)")?;
        }
        let layers = self.scales.layers();
        for (i, s) in self.scratch.iter().enumerate() {
            let (kind, layer) = if i < layers {
                (&self.scales.key, i)
            } else {
                (&self.scales.value, i - layers)
            };
            let scale = &kind[layer];
            let buf = &cache.bufs[i];
            for (r, ids) in prompts.iter().enumerate() {
                for h in 0..kvh {
                    let src = &s[(r * kvh + h) * p * hd..][..ids.len() * hd];
                    let at = cache.base(first + r, h);
                    // SAFETY: an int8 cache's buffer holds `slots · kv_heads · capacity · head_dim`
                    // bytes on the host (CPU device, checked at open); slot `first + r`, head `h`,
                    // positions `0..len` lie within it, and nothing else accesses it meanwhile.
                    let dst = unsafe {
                        std::slice::from_raw_parts_mut(
                            buf.at(cache.units(at)).cast::<i8>(),
                            ids.len() * hd,
                        )
                    };
                    quantize(src, &scale[h * hd..(h + 1) * hd], dst);
                }
            }
        }
        Ok(())
    }
}
