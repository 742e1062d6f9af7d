//! The generation cache: per layer, one key and one value buffer `[slots, kv_heads, capacity,
//! head_dim]` in the session's device memory ([`DeviceMemory`]). The slot is the outermost
//! dimension so that one slot's region is contiguous (a prefill binds a view of it), and a slot's
//! first `n` positions are `kv_heads` runs of `n · head_dim` floats. Every change of contents
//! other than the graph's own writes is a list of device-to-device [`Move`]s (prefix copies,
//! re-layouts, saved prefixes); only the zeros of a new buffer come from the host.

use anyhow::Result;

use super::device::{DeviceBuffer, DeviceMemory, Move, Place};

pub struct SlotCache {
    /// Keys of layers 0..L, then values of layers 0..L (the graph's input order).
    pub bufs: Vec<DeviceBuffer>,
    pub slots: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub capacity: usize,
}

/// The first positions of one slot, kept on the device: per buffer `[kv_heads, len, head_dim]`.
pub struct SavedPrefix {
    pub kv: Vec<DeviceBuffer>,
    pub len: usize,
}

impl SlotCache {
    /// A zero-filled cache.
    pub fn new(
        dm: &mut DeviceMemory,
        layers: usize,
        slots: usize,
        kv_heads: usize,
        head_dim: usize,
        capacity: usize,
    ) -> Result<Self> {
        let n = slots * kv_heads * capacity * head_dim;
        Ok(SlotCache {
            bufs: (0..2 * layers)
                .map(|_| dm.zeros(n))
                .collect::<Result<_>>()?,
            slots,
            kv_heads,
            head_dim,
            capacity,
        })
    }

    /// Moves per slot and buffer set: one run of positions per head and buffer.
    pub fn moves_per_slot(layers: usize, kv_heads: usize) -> usize {
        2 * layers * kv_heads
    }

    /// Start of (slot, head) in a buffer.
    pub fn base(&self, slot: usize, head: usize) -> usize {
        (slot * self.kv_heads + head) * self.capacity * self.head_dim
    }

    /// Bytes of one buffer.
    pub fn buffer_bytes(&self) -> usize {
        self.slots * self.kv_heads * self.capacity * self.head_dim * 4
    }

    /// Re-lay every buffer with a larger capacity, keeping contents (device-to-device).
    pub fn grow(&mut self, dm: &mut DeviceMemory, capacity: usize) -> Result<()> {
        assert!(
            capacity >= self.capacity,
            "shrinking the cache; this is a bug"
        );
        let (old, hd) = (self.capacity, self.head_dim);
        let n = self.slots * self.kv_heads * capacity * hd;
        let mut next = Vec::with_capacity(self.bufs.len());
        for buf in &self.bufs {
            let fresh = dm.zeros(n)?;
            let moves: Vec<Move> = (0..self.slots * self.kv_heads)
                .map(|run| Move {
                    src: Place::Device(buf.at(run * old * hd)),
                    dst: Place::Device(fresh.at(run * capacity * hd)),
                    len: old * hd,
                })
                .collect();
            dm.run(&moves)?;
            next.push(fresh);
        }
        self.bufs = next;
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
        let n = len * self.head_dim;
        let mut moves = Vec::with_capacity(self.bufs.len() * self.kv_heads);
        for buf in &self.bufs {
            for h in 0..self.kv_heads {
                moves.push(Move {
                    src: Place::Device(buf.at(self.base(src, h))),
                    dst: Place::Device(buf.at(self.base(dst, h))),
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
        let n = len * self.head_dim;
        let mut kv = Vec::with_capacity(self.bufs.len());
        let mut moves = Vec::new();
        for buf in &self.bufs {
            let out = dm.alloc(self.kv_heads * n)?;
            for h in 0..self.kv_heads {
                moves.push(Move {
                    src: Place::Device(buf.at(self.base(slot, h))),
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
        let n = saved.len * self.head_dim;
        if n == 0 {
            return Ok(());
        }
        let mut moves = Vec::new();
        for (buf, src) in self.bufs.iter().zip(&saved.kv) {
            for h in 0..self.kv_heads {
                moves.push(Move {
                    src: Place::Device(src.at(h * n)),
                    dst: Place::Device(buf.at(self.base(slot, h))),
                    len: n,
                });
            }
        }
        dm.run(&moves)
    }
}
