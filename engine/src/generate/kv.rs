//! The generation cache: per layer, one key and one value buffer `[slots, kv_heads, capacity,
//! head_dim]` in the session's device memory ([`DeviceMemory`]). The slot is the outermost
//! dimension so that one slot's region is contiguous (a prefill binds a view of it), and a slot's
//! first `n` positions are `kv_heads` runs of `n · head_dim` floats. Every change of contents
//! other than the graph's own writes is a list of device-to-device [`Move`]s (prefix copies,
//! re-layouts, saved prefixes); only the zeros of a new buffer come from the host.

use anyhow::{bail, Result};
use ort::value::TensorElementType;

use super::device::{element_bytes, DeviceBuffer, DeviceMemory, Move, Place};

pub struct SlotCache {
    /// Keys of layers 0..L, then values of layers 0..L (the graph's input order).
    pub bufs: Vec<DeviceBuffer>,
    pub slots: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub capacity: usize,
    /// The graph's cache type (fp32, fp16/bf16 for half-precision exports, int8 for a quantized
    /// GroupQueryAttention cache).
    pub elem: TensorElementType,
    /// Bytes per element. Buffers and moves count 4-byte units (copies do not care about the
    /// type); every offset is a multiple of `head_dim`, which the constructor checks is a multiple
    /// of `4 / esize`, so narrow offsets fall on whole units.
    esize: usize,
}

/// The first positions of one slot, kept on the device: per buffer `[kv_heads, len, head_dim]`.
pub struct SavedPrefix {
    pub kv: Vec<DeviceBuffer>,
    pub len: usize,
}

impl SlotCache {
    /// A zero-filled cache of `elem` values.
    pub fn new(
        dm: &mut DeviceMemory,
        layers: usize,
        slots: usize,
        kv_heads: usize,
        head_dim: usize,
        capacity: usize,
        elem: TensorElementType,
    ) -> Result<Self> {
        let Some(esize) = element_bytes(elem) else {
            bail!("a {elem:?} KV cache: the engine keeps fp32, fp16, bf16 or int8 caches");
        };
        if !head_dim.is_multiple_of(4 / esize) {
            bail!(
                "a {esize}-byte KV cache needs head_dim to be a multiple of {}, got {head_dim}",
                4 / esize
            );
        }
        let mut c = SlotCache {
            bufs: Vec::new(),
            slots,
            kv_heads,
            head_dim,
            capacity,
            elem,
            esize,
        };
        let n = c.units(slots * kv_heads * capacity * head_dim);
        c.bufs = (0..2 * layers)
            .map(|_| dm.zeros(n))
            .collect::<Result<_>>()?;
        Ok(c)
    }

    /// 4-byte units of `elems` cache values (offsets and lengths of buffers and moves).
    pub fn units(&self, elems: usize) -> usize {
        elems * self.esize / 4
    }

    /// Moves per slot and buffer set: one run of positions per head and buffer.
    pub fn moves_per_slot(layers: usize, kv_heads: usize) -> usize {
        2 * layers * kv_heads
    }

    /// Start of (slot, head) in a buffer.
    pub fn base(&self, slot: usize, head: usize) -> usize {
        (slot * self.kv_heads + head) * self.capacity * self.head_dim
    }

    /// Re-lay every buffer with a larger capacity, keeping contents (device-to-device).
    ///
    /// One buffer at a time: each old buffer is freed as soon as its copy is made, so the peak is
    /// the new cache plus one old buffer (of 2 · layers), not the old and the new cache together.
    /// On an error the buffers are of mixed capacities and the cache must not be used again;
    /// the error ends the generation.
    pub fn grow(&mut self, dm: &mut DeviceMemory, capacity: usize) -> Result<()> {
        assert!(
            capacity >= self.capacity,
            "shrinking the cache; this is a bug"
        );
        let (old, hd) = (self.capacity, self.head_dim);
        let n = self.units(self.slots * self.kv_heads * capacity * hd);
        let runs = self.slots * self.kv_heads;
        let (old_run, new_run) = (self.units(old * hd), self.units(capacity * hd));
        for buf in self.bufs.iter_mut() {
            let fresh = dm.zeros(n)?;
            let moves: Vec<Move> = (0..runs)
                .map(|run| Move {
                    src: Place::Device(buf.at(run * old_run)),
                    dst: Place::Device(fresh.at(run * new_run)),
                    len: old_run,
                })
                .collect();
            dm.run(&moves)?;
            *buf = fresh;
        }
        self.capacity = capacity;
        Ok(())
    }

    /// Copy the first `len` positions of slot `src` into slot `dst`; the rest of `dst` keeps
    /// its contents.
    pub fn copy_prefix(
        &mut self,
        dm: &mut DeviceMemory,
        src: usize,
        dst: usize,
        len: usize,
    ) -> Result<()> {
        if src == dst || len == 0 {
            return Ok(());
        }
        let n = self.units(len * self.head_dim);
        let mut moves = Vec::with_capacity(self.bufs.len() * self.kv_heads);
        for buf in &self.bufs {
            for h in 0..self.kv_heads {
                moves.push(Move {
                    src: Place::Device(buf.at(self.units(self.base(src, h)))),
                    dst: Place::Device(buf.at(self.units(self.base(dst, h)))),
                    len: n,
                });
            }
        }
        dm.run(&moves)
    }

    /// A device copy of the first `len` positions of a slot.
    pub fn save_prefix(
        &self,
        dm: &mut DeviceMemory,
        slot: usize,
        len: usize,
    ) -> Result<SavedPrefix> {
        let n = self.units(len * self.head_dim);
        let mut kv = Vec::with_capacity(self.bufs.len());
        let mut moves = Vec::new();
        for buf in &self.bufs {
            let out = dm.alloc(self.kv_heads * n)?;
            for h in 0..self.kv_heads {
                moves.push(Move {
                    src: Place::Device(buf.at(self.units(self.base(slot, h)))),
                    dst: Place::Device(out.at(h * n)),
                    len: n,
                });
            }
            kv.push(out);
        }
        if n > 0 {
            dm.run(&moves)?;
        }
        Ok(SavedPrefix { kv, len })
    }

    /// Put a saved prefix into `slot`.
    pub fn load_prefix(
        &mut self,
        dm: &mut DeviceMemory,
        saved: &SavedPrefix,
        slot: usize,
    ) -> Result<()> {
        let n = self.units(saved.len * self.head_dim);
        if n == 0 {
            return Ok(());
        }
        let mut moves = Vec::new();
        for (buf, src) in self.bufs.iter().zip(&saved.kv) {
            for h in 0..self.kv_heads {
                moves.push(Move {
                    src: Place::Device(src.at(h * n)),
                    dst: Place::Device(buf.at(self.units(self.base(slot, h)))),
                    len: n,
                });
            }
        }
        dm.run(&moves)
    }
}
