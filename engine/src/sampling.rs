//! Turning last-position logits into the next token, with Hugging Face `generate` semantics so that
//! outputs compare with transformers: logits processors in HF's order — repetition penalty,
//! no-repeat-n-gram ban, min-new-tokens EOS suppression — then the warpers temperature, top-k,
//! top-p, min-p, then greedy argmax or one categorical draw.
//!
//! Every (prompt id, sample index) owns its own RNG stream derived from the run seed
//! ([`stream_rng`]), and each step consumes exactly one uniform draw from it. A response therefore
//! depends only on its own logits, never on batch size, thread count, shard or resume point.

use std::collections::HashSet;

use exports::TokenId;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha12Rng;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decoding {
    Greedy,
    Sample,
    Beam { beams: usize },
}

/// Per-step token selection settings (validated by [`SamplingConfig::validate`]).
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingConfig {
    pub decoding: Decoding,
    pub temperature: f32,
    /// 0 disables.
    pub top_k: usize,
    /// 1.0 disables.
    pub top_p: f32,
    /// 0.0 disables.
    pub min_p: f32,
    /// 1.0 disables; HF's CTRL-style penalty over prompt and generated tokens.
    pub repetition_penalty: f32,
    /// 0 disables; bans tokens that would repeat an n-gram of prompt + generated text.
    pub no_repeat_ngram: usize,
    pub min_new_tokens: usize,
}

impl Default for SamplingConfig {
    fn default() -> Self {
        SamplingConfig {
            decoding: Decoding::Sample,
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            no_repeat_ngram: 0,
            min_new_tokens: 0,
        }
    }
}

impl SamplingConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.temperature.is_nan() || self.temperature <= 0.0 {
            return Err(format!(
                "--temperature must be > 0, got {}",
                self.temperature
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(format!("--top-p must be in (0, 1], got {}", self.top_p));
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return Err(format!("--min-p must be in [0, 1], got {}", self.min_p));
        }
        if self.repetition_penalty.is_nan() || self.repetition_penalty <= 0.0 {
            return Err(format!(
                "--repetition-penalty must be > 0, got {}",
                self.repetition_penalty
            ));
        }
        if let Decoding::Beam { beams } = self.decoding {
            if beams < 1 {
                return Err("--beams must be at least 1".into());
            }
        }
        Ok(())
    }
}

/// FNV-1a: a stable hash (unlike `DefaultHasher`, guaranteed not to change between Rust versions),
/// so seeds derived from prompt ids are the same on every machine and toolchain.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The RNG of one response: seeded by (run seed, prompt id), stream = sample index.
pub fn stream_rng(seed: u64, prompt_id: &str, sample: usize) -> ChaCha12Rng {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    key[8..16].copy_from_slice(&fnv1a(prompt_id.as_bytes()).to_le_bytes());
    key[16..24].copy_from_slice(&(prompt_id.len() as u64).to_le_bytes());
    let mut rng = ChaCha12Rng::from_seed(key);
    rng.set_stream(sample as u64);
    rng
}

/// Apply the logits processors (not the warpers) in place.
/// `context` is prompt + generated tokens; `generated` is how many of them were generated.
pub fn process_logits(
    logits: &mut [f32],
    context: &[TokenId],
    generated: usize,
    cfg: &SamplingConfig,
    eos: &[TokenId],
) {
    if cfg.repetition_penalty != 1.0 {
        let seen: HashSet<TokenId> = context.iter().copied().collect();
        for t in seen {
            if let Some(l) = logits.get_mut(t.index()) {
                // HF: divide positive scores, multiply negative ones.
                *l = if *l < 0.0 {
                    *l * cfg.repetition_penalty
                } else {
                    *l / cfg.repetition_penalty
                };
            }
        }
    }
    if cfg.no_repeat_ngram > 0 {
        for t in banned_ngram_tokens(context, cfg.no_repeat_ngram) {
            if let Some(l) = logits.get_mut(t.index()) {
                *l = f32::NEG_INFINITY;
            }
        }
    }
    if generated < cfg.min_new_tokens {
        for t in eos {
            if let Some(l) = logits.get_mut(t.index()) {
                *l = f32::NEG_INFINITY;
            }
        }
    }
}

/// Tokens that would complete an n-gram already present in `context` (HF's
/// `NoRepeatNGramLogitsProcessor`: the last n-1 tokens are the prefix to look up).
pub fn banned_ngram_tokens(context: &[TokenId], n: usize) -> Vec<TokenId> {
    if n == 0 || context.len() + 1 < n {
        return vec![];
    }
    if n == 1 {
        let mut all: Vec<TokenId> = context.to_vec();
        all.sort();
        all.dedup();
        return all;
    }
    let prefix = &context[context.len() - (n - 1)..];
    let mut banned: Vec<TokenId> = context
        .windows(n)
        .filter(|w| &w[..n - 1] == prefix)
        .map(|w| w[n - 1])
        .collect();
    banned.sort();
    banned.dedup();
    banned
}

/// Index of the largest logit; the first one on ties (as `torch.argmax`).
pub fn argmax(logits: &[f32]) -> usize {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best
}

/// The candidate distribution after temperature, top-k, top-p and min-p, as (token, probability)
/// sorted by decreasing probability (ties by token id). Probabilities sum to 1.
pub fn filtered_distribution(logits: &[f32], cfg: &SamplingConfig) -> Vec<(usize, f64)> {
    let mut cand: Vec<(usize, f64)> = if cfg.top_k > 0 {
        top_k_candidates(logits, cfg.top_k, cfg.temperature)
            .into_iter()
            .map(|(i, s)| (i, s as f64))
            .collect()
    } else {
        logits
            .iter()
            .enumerate()
            .map(|(i, &l)| (i, l / cfg.temperature))
            .filter(|(_, s)| s.is_finite())
            .map(|(i, s)| (i, s as f64))
            .collect()
    };
    if cand.is_empty() {
        return vec![];
    }
    cand.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    let max = cand[0].1;
    let mut probs: Vec<f64> = cand.iter().map(|c| (c.1 - max).exp()).collect();
    let z: f64 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= z);
    let mut keep = cand.len();
    if cfg.top_p < 1.0 {
        // Smallest prefix whose mass reaches top_p (always at least one token).
        let mut mass = 0.0;
        for (i, p) in probs.iter().enumerate() {
            mass += p;
            if mass >= cfg.top_p as f64 {
                keep = i + 1;
                break;
            }
        }
    }
    if cfg.min_p > 0.0 {
        let threshold = probs[0] * cfg.min_p as f64;
        keep = keep.min(probs.iter().take_while(|&&p| p >= threshold).count().max(1));
    }
    cand.truncate(keep);
    probs.truncate(keep);
    let z: f64 = probs.iter().sum();
    cand.iter().zip(probs).map(|(c, p)| (c.0, p / z)).collect()
}

/// Top-k's candidates, unsorted: every token whose finite scaled score `logit / temperature` is
/// at least the `k`-th largest one (HF keeps every token that ties the k-th), or every finite
/// one when there are at most `k`.
///
/// One pass over the vocabulary without copying it: scores are scaled 16 at a time, and a block
/// whose largest score is below the running threshold is passed over without a branch per
/// token. The threshold is the k-th largest of the candidates kept so far, so it never exceeds
/// the true k-th largest, and a token dropped under it cannot be in the answer.
pub fn top_k_candidates(logits: &[f32], k: usize, temperature: f32) -> Vec<(usize, f32)> {
    const BLOCK: usize = 16;
    let k = k.max(1);
    // Prune once this many candidates gather (then the threshold rises to the k-th of them).
    let prune_at = (4 * k).max(64);
    let mut cand: Vec<(usize, f32)> = Vec::with_capacity(prune_at + BLOCK);
    let mut scratch: Vec<f32> = Vec::with_capacity(prune_at + BLOCK);
    let mut threshold = f32::NEG_INFINITY;
    let kth = |cand: &[(usize, f32)], scratch: &mut Vec<f32>| {
        scratch.clear();
        scratch.extend(cand.iter().map(|c| c.1));
        *scratch
            .select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a))
            .1
    };
    for (b, block) in logits.chunks(BLOCK).enumerate() {
        // Correctly rounded division by a positive temperature is monotone, so the block's
        // largest scaled logit is its largest raw logit scaled: most blocks are skipped
        // after one comparison, without dividing each element.
        let top = block.iter().fold(f32::NEG_INFINITY, |m, &l| m.max(l)) / temperature;
        // NaN never passes (`max` skips it, and `>=` is false for it).
        if top < threshold {
            continue;
        }
        for (j, &l) in block.iter().enumerate() {
            let s = l / temperature;
            if s.is_finite() && s >= threshold {
                cand.push((b * BLOCK + j, s));
            }
        }
        if cand.len() >= prune_at {
            threshold = kth(&cand, &mut scratch);
            cand.retain(|c| c.1 >= threshold);
        }
    }
    if cand.len() > k {
        threshold = kth(&cand, &mut scratch);
        cand.retain(|c| c.1 >= threshold);
    }
    cand
}

/// Pick the next token from processed logits: argmax for greedy, else one categorical draw.
pub fn select(logits: &[f32], cfg: &SamplingConfig, rng: &mut impl Rng) -> TokenId {
    if cfg.decoding != Decoding::Sample {
        return TokenId(argmax(logits) as u32);
    }
    let dist = filtered_distribution(logits, cfg);
    // One draw per step, even when the distribution has a single token, so that streams stay
    // aligned with the step count.
    let u: f64 = rng.random();
    let mut acc = 0.0;
    for &(tok, p) in &dist {
        acc += p;
        if u < acc {
            return TokenId(tok as u32);
        }
    }
    TokenId(dist.last().map(|d| d.0).unwrap_or_else(|| argmax(logits)) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: &[u32]) -> Vec<TokenId> {
        v.iter().map(|&i| TokenId(i)).collect()
    }

    fn cfg() -> SamplingConfig {
        SamplingConfig::default()
    }

    #[test]
    fn temperature_and_top_k_match_hand_computed_softmax() {
        // logits [2, 1, 0, -1], T = 0.5 → scaled [4, 2, 0, -2]; top-k 2 keeps {0, 1}:
        // p0 = e^4 / (e^4 + e^2) = 1 / (1 + e^-2).
        let c = SamplingConfig {
            temperature: 0.5,
            top_k: 2,
            ..cfg()
        };
        let d = filtered_distribution(&[2.0, 1.0, 0.0, -1.0], &c);
        assert_eq!(d.len(), 2);
        let p0 = 1.0 / (1.0 + (-2.0f64).exp());
        assert!((d[0].1 - p0).abs() < 1e-12 && d[0].0 == 0);
        assert!((d[1].1 - (1.0 - p0)).abs() < 1e-12 && d[1].0 == 1);
    }

    #[test]
    fn top_p_keeps_the_smallest_prefix_reaching_the_mass() {
        // probs ∝ [4, 3, 2, 1] / 10 → cumulative 0.4, 0.7, 0.9: top-p 0.7 keeps two tokens.
        let l: Vec<f32> = [4.0f32, 3.0, 2.0, 1.0].iter().map(|p| p.ln()).collect();
        let d = filtered_distribution(
            &l,
            &SamplingConfig {
                top_p: 0.7,
                ..cfg()
            },
        );
        assert_eq!(d.iter().map(|x| x.0).collect::<Vec<_>>(), [0, 1]);
        assert!((d[0].1 - 4.0 / 7.0).abs() < 1e-6);
        let d = filtered_distribution(
            &l,
            &SamplingConfig {
                top_p: 0.71,
                ..cfg()
            },
        );
        assert_eq!(d.len(), 3);
    }

    #[test]
    fn min_p_drops_tokens_below_a_fraction_of_the_top_probability() {
        // probs [0.5, 0.3, 0.15, 0.05]; min-p 0.29 → threshold 0.145 keeps three,
        // min-p 0.31 → threshold 0.155 keeps two.
        let l: Vec<f32> = [0.5f32, 0.3, 0.15, 0.05].iter().map(|p| p.ln()).collect();
        let d = filtered_distribution(
            &l,
            &SamplingConfig {
                min_p: 0.29,
                ..cfg()
            },
        );
        assert_eq!(d.len(), 3);
        assert!((d[2].1 - 0.15 / 0.95).abs() < 1e-6);
        let d = filtered_distribution(
            &l,
            &SamplingConfig {
                min_p: 0.31,
                ..cfg()
            },
        );
        assert_eq!(d.len(), 2);
    }

    #[test]
    fn repetition_penalty_divides_positive_and_multiplies_negative_logits() {
        let mut l = vec![2.0, -2.0, 1.0];
        let c = SamplingConfig {
            repetition_penalty: 2.0,
            ..cfg()
        };
        process_logits(&mut l, &ids(&[0, 1, 1]), 0, &c, &[]);
        assert_eq!(l, vec![1.0, -4.0, 1.0]);
    }

    #[test]
    fn ngram_ban_blocks_exact_completions_only() {
        // context a b c a b → with n = 3 the prefix (a b) was followed by c: ban c only.
        assert_eq!(banned_ngram_tokens(&ids(&[1, 2, 3, 1, 2]), 3), ids(&[3]));
        assert!(banned_ngram_tokens(&ids(&[1, 2, 3, 1, 4]), 3).is_empty());
        assert_eq!(banned_ngram_tokens(&ids(&[5, 5]), 2), ids(&[5]));
        assert!(banned_ngram_tokens(&ids(&[1]), 3).is_empty());
    }

    #[test]
    fn min_new_tokens_suppresses_eos() {
        let mut l = vec![0.0, 5.0, 1.0];
        let c = SamplingConfig {
            min_new_tokens: 2,
            ..cfg()
        };
        process_logits(&mut l, &[], 1, &c, &ids(&[1]));
        assert_eq!(argmax(&l), 2);
        let mut l = vec![0.0, 5.0, 1.0];
        process_logits(&mut l, &[], 2, &c, &ids(&[1]));
        assert_eq!(argmax(&l), 1);
    }

    #[test]
    fn draws_follow_the_distribution_and_streams_are_independent_of_each_other() {
        let l: Vec<f32> = [0.6f32, 0.3, 0.1].iter().map(|p| p.ln()).collect();
        let mut counts = [0usize; 3];
        let mut rng = stream_rng(7, "p1", 0);
        for _ in 0..20000 {
            counts[select(&l, &cfg(), &mut rng).index()] += 1;
        }
        let f0 = counts[0] as f64 / 20000.0;
        assert!((f0 - 0.6).abs() < 0.02, "{counts:?}");
        // Same key → same stream; another sample index or prompt id → another stream.
        let a: Vec<u64> = (0..4).map(|_| stream_rng(7, "p1", 0).random()).collect();
        assert!(a.windows(2).all(|w| w[0] == w[1]));
        let x: u64 = stream_rng(7, "p1", 1).random();
        let y: u64 = stream_rng(7, "p2", 0).random();
        assert!(x != a[0] && y != a[0] && x != y);
    }

    #[test]
    fn greedy_takes_the_first_maximum() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0, 2.0]), 1);
        let mut rng = stream_rng(0, "x", 0);
        let c = SamplingConfig {
            decoding: Decoding::Greedy,
            ..cfg()
        };
        assert_eq!(select(&[0.0, 1.0, 0.5], &c, &mut rng), TokenId(1));
    }

    /// Top-k's candidates are exactly the finite scores at or above the k-th largest of a full
    /// sort (every token when at most k are finite), with ties, infinities, NaN, blocks skipped
    /// and prunes along the way.
    #[test]
    fn top_k_candidates_match_a_full_sort() {
        let mut rng = ChaCha12Rng::seed_from_u64(7);
        for case in 0..300 {
            let n = 1 + case % 90 + if case % 7 == 0 { 700 } else { 0 };
            let mut v: Vec<f32> = (0..n)
                .map(|_| (rng.random_range(0..40) as f32) * 0.5 - 3.0)
                .collect();
            if case % 3 == 0 {
                v[n / 2] = f32::NEG_INFINITY;
                v.push(f32::NAN);
                v.push(f32::INFINITY);
            }
            let t = [1.0f32, 0.7, 1.3][case % 3];
            let scaled: Vec<f32> = v.iter().map(|&l| l / t).collect();
            let mut finite: Vec<f32> = scaled.iter().copied().filter(|x| x.is_finite()).collect();
            finite.sort_by(|a, b| b.total_cmp(a));
            for k in [1, 2, 3, 5, 17, 50, n + 2] {
                let kth = (finite.len() > k).then(|| finite[k - 1]);
                let mut want: Vec<usize> = (0..scaled.len())
                    .filter(|&i| scaled[i].is_finite() && kth.is_none_or(|t| scaled[i] >= t))
                    .collect();
                let got = top_k_candidates(&v, k, t);
                assert!(got.iter().all(|&(i, s)| s.to_bits() == scaled[i].to_bits()));
                let mut got: Vec<usize> = got.into_iter().map(|c| c.0).collect();
                got.sort_unstable();
                want.sort_unstable();
                assert_eq!(got, want, "case {case}, k = {k}");
            }
        }
    }
}
