//! Host KV cache: per layer, one key and one value buffer `[slots, kv_heads, capacity, head_dim]`.
//! The slot is the outermost dimension so that one slot's region is contiguous (a prefill binds a
//! view of it), and a slot's first `n` positions are `kv_heads` runs of `n · head_dim` floats.

pub struct SlotCache {
    /// Keys of layers 0..L, then values of layers 0..L (the graph's input order).
    pub bufs: Vec<Vec<f32>>,
    pub slots: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub capacity: usize,
}

impl SlotCache {
    pub fn new(
        layers: usize,
        slots: usize,
        kv_heads: usize,
        head_dim: usize,
        capacity: usize,
    ) -> Self {
        let n = slots * kv_heads * capacity * head_dim;
        SlotCache {
            bufs: (0..2 * layers).map(|_| vec![0.0; n]).collect(),
            slots,
            kv_heads,
            head_dim,
            capacity,
        }
    }

    /// Start of (slot, head) in a buffer.
    fn base(&self, slot: usize, head: usize) -> usize {
        (slot * self.kv_heads + head) * self.capacity * self.head_dim
    }

    /// Re-lay every buffer with a larger capacity, keeping contents.
    pub fn grow(&mut self, capacity: usize) {
        assert!(
            capacity >= self.capacity,
            "shrinking the cache; this is a bug"
        );
        let (old, hd) = (self.capacity, self.head_dim);
        for buf in self.bufs.iter_mut() {
            let mut next = vec![0.0; self.slots * self.kv_heads * capacity * hd];
            for run in 0..self.slots * self.kv_heads {
                next[run * capacity * hd..(run * capacity + old) * hd]
                    .copy_from_slice(&buf[run * old * hd..(run + 1) * old * hd]);
            }
            *buf = next;
        }
        self.capacity = capacity;
    }

    pub fn copy_prefix(&mut self, src: usize, dst: usize, len: usize) {
        if src == dst || len == 0 {
            return;
        }
        let n = len * self.head_dim;
        for h in 0..self.kv_heads {
            let (s, d) = (self.base(src, h), self.base(dst, h));
            for buf in self.bufs.iter_mut() {
                buf.copy_within(s..s + n, d);
            }
        }
    }

    /// The first `len` positions of a slot, per buffer `[kv_heads, len, head_dim]`.
    pub fn save_prefix(&self, slot: usize, len: usize) -> Vec<Vec<f32>> {
        let n = len * self.head_dim;
        self.bufs
            .iter()
            .map(|buf| {
                let mut out = Vec::with_capacity(self.kv_heads * n);
                for h in 0..self.kv_heads {
                    let s = self.base(slot, h);
                    out.extend_from_slice(&buf[s..s + n]);
                }
                out
            })
            .collect()
    }

    pub fn load_prefix(&mut self, saved: &[Vec<f32>], slot: usize, len: usize) {
        let n = len * self.head_dim;
        let bases: Vec<usize> = (0..self.kv_heads).map(|h| self.base(slot, h)).collect();
        for (buf, src) in self.bufs.iter_mut().zip(saved) {
            for (h, &d) in bases.iter().enumerate() {
                buf[d..d + n].copy_from_slice(&src[h * n..(h + 1) * n]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filled(cache: &mut SlotCache) {
        for (b, buf) in cache.bufs.iter_mut().enumerate() {
            for (i, x) in buf.iter_mut().enumerate() {
                *x = (b * 10_000 + i) as f32;
            }
        }
    }

    #[test]
    fn growing_keeps_each_slot_and_head_at_its_positions() {
        let mut c = SlotCache::new(1, 2, 2, 3, 4);
        filled(&mut c);
        let before = c.save_prefix(1, 4);
        c.grow(7);
        assert_eq!(c.save_prefix(1, 4), before);
        // slot 1, head 1, position 2, dim 0 was at ((1*2+1)*4+2)*3 = 42.
        assert_eq!(c.bufs[0][((2 + 1) * 7 + 2) * 3], 42.0);
    }

    #[test]
    fn prefix_copies_move_only_the_first_positions_of_every_head() {
        let mut c = SlotCache::new(2, 3, 2, 2, 5);
        filled(&mut c);
        let untouched = c.save_prefix(2, 5);
        c.copy_prefix(0, 2, 3);
        assert_eq!(c.save_prefix(2, 3), c.save_prefix(0, 3));
        // Positions 3 and 4 of slot 2 kept their contents.
        let after = c.save_prefix(2, 5);
        for (a, u) in after.iter().zip(&untouched) {
            for h in 0..2 {
                assert_eq!(a[h * 10 + 6..h * 10 + 10], u[h * 10 + 6..h * 10 + 10]);
            }
        }
        let saved = c.save_prefix(1, 2);
        c.load_prefix(&saved, 0, 2);
        assert_eq!(c.save_prefix(0, 2), saved);
    }
}
