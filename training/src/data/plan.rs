//! The order of examples: length-bucketed optimizer batches, a pure function of (seed, epoch).
//!
//! Each epoch shuffles the examples, cuts the shuffled list into windows of
//! [`BUCKET_BATCHES`] batches, sorts each window by length (so a batch holds similar lengths and
//! wastes little padding) and shuffles the order of the resulting batches. Because the plan is
//! recomputed from the seed, resuming only needs the global step.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// How many batches share one length-sorting window.
pub const BUCKET_BATCHES: usize = 16;

/// SplitMix64: decorrelates nearby seeds before they seed a ChaCha stream.
pub fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn shuffle<T>(v: &mut [T], rng: &mut ChaCha8Rng) {
    for i in (1..v.len()).rev() {
        let j = rng.random_range(0..=i);
        v.swap(i, j);
    }
}

/// Optimizer steps in one epoch of `n` examples (the last batch may be smaller).
pub fn steps_per_epoch(n: usize, batch_size: usize) -> usize {
    n.div_ceil(batch_size.max(1))
}

/// The batches (example indices, longest first within a batch) of epoch `epoch`.
pub fn epoch_batches(
    lengths: &[usize],
    batch_size: usize,
    seed: u64,
    epoch: u64,
) -> Vec<Vec<usize>> {
    let batch_size = batch_size.max(1);
    let mut rng = ChaCha8Rng::seed_from_u64(mix(seed ^ mix(epoch.wrapping_add(0xE90C))));
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    shuffle(&mut order, &mut rng);
    let mut batches = Vec::new();
    for window in order.chunks(batch_size * BUCKET_BATCHES) {
        let mut w = window.to_vec();
        // Stable sort: ties keep the shuffled order, so the plan stays a function of the seed.
        w.sort_by_key(|&i| std::cmp::Reverse(lengths[i]));
        batches.extend(w.chunks(batch_size).map(<[usize]>::to_vec));
    }
    shuffle(&mut batches, &mut rng);
    batches
}

/// The examples of global step `step` (0-based).
pub fn step_batch(lengths: &[usize], batch_size: usize, seed: u64, step: u64) -> Vec<usize> {
    let spe = steps_per_epoch(lengths.len(), batch_size) as u64;
    let epoch = step / spe;
    let mut batches = epoch_batches(lengths, batch_size, seed, epoch);
    batches.swap_remove((step % spe) as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_example_once_per_epoch_and_deterministic() {
        let lengths: Vec<usize> = (0..203).map(|i| (i * 7919) % 97 + 3).collect();
        let a = epoch_batches(&lengths, 4, 9, 0);
        assert_eq!(a, epoch_batches(&lengths, 4, 9, 0));
        assert_ne!(a, epoch_batches(&lengths, 4, 9, 1));
        assert_ne!(a, epoch_batches(&lengths, 4, 10, 0));
        assert_eq!(a.len(), steps_per_epoch(203, 4));
        let mut all: Vec<usize> = a.iter().flatten().copied().collect();
        all.sort();
        assert_eq!(all, (0..203).collect::<Vec<_>>());
        assert_eq!(a.iter().filter(|b| b.len() < 4).count(), 1);
        // Bucketing: within a batch lengths are sorted, and batches are much tighter than random.
        let spread: usize = a
            .iter()
            .map(|b| lengths[b[0]] - lengths[*b.last().unwrap()])
            .sum();
        assert!(spread < 203 * 20 / 4, "spread {spread}");
        for b in &a {
            assert!(b.windows(2).all(|w| lengths[w[0]] >= lengths[w[1]]));
        }
        for (s, batch) in a.iter().enumerate() {
            assert_eq!(&step_batch(&lengths, 4, 9, s as u64), batch);
        }
    }
}
