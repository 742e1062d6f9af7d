//! Beam search with Hugging Face `generate` semantics (transformers 5.x `_beam_search`):
//! `num_beams` B, length penalty 1.0, `early_stopping=False` (HF's default heuristic), logits
//! processors (no-repeat-n-gram, repetition penalty, min-new-tokens) applied per beam to the
//! log-softmax scores, `max(2, 1 + #eos) · B` candidates per step, and the best finished
//! hypothesis returned. A candidate that hits a stopping criterion (EOS, a stop string, the token
//! budget) is finished only when it ranks among the top B candidates.

use exports::records::FinishReason;
use exports::TokenId;

use crate::sampling::{process_logits, SamplingConfig};

/// What a candidate continuation would end with.
pub trait StopRule {
    /// Why `generated` (the full continuation including its newest token) must stop, if it must.
    fn hit(&self, generated: &[TokenId]) -> Option<FinishReason>;
}

const NEG: f32 = -1.0e9;
const LENGTH_PENALTY: f32 = 1.0;

#[derive(Clone)]
struct Hyp {
    tokens: Vec<TokenId>,
    score: f32,
    finished: bool,
    reason: FinishReason,
}

pub struct BeamSearch {
    beams: usize,
    prompt: Vec<TokenId>,
    /// Running beams (generated tokens only) and their accumulated log-probabilities.
    running: Vec<(Vec<TokenId>, f32)>,
    finished: Vec<Hyp>,
    improvable: bool,
    eos_count: usize,
}

/// The result of one step: beam i continues beam `parents[i]` with `tokens[i]`.
pub struct Advance {
    pub parents: Vec<usize>,
    pub tokens: Vec<TokenId>,
    pub done: bool,
}

/// Natural log-softmax in f32, as `torch.log_softmax` on f32 logits.
pub fn log_softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f32 = logits.iter().map(|&l| (l - max).exp()).sum();
    let lse = max + sum.ln();
    logits.iter().map(|&l| l - lse).collect()
}

impl BeamSearch {
    pub fn new(prompt: Vec<TokenId>, beams: usize, eos_count: usize) -> Self {
        // Only beam 0 is live at first (HF: scores [0, -1e9, …]), so the first step draws all
        // candidates from one copy of the prompt.
        let running = (0..beams)
            .map(|i| (Vec::new(), if i == 0 { 0.0 } else { NEG }))
            .collect();
        let blank = Hyp {
            tokens: Vec::new(),
            score: NEG,
            finished: false,
            reason: FinishReason::Length,
        };
        BeamSearch {
            beams,
            prompt,
            running,
            finished: vec![blank; beams],
            improvable: true,
            eos_count,
        }
    }

    pub fn generated_len(&self) -> usize {
        self.running[0].0.len()
    }

    /// The generated tokens of running beam `i` (its context after the prompt).
    pub fn running_tokens(&self, i: usize) -> &[TokenId] {
        &self.running[i].0
    }

    /// Advance every beam by one token given each running beam's last-position logits.
    pub fn step(
        &mut self,
        logits: &[&[f32]],
        cfg: &SamplingConfig,
        eos: &[TokenId],
        stop: &dyn StopRule,
    ) -> Advance {
        assert_eq!(
            logits.len(),
            self.beams,
            "one logits row per beam; this is a bug"
        );
        let vocab = logits[0].len();
        let generated = self.generated_len();
        let mut scores: Vec<f32> = Vec::with_capacity(self.beams * vocab);
        let mut context = self.prompt.clone();
        for (row, (toks, acc)) in logits.iter().zip(&self.running) {
            let mut lp = log_softmax(row);
            context.truncate(self.prompt.len());
            context.extend_from_slice(toks);
            process_logits(&mut lp, &context, generated, cfg, eos);
            scores.extend(lp.iter().map(|&s| s + acc));
        }
        let keep = 2usize.max(1 + self.eos_count) * self.beams;
        let top = top_k(&scores, keep);
        // Candidates: (accumulated score, parent beam, token, stop reason).
        let cands: Vec<(f32, usize, TokenId, Option<FinishReason>)> = top
            .iter()
            .map(|&i| {
                let (parent, tok) = (i / vocab, TokenId((i % vocab) as u32));
                let mut seq = self.running[parent].0.clone();
                seq.push(tok);
                (scores[i], parent, tok, stop.hit(&seq))
            })
            .collect();
        // Next running beams: the best B candidates that did not stop.
        let masked: Vec<f32> = cands
            .iter()
            .map(|c| c.0 + if c.3.is_some() { NEG } else { 0.0 })
            .collect();
        let next = top_k(&masked, self.beams);
        let advance = Advance {
            parents: next.iter().map(|&c| cands[c].1).collect(),
            tokens: next.iter().map(|&c| cands[c].2).collect(),
            done: false,
        };
        let new_running: Vec<(Vec<TokenId>, f32)> = next
            .iter()
            .map(|&c| {
                let mut seq = self.running[cands[c].1].0.clone();
                seq.push(cands[c].2);
                (seq, masked[c])
            })
            .collect();
        // Finished hypotheses: merge the top-B stopped candidates into the kept B, by score.
        let len_norm = ((generated + 1) as f32).powf(LENGTH_PENALTY);
        let mut merged = self.finished.clone();
        for (rank, c) in cands.iter().enumerate() {
            let just_finished = rank < self.beams && c.3.is_some();
            let mut score = c.0 / len_norm;
            if !self.improvable {
                score += NEG;
            }
            if !just_finished {
                score += NEG;
            }
            let mut tokens = self.running[c.1].0.clone();
            tokens.push(c.2);
            merged.push(Hyp {
                tokens,
                score,
                finished: just_finished,
                reason: c.3.unwrap_or(FinishReason::Length),
            });
        }
        let merged_scores: Vec<f32> = merged.iter().map(|h| h.score).collect();
        self.finished = top_k(&merged_scores, self.beams)
            .into_iter()
            .map(|i| merged[i].clone())
            .collect();
        self.running = new_running;
        // HF's early_stopping=False heuristic: stop once the best running beam, scored at the
        // current length, cannot beat the worst kept hypothesis.
        let best_running = self.running[0].1 / ((generated + 1) as f32).powf(LENGTH_PENALTY);
        let worst = self
            .finished
            .iter()
            .map(|h| h.score)
            .fold(f32::INFINITY, f32::min);
        let any_better = self
            .finished
            .iter()
            .any(|h| best_running > if h.finished { worst } else { NEG });
        self.improvable &= any_better;
        let all_stopped = cands.iter().all(|c| c.3.is_some());
        Advance {
            done: !self.improvable || all_stopped,
            ..advance
        }
    }

    /// The best hypothesis: its generated tokens and why it ended.
    pub fn best(&self) -> (Vec<TokenId>, FinishReason) {
        let h = &self.finished[0];
        (h.tokens.clone(), h.reason)
    }
}

/// Indices of the `k` largest values, largest first; ties keep the lower index first.
fn top_k(values: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..values.len()).collect();
    let k = k.min(idx.len());
    idx.select_nth_unstable_by(k.saturating_sub(1), |&a, &b| {
        values[b].total_cmp(&values[a]).then(a.cmp(&b))
    });
    idx.truncate(k);
    idx.sort_by(|&a, &b| values[b].total_cmp(&values[a]).then(a.cmp(&b)));
    idx
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampling::Decoding;

    struct Rule {
        eos: TokenId,
        max_new: usize,
    }

    impl StopRule for Rule {
        fn hit(&self, g: &[TokenId]) -> Option<FinishReason> {
            if g.last() == Some(&self.eos) {
                Some(FinishReason::Eos)
            } else if g.len() >= self.max_new {
                Some(FinishReason::Length)
            } else {
                None
            }
        }
    }

    fn cfg() -> SamplingConfig {
        SamplingConfig {
            decoding: Decoding::Beam { beams: 2 },
            ..SamplingConfig::default()
        }
    }

    #[test]
    fn top_k_orders_by_value_then_index() {
        assert_eq!(top_k(&[1.0, 3.0, 3.0, 2.0], 3), vec![1, 2, 3]);
        assert_eq!(top_k(&[1.0], 4), vec![0]);
    }

    #[test]
    fn beam_search_finds_the_sequence_greedy_misses() {
        // Vocab {0: eos, 1: a, 2: b}. Step 1: p(a)=0.6, p(b)=0.4. After a: flat (eos 0.34,
        // a 0.33, b 0.33); after b: eos 0.9. Greedy takes a then eos (0.6·0.34 = 0.204);
        // beam 2 keeps b and finishes b eos (0.4·0.9 = 0.36), normalised by length 2 in logs.
        let ln = |p: f32| p.ln();
        let step1 = [f32::NEG_INFINITY, ln(0.6), ln(0.4)];
        let after_a = [ln(0.34), ln(0.33), ln(0.33)];
        let after_b = [ln(0.9), ln(0.05), ln(0.05)];
        let rule = Rule {
            eos: TokenId(0),
            max_new: 5,
        };
        let eos = [TokenId(0)];
        let mut bs = BeamSearch::new(vec![TokenId(1)], 2, 1);
        let a = bs.step(&[&step1, &step1], &cfg(), &eos, &rule);
        assert_eq!(a.tokens, vec![TokenId(1), TokenId(2)]);
        assert_eq!(a.parents, vec![0, 0]);
        let rows: Vec<&[f32]> = a
            .tokens
            .iter()
            .map(|t| if t.0 == 1 { &after_a[..] } else { &after_b[..] })
            .collect();
        let b = bs.step(&rows, &cfg(), &eos, &rule);
        assert!(!b.done || bs.best().0 == vec![TokenId(2), TokenId(0)]);
        let (best, reason) = bs.best();
        assert_eq!(best, vec![TokenId(2), TokenId(0)]);
        assert_eq!(reason, FinishReason::Eos);
        // Its score is the mean log-probability: (ln 0.4 + ln 0.9) / 2.
        let want = (0.4f32.ln() + 0.9f32.ln()) / 2.0;
        assert!((bs.finished[0].score - want).abs() < 1e-5);
    }
}
