//! The model under a KV cache, as the scheduler sees it: "prefill this prompt into slot s",
//! "copy slot a's first n positions into slot b", "run one decode step over slots 0..rows".
//!
//! Two graph forms, told apart by the graph's own inputs (an exported folder is its own spec):
//! * **shared KV** (`ort` flavor: GroupQueryAttention, no `position_ids`): one preallocated buffer
//!   per layer and K/V, `[slots, kv_heads, capacity, head_dim]`, is bound as both `past` and
//!   `present`. GQA writes each row's new K/V in place at row `Σ mask_b − 1`, so a decode step
//!   moves no cache bytes at all. The slot is the outermost dimension, so one slot's region is
//!   contiguous and a prefill binds a `[1, …]` view of it.
//! * **concat KV** (`portable` flavor: takes `position_ids`, returns `present = past ++ new`): the
//!   same slot buffers, but each step gathers a right-padded past, and the new column is copied back.
//!   Simpler and slower; it is what GPT-2 exports need.
//!
//! Where the bytes live: the slot cache and the concat form's scratch are ONNX Runtime
//! allocations in the session's device memory ([`super::device`]), bound in place as inputs and
//! outputs; slot copies (shared prefill, beam reorder, stashes) are device-to-device moves. A
//! step moves only its inputs (ids, mask, positions) in and the logits rows out, which the copy
//! counter ([`Transfers`]) counts. The same code runs on CPU, where device memory is host memory.
//!
//! Sessions are driven through the C API's `Run` with caller-owned values (IoBinding's job, done
//! per run): `ort`'s safe `IoBinding::bind_input` clones borrowed tensors, which would copy the
//! whole cache every step.

use std::ffi::CString;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use exports::TokenId;
use ort::memory::MemoryInfo;
use ort::session::Session;
use ort::value::TensorElementType;

use super::device::{run, DeviceBuffer, DeviceMemory, Feed, Move, MoverChoice, Place};
use super::float_prefill::FloatPrefill;
use super::kv::{SavedPrefix, SlotCache};
use crate::runtime::Runtime;
use crate::session::{kv_names, CacheForm, Device, GraphIo, HeadOutput, SessionOptions};

/// Settings of one backend (one device).
#[derive(Debug, Clone)]
pub struct BackendConfig {
    pub model: PathBuf,
    /// Device, threads and CUDA options of the session.
    pub session: SessionOptions,
    pub slots: usize,
    /// Longest sequence (prompt + generated) the cache must ever hold.
    pub max_len: usize,
    /// Decode with fixed shapes: every step runs all slots over the full capacity (allocated
    /// once, `max_len`), with the ids and mask kept in buffers that persist between steps and
    /// change only where a row moved. What CUDA graphs need (static shapes and addresses);
    /// implied by `session.cuda.cuda_graph`.
    pub fixed_shape: bool,
    /// How device copies run: `Auto` (memcpy where device memory is host memory, else a copy
    /// graph on the device); `Graph` forces the copy graph (tests of the GPU path on CPU).
    pub mover: MoverChoice,
}

/// Bytes moved between the host and the session's device, the backend's copy counter.
///
/// Counted where bytes cross: the step inputs the host writes (ids, mask, positions), the logits
/// rows it reads back, and any cache bytes that go through the host (only the zeros of a newly
/// allocated or grown cache: the cache itself lives on the device, see [`super::kv`]). On the
/// CPU execution provider "crossing" is a host copy, counted the same way, so the CPU tests check
/// what a GPU would move.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Transfers {
    pub to_device: u64,
    pub from_device: u64,
    /// Bytes of KV cache among the two above.
    pub cache: u64,
}

impl std::ops::AddAssign for Transfers {
    fn add_assign(&mut self, o: Transfers) {
        self.to_device += o.to_device;
        self.from_device += o.from_device;
        self.cache += o.cache;
    }
}

/// The copy counter over a backend's life.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TransferLog {
    pub prefill: Transfers,
    pub decode: Transfers,
    pub decode_steps: u64,
    /// The latest decode step alone.
    pub last_decode: Transfers,
}

impl TransferLog {
    /// Mean bytes per decode step, (to device, from device, of which cache).
    pub fn per_decode_step(&self) -> (f64, f64, f64) {
        let n = self.decode_steps.max(1) as f64;
        (
            self.decode.to_device as f64 / n,
            self.decode.from_device as f64 / n,
            self.decode.cache as f64 / n,
        )
    }
}

impl std::fmt::Display for TransferLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (to, from, cache) = self.per_decode_step();
        write!(
            f,
            "host↔device per decode step: {to:.0} B in, {from:.0} B out, {cache:.0} B of them KV cache (mean of {} steps; cache bytes are the zeros of grown buffers); last step {} B in, {} B out; prefill {} B in, {} B out",
            self.decode_steps,
            self.last_decode.to_device,
            self.last_decode.from_device,
            self.prefill.to_device,
            self.prefill.from_device
        )
    }
}

/// `[prompts.len(), P]` input ids and attention mask of `prompts` right-padded to the longest
/// one's `P` tokens (pads: id 0, mask 0), the layout GroupQueryAttention's prompts need.
pub(super) fn right_padded(prompts: &[&[TokenId]]) -> (Vec<i64>, Vec<i64>) {
    let p = prompts.iter().map(|ids| ids.len()).max().unwrap_or(0);
    let mut input_ids = vec![0i64; prompts.len() * p];
    let mut mask = vec![0i64; prompts.len() * p];
    for (r, ids) in prompts.iter().enumerate() {
        for (j, t) in ids.iter().enumerate() {
            input_ids[r * p + j] = t.as_i64();
            mask[r * p + j] = 1;
        }
    }
    (input_ids, mask)
}

/// One row of a decode step: feed `token` at position `pos` (= tokens already cached).
#[derive(Debug, Clone, Copy)]
pub struct StepRow {
    pub token: TokenId,
    pub pos: usize,
}

/// Prompt-length cache contents and last logits of one prefill, kept so that samples of the
/// prompt admitted later (when no slot was free) need not prefill again.
pub struct Stash {
    saved: SavedPrefix,
    pub len: usize,
}

pub struct Backend {
    session: Session,
    /// An int8-cache folder's float-cache graph for prompts (see [`FloatPrefill`]).
    float_prefill: Option<FloatPrefill>,
    pub io: GraphIo,
    vocab: usize,
    cache: SlotCache,
    input_names: Vec<CString>,
    output_names: Vec<CString>,
    /// Host memory, for the step inputs and the logits.
    mem: MemoryInfo<'static>,
    dm: DeviceMemory,
    /// A device copy that failed where the scheduler cannot take an error (slot copies); the
    /// next prefill or decode returns it.
    failed: Option<anyhow::Error>,
    /// `[slots, vocab]` last-position logits of the latest decode step.
    logits: Vec<f32>,
    /// Logits of the latest prefill (`[P, vocab]` unless the graph emits last logits only).
    prefill_logits: Vec<f32>,
    /// Device scratch for the concat form: gathered past and produced present, per buffer.
    past_scratch: Vec<DeviceBuffer>,
    present_scratch: Vec<DeviceBuffer>,
    transfers: TransferLog,
    /// Fixed-shape decode: `[slots]` ids and `[slots, capacity]` mask that persist between
    /// steps, with each slot's current mask length.
    fixed: Option<FixedStep>,
    /// The longest sequence any slot holds ([`BackendConfig::max_len`]): growth stops there.
    max_len: usize,
    /// A decode step's ids and mask, kept between steps (no allocation per step).
    step_ids: Vec<i64>,
    step_mask: Vec<i64>,
}

/// The persistent step inputs of fixed-shape decoding.
///
/// The host vectors mirror device buffers at fixed addresses (what a captured CUDA graph
/// replays): a step uploads only the entries that changed and downloads only the logits rows
/// asked for.
struct FixedStep {
    ids: Vec<i64>,
    mask: Vec<i64>,
    mask_len: Vec<usize>,
    /// `[slots]` i64, `[slots, capacity]` i64 and `[slots, vocab]` f32 on the device.
    dev_ids: DeviceBuffer,
    dev_mask: DeviceBuffer,
    dev_logits: DeviceBuffer,
}

impl Backend {
    /// Open `cfg.model` with `cfg.slots` cache slots.
    pub fn load(rt: &Runtime, cfg: &BackendConfig) -> Result<Self> {
        Self::load_with(rt, cfg, |_| Ok(cfg.slots))
    }

    /// KV cache bytes one cached position of one sequence takes with this graph, the concat
    /// form's gathered past and present scratch included.
    pub fn kv_bytes_per_token(io: &GraphIo) -> Result<u64> {
        let Some(elem) = super::device::element_bytes(io.kv_type) else {
            bail!(
                "a {:?} KV cache: the engine keeps fp32, fp16, bf16 or int8 caches",
                io.kv_type
            );
        };
        let copies = match io.form {
            CacheForm::SharedKv => 1,
            // The slot cache, plus a past and a present of about its size per step.
            CacheForm::Concat => 3,
        };
        Ok(copies * super::budget::kv_bytes_per_token(io.layers, io.kv_heads, io.head_dim, elem))
    }

    /// Open `cfg.model` with as many cache slots as `slots` chooses once the graph is open (its
    /// cache shape known, its weights in memory); `cfg.slots` is not used.
    pub fn load_with(
        rt: &Runtime,
        cfg: &BackendConfig,
        slots: impl FnOnce(&GraphIo) -> Result<usize>,
    ) -> Result<Self> {
        let main = cfg.model.join(exports::onnx::MODEL_FILE);
        // The engine's int8-cache attention runs CPU decode steps only (prompts go through the
        // folder's float twin there); say so before a GPU session fails on the first prompt.
        if cfg.session.device != Device::Cpu && exports::onnx::uses_engine_ops(&main)? {
            bail!(
                "{}: its decode attention is the engine's CPU operator ({}:{}); for {}, export it with \
                 `exports onnx … --kv-attention ort`",
                cfg.model.display(),
                exports::onnx::ENGINE_DOMAIN,
                exports::onnx::INT8_CACHE_ATTENTION,
                cfg.session.device
            );
        }
        // The float twin's session shares the packed weights of the main one.
        let prepacked = FloatPrefill::present(&cfg.model, &cfg.session)
            .then(ort::session::builder::PrepackedWeights::new);
        let (session, io) = crate::session::open_file(rt, &main, &cfg.session, prepacked.as_ref())?;
        let float_prefill =
            FloatPrefill::open(rt, &cfg.model, &cfg.session, &io, prepacked.as_ref())?;
        let model = cfg.model.display();
        let vocab = match (io.head, io.vocab) {
            (HeadOutput::Score, _) => bail!(
                "{model}: a reward model (output `score`) cannot generate; pass a language model"
            ),
            (_, None) => bail!("{model}: `logits` has no fixed vocabulary size"),
            (_, Some(v)) => v,
        };
        // An int8 cache is GroupQueryAttention's quantized one (it quantizes new K/V itself with
        // the graph's static scales), so only the shared form can hold it.
        let cache_ok = match io.kv_type {
            TensorElementType::Float32
            | TensorElementType::Float16
            | TensorElementType::Bfloat16 => true,
            TensorElementType::Int8 => io.form == CacheForm::SharedKv,
            _ => false,
        };
        if !cache_ok {
            bail!(
                "{model}: the cache is {:?} ({:?} form); generation runs fp32, fp16 or bf16 caches, \
                 or an int8 GroupQueryAttention cache",
                io.kv_type,
                io.form
            );
        }
        let mut input_names = vec![c"input_ids".to_owned(), c"attention_mask".to_owned()];
        if io.form == CacheForm::Concat {
            input_names.push(c"position_ids".to_owned());
        }
        let mut output_names = vec![c"logits".to_owned()];
        for kind in ["key", "value"] {
            for i in 0..io.layers {
                let (past, present) = kv_names(kind, i);
                input_names.push(CString::new(past).expect("no NUL"));
                output_names.push(CString::new(present).expect("no NUL"));
            }
        }
        let fixed_shape = cfg.fixed_shape || cfg.session.cuda.cuda_graph;
        if fixed_shape && io.form != CacheForm::SharedKv {
            bail!(
                "{model}: fixed-shape decoding (--fixed-shape, --cuda-graph) needs an `ort`-flavor export (GroupQueryAttention, shared KV buffer)"
            );
        }
        let slots = slots(&io)?;
        if slots == 0 {
            bail!("{model}: a KV cache of 0 slots; --batch-size must be at least 1");
        }
        let capacity = if fixed_shape {
            cfg.max_len
        } else {
            cfg.max_len.min(64)
        };
        let cache_bytes = 2
            * io.layers
            * slots
            * io.kv_heads
            * capacity
            * io.head_dim
            * super::device::element_bytes(io.kv_type).expect("checked above");
        if let Some(limit) = cfg.session.cuda.mem_limit {
            // The budget is the CUDA allocator's arena limit: the cache must leave room for
            // weights and activations, so refuse before any work when it alone takes half.
            if cache_bytes > limit / 2 {
                bail!(
                    "{model}: a KV cache of {} slots × {capacity} positions takes {:.2} GiB, more than half of --cuda-mem-limit {:.2} GiB; use fewer --batch-size slots",
                    slots,
                    cache_bytes as f64 / (1u64 << 30) as f64,
                    limit as f64 / (1u64 << 30) as f64
                );
            }
        }
        let mut dm = DeviceMemory::new(
            rt,
            &session,
            &cfg.session,
            SlotCache::moves_per_slot(io.layers, io.kv_heads),
            cfg.mover,
        )?;
        let cache = SlotCache::new(
            &mut dm,
            io.layers,
            slots,
            io.kv_heads,
            io.head_dim,
            capacity,
            io.kv_type,
        )
        .with_context(|| format!("{model}: allocating the KV cache on {}", cfg.session.device))?;
        let fixed = if fixed_shape {
            // i64 entries are two 4-byte units.
            Some(FixedStep {
                ids: vec![0; slots],
                mask: vec![0; slots * capacity],
                mask_len: vec![0; slots],
                dev_ids: dm.zeros(2 * slots)?,
                dev_mask: dm.zeros(2 * slots * capacity)?,
                dev_logits: dm.zeros(slots * vocab)?,
            })
        } else {
            None
        };
        let scratch =
            || -> Result<Vec<DeviceBuffer>> { (0..2 * io.layers).map(|_| dm.alloc(0)).collect() };
        let (past_scratch, present_scratch) = (scratch()?, scratch()?);
        Ok(Backend {
            session,
            float_prefill,
            logits: vec![0.0; slots * vocab],
            vocab,
            prefill_logits: Vec::new(),
            past_scratch,
            present_scratch,
            io,
            cache,
            input_names,
            output_names,
            mem: MemoryInfo::default(),
            dm,
            failed: None,
            transfers: TransferLog::default(),
            fixed,
            max_len: cfg.max_len,
            step_ids: Vec::new(),
            step_mask: Vec::new(),
        })
    }

    /// Whether prompts run through the folder's float-cache graph (see [`FloatPrefill`]).
    pub fn prefills_in_float(&self) -> bool {
        self.float_prefill.is_some()
    }

    /// Lower the float prompt graph's scratch limit (tests of its grouping); no-op without one.
    #[doc(hidden)]
    pub fn limit_float_prefill_scratch(&mut self, bytes: usize) {
        if let Some(fp) = &mut self.float_prefill {
            fp.scratch_limit = bytes;
        }
    }

    /// The bytes of slot `slot`'s first `len` positions in cache buffer `buffer` (keys of layers
    /// 0..L, then values), `[kv_heads, len, head_dim]`: what tests compare with a graph's own
    /// present. CPU only (device memory is host memory there).
    #[doc(hidden)]
    pub fn slot_bytes(&self, buffer: usize, slot: usize, len: usize) -> Vec<u8> {
        assert!(
            self.dm.mem.is_cpu_accessible(),
            "slot_bytes reads host memory; this is a bug"
        );
        let c = &self.cache;
        let esize = c.units(4);
        let mut out = Vec::with_capacity(c.kv_heads * len * c.head_dim * esize);
        for h in 0..c.kv_heads {
            let at = c.bufs[buffer].at(c.units(c.base(slot, h)));
            // SAFETY: host memory (asserted), `len ≤ capacity` positions of one (slot, head) run.
            assert!(len <= c.capacity, "{len} positions of {}", c.capacity);
            let run =
                unsafe { std::slice::from_raw_parts(at.cast::<u8>(), len * c.head_dim * esize) };
            out.extend_from_slice(run);
        }
        out
    }

    /// The copy counter so far.
    pub fn transfers(&self) -> TransferLog {
        self.transfers
    }

    /// Whether device copies run as a graph on the device (not host `memcpy`).
    pub fn copies_on_device_graph(&self) -> bool {
        self.dm.uses_graph()
    }

    /// Vocabulary size (the width of each logits row).
    pub fn vocab(&self) -> usize {
        self.vocab
    }

    pub fn slots(&self) -> usize {
        self.cache.slots
    }

    /// The cache's element type, and element counts → 4-byte units of device buffers.
    fn cache_units(&self) -> (TensorElementType, impl Fn(usize) -> usize + Copy) {
        let (elem, esize) = (self.cache.elem, self.cache.units(4));
        (elem, move |n: usize| n * esize / 4)
    }

    /// A device copy error kept by an infallible call, returned now.
    fn check(&mut self) -> Result<()> {
        match self.failed.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Host↔device bytes the device memory moved since `before` (zeros of grown buffers).
    fn moved_since(&self, before: (u64, u64)) -> (u64, u64) {
        (self.dm.uploaded - before.0, self.dm.downloaded - before.1)
    }

    fn moved(&self) -> (u64, u64) {
        (self.dm.uploaded, self.dm.downloaded)
    }

    /// Make room for sequences of `len` positions (grows geometrically, never past `max_len`
    /// unless `len` is longer; rarely copies).
    pub fn ensure_capacity(&mut self, len: usize) -> Result<()> {
        if len > self.cache.capacity {
            let to = (self.cache.capacity * 2).min(self.max_len).max(len);
            self.cache
                .grow(&mut self.dm, to)
                .context("growing the KV cache")?;
            if let Some(f) = &mut self.fixed {
                // A new capacity is a new mask layout: rewrite every row at the next step.
                f.mask = vec![0; self.cache.slots * self.cache.capacity];
                f.mask_len.fill(0);
                f.dev_mask = self.dm.zeros(2 * self.cache.slots * self.cache.capacity)?;
            }
        }
        Ok(())
    }

    /// A scratch buffer of at least `len` floats (reallocated, never shrunk).
    fn ensure_scratch(dm: &mut DeviceMemory, bufs: &mut [DeviceBuffer], len: usize) -> Result<()> {
        for b in bufs.iter_mut() {
            if b.len() < len {
                *b = dm.alloc(len)?;
            }
        }
        Ok(())
    }

    /// Run the prompt through slot `slot` (batch 1); returns the logits of its last position.
    pub fn prefill(&mut self, slot: usize, ids: &[TokenId]) -> Result<&[f32]> {
        self.check()?;
        let p = ids.len();
        assert!(p > 0, "prefill of an empty prompt; this is a bug");
        let before = self.moved();
        self.ensure_capacity(p + 1)?;
        // Not `if let`: a borrow returned from one branch would hold `self` for the rest of the
        // function under today's borrow checker (NLL problem case 3).
        #[allow(clippy::unnecessary_unwrap)]
        if self.float_prefill.is_some() {
            let (up, down) = self.moved_since(before);
            let rows = if self.io.head == HeadOutput::LastLogits {
                1
            } else {
                p
            };
            self.transfers.prefill += Transfers {
                to_device: (2 * p * 8) as u64 + up,
                from_device: (rows * self.vocab * 4) as u64 + down,
                cache: up + down,
            };
            let fp = self.float_prefill.as_mut().expect("checked");
            let names = (&self.input_names[..], &self.output_names[..]);
            return fp.run(names, &mut self.cache, slot, &[ids], self.vocab);
        }
        let v = self.vocab;
        let rows = if self.io.head == HeadOutput::LastLogits {
            1
        } else {
            p
        };
        self.prefill_logits.resize(rows * v, 0.0);
        let mut input_ids: Vec<i64> = ids.iter().map(|t| t.as_i64()).collect();
        let mut mask = vec![1i64; p];
        let mut positions: Vec<i64> = (0..p as i64).collect();
        let (kvh, hd, cap) = (
            self.cache.kv_heads,
            self.cache.head_dim,
            self.cache.capacity,
        );
        let (elem, u) = self.cache_units();
        if self.io.form == CacheForm::Concat {
            Self::ensure_scratch(&mut self.dm, &mut self.present_scratch, u(kvh * p * hd))?;
        }
        let (mem, dev) = (self.mem.clone(), self.dm.mem.clone());
        // SAFETY: every view points into a buffer that is neither moved nor resized until `run`
        // returns, and each shape's element count fits its buffer.
        unsafe {
            let mut feed = Feed::default();
            feed.ints(&mem, input_ids.as_mut_ptr(), &[1, p])?;
            feed.ints(&mem, mask.as_mut_ptr(), &[1, p])?;
            feed.output(&mem, self.prefill_logits.as_mut_ptr(), &[1, rows, v])?;
            match self.io.form {
                CacheForm::SharedKv => {
                    for buf in &self.cache.bufs {
                        let ptr = buf.at(u(slot * kvh * cap * hd));
                        feed.typed(&dev, ptr, &[1, kvh, cap, hd], elem, false)?;
                        feed.typed(&dev, ptr, &[1, kvh, cap, hd], elem, true)?;
                    }
                }
                CacheForm::Concat => {
                    feed.ints(&mem, positions.as_mut_ptr(), &[1, p])?;
                    for (past, present) in self.past_scratch.iter().zip(&self.present_scratch) {
                        feed.typed(&dev, past.at(0), &[1, kvh, 0, hd], elem, false)?;
                        feed.typed(&dev, present.at(0), &[1, kvh, p, hd], elem, true)?;
                    }
                }
            }
            run(&self.session, &self.input_names, &self.output_names, &feed).context("prefill")?;
        }
        if self.io.form == CacheForm::Concat {
            let mut moves = Vec::with_capacity(self.cache.bufs.len() * kvh);
            for (buf, scratch) in self.cache.bufs.iter().zip(&self.present_scratch) {
                for h in 0..kvh {
                    moves.push(Move {
                        src: Place::Device(scratch.at(u(h * p * hd))),
                        dst: Place::Device(buf.at(u((slot * kvh + h) * cap * hd))),
                        len: u(p * hd),
                    });
                }
            }
            self.dm
                .run(&moves)
                .context("prefill: placing the new keys and values")?;
        }
        let step_inputs = if self.io.form == CacheForm::Concat {
            3
        } else {
            2
        };
        let (up, down) = self.moved_since(before);
        self.transfers.prefill += Transfers {
            to_device: (step_inputs * p * 8) as u64 + up,
            from_device: (rows * v * 4) as u64 + down,
            cache: up + down,
        };
        Ok(&self.prefill_logits[(rows - 1) * v..rows * v])
    }

    /// Whether [`Backend::prefill_rows`] can run: a shared KV buffer (slots are contiguous) and a
    /// graph that picks each row's last real token (so right padding does not matter).
    pub fn can_prefill_rows(&self) -> bool {
        self.io.form == CacheForm::SharedKv && self.io.head == HeadOutput::LastLogits
    }

    /// Prefill `prompts[i]` into slot `first + i`, all in one run with right padding; returns
    /// `[prompts.len(), vocab]` last-position logits. Each row's logits and cache equal those of
    /// a batch-1 [`Backend::prefill`] bit for bit (the matrix products are row-independent and
    /// attention stops at each row's length), which the batch-size invariance tests check.
    pub fn prefill_rows(&mut self, first: usize, prompts: &[&[TokenId]]) -> Result<&[f32]> {
        self.check()?;
        assert!(
            self.can_prefill_rows(),
            "prefill_rows on a graph that cannot; this is a bug"
        );
        let b = prompts.len();
        assert!(
            b > 0 && first + b <= self.cache.slots,
            "prefill of slots {first}..{} of {}; this is a bug",
            first + b,
            self.cache.slots
        );
        let p = prompts.iter().map(|ids| ids.len()).max().unwrap_or(0);
        assert!(
            prompts.iter().all(|ids| !ids.is_empty()),
            "prefill of an empty prompt; this is a bug"
        );
        let before = self.moved();
        self.ensure_capacity(p + 1)?;
        // Not `if let`: a borrow returned from one branch would hold `self` for the rest of the
        // function under today's borrow checker (NLL problem case 3).
        #[allow(clippy::unnecessary_unwrap)]
        if self.float_prefill.is_some() {
            let (up, down) = self.moved_since(before);
            let rows = b;
            self.transfers.prefill += Transfers {
                to_device: (2 * b * p * 8) as u64 + up,
                from_device: (rows * self.vocab * 4) as u64 + down,
                cache: up + down,
            };
            let fp = self.float_prefill.as_mut().expect("checked");
            let names = (&self.input_names[..], &self.output_names[..]);
            return fp.run(names, &mut self.cache, first, prompts, self.vocab);
        }
        let v = self.vocab;
        self.prefill_logits.resize(b * v, 0.0);
        let (mut input_ids, mut mask) = right_padded(prompts);
        let (kvh, hd, cap) = (
            self.cache.kv_heads,
            self.cache.head_dim,
            self.cache.capacity,
        );
        let (elem, u) = self.cache_units();
        let (mem, dev) = (self.mem.clone(), self.dm.mem.clone());
        // SAFETY: as in `prefill`; slots `first..first + b` are contiguous in every cache buffer.
        unsafe {
            let mut feed = Feed::default();
            feed.ints(&mem, input_ids.as_mut_ptr(), &[b, p])?;
            feed.ints(&mem, mask.as_mut_ptr(), &[b, p])?;
            feed.output(&mem, self.prefill_logits.as_mut_ptr(), &[b, 1, v])?;
            for buf in &self.cache.bufs {
                let ptr = buf.at(u(first * kvh * cap * hd));
                feed.typed(&dev, ptr, &[b, kvh, cap, hd], elem, false)?;
                feed.typed(&dev, ptr, &[b, kvh, cap, hd], elem, true)?;
            }
            run(&self.session, &self.input_names, &self.output_names, &feed).context("prefill")?;
        }
        let (up, down) = self.moved_since(before);
        self.transfers.prefill += Transfers {
            to_device: (2 * b * p * 8) as u64 + up,
            from_device: (b * v * 4) as u64 + down,
            cache: up + down,
        };
        Ok(&self.prefill_logits[..b * v])
    }

    /// [`Backend::decode`] with the logits left in `out` (`[rows, vocab]` first, its length at
    /// least that): the step writes into the caller's buffer, which the backend keeps meanwhile,
    /// so nothing is copied or allocated per step.
    pub fn decode_into(&mut self, rows: &[Option<StepRow>], out: &mut Vec<f32>) -> Result<()> {
        std::mem::swap(&mut self.logits, out);
        if self.logits.len() < self.cache.slots * self.vocab {
            self.logits.resize(self.cache.slots * self.vocab, 0.0);
        }
        let r = self.decode(rows).map(|_| ());
        std::mem::swap(&mut self.logits, out);
        r
    }

    /// One decode step over slots `0..rows.len()`; `None` rows are idle (their slot's contents may
    /// be overwritten at position 0). Returns `[rows, vocab]` logits.
    pub fn decode(&mut self, rows: &[Option<StepRow>]) -> Result<&[f32]> {
        self.check()?;
        let b = rows.len();
        assert!(
            b > 0 && b <= self.cache.slots,
            "decode of {b} rows; this is a bug"
        );
        let before = self.moved();
        let longest = rows.iter().flatten().map(|r| r.pos).max().unwrap_or(0);
        self.ensure_capacity(longest + 1)?;
        let mut input_ids = std::mem::take(&mut self.step_ids);
        input_ids.clear();
        input_ids.extend(rows.iter().map(|r| r.map_or(0, |r| r.token.as_i64())));
        // Step I/O the device memory moved itself (fixed shape), not to be counted twice.
        let (mut t, io) = match self.io.form {
            CacheForm::SharedKv if self.fixed.is_some() => {
                let t = self.decode_fixed(rows)?;
                (t, (t.to_device, t.from_device))
            }
            CacheForm::SharedKv => (self.decode_shared(rows, &mut input_ids, longest)?, (0, 0)),
            CacheForm::Concat => (self.decode_concat(rows, &mut input_ids, longest)?, (0, 0)),
        };
        self.step_ids = input_ids;
        let (up, down) = self.moved_since(before);
        let (up, down) = (up - io.0, down - io.1);
        t.to_device += up;
        t.from_device += down;
        t.cache += up + down;
        self.transfers.decode += t;
        self.transfers.decode_steps += 1;
        self.transfers.last_decode = t;
        Ok(&self.logits[..b * self.vocab])
    }

    /// Shared form, right padding: row b holds its pos_b cached tokens, then the new one; GQA
    /// reads its length from Σ mask and writes the new K/V in place. Idle rows get one token at
    /// position 0.
    fn decode_shared(
        &mut self,
        rows: &[Option<StepRow>],
        input_ids: &mut [i64],
        longest: usize,
    ) -> Result<Transfers> {
        let b = rows.len();
        let v = self.vocab;
        let (kvh, hd, cap) = (
            self.cache.kv_heads,
            self.cache.head_dim,
            self.cache.capacity,
        );
        let (elem, _) = self.cache_units();
        let total = longest + 1;
        let mut mask = std::mem::take(&mut self.step_mask);
        mask.clear();
        mask.resize(b * total, 0);
        for (i, r) in rows.iter().enumerate() {
            let n = r.map_or(1, |r| r.pos + 1);
            mask[i * total..i * total + n].fill(1);
        }
        let (mem, dev) = (self.mem.clone(), self.dm.mem.clone());
        // SAFETY: as in `prefill`.
        unsafe {
            let mut feed = Feed::default();
            feed.ints(&mem, input_ids.as_mut_ptr(), &[b, 1])?;
            feed.ints(&mem, mask.as_mut_ptr(), &[b, total])?;
            feed.output(&mem, self.logits.as_mut_ptr(), &[b, 1, v])?;
            for buf in &self.cache.bufs {
                feed.typed(&dev, buf.at(0), &[b, kvh, cap, hd], elem, false)?;
                feed.typed(&dev, buf.at(0), &[b, kvh, cap, hd], elem, true)?;
            }
            run(&self.session, &self.input_names, &self.output_names, &feed)
                .context("decode step")?;
        }
        self.step_mask = mask;
        Ok(Transfers {
            to_device: (b * 8 + b * total * 8) as u64,
            from_device: (b * v * 4) as u64,
            cache: 0,
        })
    }

    /// Fixed-shape form: every slot, the full capacity. Rows past `rows.len()` are idle like
    /// `None` rows. The mask keeps each slot's ones from the last step, so a step writes only
    /// the entries that changed (one per moving row) and the new ids.
    fn decode_fixed(&mut self, rows: &[Option<StepRow>]) -> Result<Transfers> {
        let v = self.vocab;
        let (slots, kvh, hd, cap) = (
            self.cache.slots,
            self.cache.kv_heads,
            self.cache.head_dim,
            self.cache.capacity,
        );
        let (elem, _) = self.cache_units();
        let f = self.fixed.as_mut().expect("fixed-shape decode");
        let mut moves = Vec::new();
        let unit = |p: *mut i64| p.cast::<f32>();
        for i in 0..slots {
            let row = rows.get(i).copied().flatten();
            let id = row.map_or(0, |r| r.token.as_i64());
            if f.ids[i] != id {
                f.ids[i] = id;
                moves.push(Move {
                    src: Place::Host(unit(&mut f.ids[i])),
                    dst: Place::Device(f.dev_ids.at(2 * i)),
                    len: 2,
                });
            }
            let n = row.map_or(1, |r| r.pos + 1);
            let old = f.mask_len[i];
            if n != old {
                let line = &mut f.mask[i * cap..(i + 1) * cap];
                let (lo, hi) = (n.min(old), n.max(old));
                line[lo..hi].fill(if n > old { 1 } else { 0 });
                moves.push(Move {
                    src: Place::Host(unit(&mut line[lo])),
                    dst: Place::Device(f.dev_mask.at(2 * (i * cap + lo))),
                    len: 2 * (hi - lo),
                });
                f.mask_len[i] = n;
            }
        }
        let before = (self.dm.uploaded, self.dm.downloaded);
        self.dm
            .run(&moves)
            .context("uploading the step's ids and mask")?;
        let dev = self.dm.mem.clone();
        // SAFETY: as in `prefill`; the fixed device buffers live as long as the backend.
        unsafe {
            let mut feed = Feed::default();
            feed.typed(
                &dev,
                f.dev_ids.at(0),
                &[slots, 1],
                TensorElementType::Int64,
                false,
            )?;
            feed.typed(
                &dev,
                f.dev_mask.at(0),
                &[slots, cap],
                TensorElementType::Int64,
                false,
            )?;
            feed.typed(
                &dev,
                f.dev_logits.at(0),
                &[slots, 1, v],
                TensorElementType::Float32,
                true,
            )?;
            for buf in &self.cache.bufs {
                feed.typed(&dev, buf.at(0), &[slots, kvh, cap, hd], elem, false)?;
                feed.typed(&dev, buf.at(0), &[slots, kvh, cap, hd], elem, true)?;
            }
            run(&self.session, &self.input_names, &self.output_names, &feed)
                .context("decode step (fixed shape)")?;
        }
        // Only the rows the scheduler asked for are read back.
        let back = Move {
            src: Place::Device(f.dev_logits.at(0)),
            dst: Place::Host(self.logits.as_mut_ptr()),
            len: rows.len() * v,
        };
        self.dm.run(&[back]).context("reading the logits")?;
        // Counted by the device memory; reported as step I/O, not cache, by `decode`.
        Ok(Transfers {
            to_device: self.dm.uploaded - before.0,
            from_device: self.dm.downloaded - before.1,
            cache: 0,
        })
    }

    /// Concat form: gather a right-padded past `[b, kv, T, hd]` (T = longest cached length), feed
    /// the new token at its own position with the pad columns masked, and copy the new column
    /// (index T of `present`) back to position pos_b of the slot. Gather and scatter are device
    /// moves; only the step inputs and logits cross.
    fn decode_concat(
        &mut self,
        rows: &[Option<StepRow>],
        input_ids: &mut [i64],
        t: usize,
    ) -> Result<Transfers> {
        let b = rows.len();
        let v = self.vocab;
        let (kvh, hd, cap) = (
            self.cache.kv_heads,
            self.cache.head_dim,
            self.cache.capacity,
        );
        let (elem, u) = self.cache_units();
        let mut mask = vec![0i64; b * (t + 1)];
        let mut positions = vec![0i64; b];
        for (i, r) in rows.iter().enumerate() {
            let pos = r.map_or(0, |r| r.pos);
            mask[i * (t + 1)..i * (t + 1) + pos].fill(1);
            mask[i * (t + 1) + t] = 1;
            positions[i] = pos as i64;
        }
        // The pad columns of the past are masked out, so their contents do not matter; they
        // keep whatever the scratch held (zeros when first allocated).
        Self::ensure_scratch(
            &mut self.dm,
            &mut self.past_scratch,
            (b * kvh * t * hd).max(1),
        )?;
        Self::ensure_scratch(
            &mut self.dm,
            &mut self.present_scratch,
            b * kvh * (t + 1) * hd,
        )?;
        let mut gather = Vec::new();
        for (buf, past) in self.cache.bufs.iter().zip(&self.past_scratch) {
            for (i, r) in rows.iter().enumerate() {
                let n = r.map_or(0, |r| r.pos);
                if n == 0 {
                    continue;
                }
                for h in 0..kvh {
                    gather.push(Move {
                        src: Place::Device(buf.at(u((i * kvh + h) * cap * hd))),
                        dst: Place::Device(past.at(u((i * kvh + h) * t * hd))),
                        len: u(n * hd),
                    });
                }
            }
        }
        self.dm.run(&gather).context("gathering the past")?;
        let (mem, dev) = (self.mem.clone(), self.dm.mem.clone());
        // SAFETY: as in `prefill`.
        unsafe {
            let mut feed = Feed::default();
            feed.ints(&mem, input_ids.as_mut_ptr(), &[b, 1])?;
            feed.ints(&mem, mask.as_mut_ptr(), &[b, t + 1])?;
            feed.ints(&mem, positions.as_mut_ptr(), &[b, 1])?;
            feed.output(&mem, self.logits.as_mut_ptr(), &[b, 1, v])?;
            for (past, present) in self.past_scratch.iter().zip(&self.present_scratch) {
                feed.typed(&dev, past.at(0), &[b, kvh, t, hd], elem, false)?;
                feed.typed(&dev, present.at(0), &[b, kvh, t + 1, hd], elem, true)?;
            }
            run(&self.session, &self.input_names, &self.output_names, &feed)
                .context("decode step")?;
        }
        let mut scatter = Vec::new();
        for (buf, present) in self.cache.bufs.iter().zip(&self.present_scratch) {
            for (i, r) in rows.iter().enumerate() {
                let Some(r) = r else { continue };
                for h in 0..kvh {
                    scatter.push(Move {
                        src: Place::Device(present.at(u(((i * kvh + h) * (t + 1) + t) * hd))),
                        dst: Place::Device(buf.at(u(((i * kvh + h) * cap + r.pos) * hd))),
                        len: u(hd),
                    });
                }
            }
        }
        self.dm
            .run(&scatter)
            .context("placing the new keys and values")?;
        Ok(Transfers {
            to_device: (b * 8 + b * (t + 1) * 8 + b * 8) as u64,
            from_device: (b * v * 4) as u64,
            cache: 0,
        })
    }

    /// Copy the first `len` cached positions of slot `src` into slot `dst` (on the device). An
    /// error is returned by the next prefill or decode.
    pub fn copy_prefix(&mut self, src: usize, dst: usize, len: usize) {
        if let Err(e) = self.cache.copy_prefix(&mut self.dm, src, dst, len) {
            self.failed
                .get_or_insert(e.context("copying a slot's prefix"));
        }
    }

    /// A device copy of slot `slot`'s first `len` positions. An error is returned by the next
    /// prefill or decode (the stash is then empty and never used).
    pub fn stash(&mut self, slot: usize, len: usize) -> Stash {
        match self.cache.save_prefix(&mut self.dm, slot, len) {
            Ok(saved) => Stash { saved, len },
            Err(e) => {
                self.failed.get_or_insert(e.context("stashing a prefill"));
                Stash {
                    saved: SavedPrefix {
                        kv: Vec::new(),
                        len: 0,
                    },
                    len,
                }
            }
        }
    }

    pub fn unstash(&mut self, stash: &Stash, slot: usize) {
        let r = self
            .ensure_capacity(stash.len + 1)
            .and_then(|()| self.cache.load_prefix(&mut self.dm, &stash.saved, slot));
        if let Err(e) = r {
            self.failed
                .get_or_insert(e.context("restoring a stashed prefill"));
        }
    }
}
