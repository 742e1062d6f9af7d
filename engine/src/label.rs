//! `engine label`: score every response of every prompt and keep the best and the worst as a
//! preference pair (the paper's Section 2 pair construction: "choose the best and worst scoring as a
//! single pair using a scalar reward model ... discarding the other generated responses").
//!
//! Scores come from a [`Scorer`]. Built in is the programmatic repetition reward of the paper's
//! Section 3.1, `repetition:N` = −Repeat@N(response | prompt context); a reward-model scorer
//! plugs in through the same trait.
//!
//! Ranking rule: responses are ordered by reward (higher first), then by length in METRICS.md word
//! tokens (longer first), then by position in the record (earlier first). Chosen is the first,
//! rejected the last. The length rule matters for the repetition reward, where many responses tie:
//! an empty or cut-short response trivially repeats nothing, so among equally repetitive responses
//! the one that says more is preferred and the one that says least is rejected.
//! A prompt yields no pair when all its rewards tie, when the reward gap is below `min_gap`, when
//! chosen and rejected are the same text, or when it has fewer than two responses.
//!
//! With [`BinaryFeedback`], the responses that did not go into a pair become binary feedback
//! records (`label` = reward ≥ threshold), so one labeling feeds both losses of a mixed run
//! (the paper's conclusion): pairs get the pairwise loss, the rest cross-entropy or cringe.
//! Chosen and rejected are left out there: they already carry their signal in the pair.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use exports::records::{
    for_each_record, nested_meta, write_jsonl, BinaryRecord, GenerationRecord, Location,
    PairRecord, Prompt,
};
use serde::Serialize;

use crate::metrics::{repeat_at_n, words};
pub use crate::scorer::{ScoreItem, Scorer};

/// The programmatic reward of the repetition experiment: minus the response's Repeat@n count,
/// with the prompt's [`Prompt::context_text`] as the context.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RepetitionScorer {
    pub n: usize,
}

/// The repetition reward of one response: −Repeat@n(response | context), never `-0.0`.
pub fn repetition_reward(context: &str, response: &str, n: usize) -> f64 {
    match repeat_at_n(context, response, n) {
        0 => 0.0,
        k => -(k as f64),
    }
}

impl Scorer for RepetitionScorer {
    fn score(&mut self, items: &[ScoreItem<'_>]) -> Result<Vec<f64>> {
        Ok(items
            .iter()
            .map(|it| repetition_reward(it.prompt.context_text(), it.response, self.n))
            .collect())
    }

    fn source(&self) -> String {
        format!("repetition:{}", self.n)
    }
}

/// Which reward to label with: `repetition[:N]` (N defaults to 3) or a reward-model folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RewardSpec {
    Repetition {
        n: usize,
    },
    /// An exported reward model, with its batch size, threads and runtime library.
    Model(crate::reward::RewardModelConfig),
}

impl FromStr for RewardSpec {
    type Err = String;

    /// Parses the programmatic rewards: `repetition` or `repetition:N` with N ≥ 1.
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let (name, arg) = s.split_once(':').map_or((s, None), |(a, b)| (a, Some(b)));
        if name != "repetition" {
            return Err(format!(
                "unknown reward `{s}`; expected repetition or repetition:N"
            ));
        }
        let n = match arg {
            None => 3,
            Some(a) => a
                .parse::<usize>()
                .ok()
                .filter(|n| *n >= 1)
                .ok_or_else(|| format!("`{s}`: N must be a positive integer"))?,
        };
        Ok(RewardSpec::Repetition { n })
    }
}

impl RewardSpec {
    /// Build the scorer this spec names.
    pub fn open(&self) -> Result<Box<dyn Scorer>> {
        match self {
            RewardSpec::Repetition { n } => Ok(Box::new(RepetitionScorer { n: *n })),
            RewardSpec::Model(cfg) => open_reward_model(cfg),
        }
    }
}

/// Load an exported reward model.
fn open_reward_model(cfg: &crate::reward::RewardModelConfig) -> Result<Box<dyn Scorer>> {
    let scorer = crate::reward::RewardModelScorer::open(cfg)
        .with_context(|| format!("--reward-model {}", cfg.dir.display()))?;
    Ok(Box::new(scorer))
}

/// Settings of one `engine label` run.
#[derive(Debug, Clone)]
pub struct LabelConfig {
    pub generations: PathBuf,
    pub out: PathBuf,
    pub reward: RewardSpec,
    /// Smallest chosen − rejected reward gap that makes a pair (a gap of 0 never does).
    pub min_gap: f64,
    /// Where to write every prompt's scores, one `{"id","scores"}` line per prompt.
    pub scores_out: Option<PathBuf>,
    /// Where and how to write binary feedback from the responses left out of the pairs.
    pub binary: Option<BinaryFeedback>,
}

/// `engine label --binary-out FILE --binary-threshold X`.
#[derive(Debug, Clone)]
pub struct BinaryFeedback {
    pub out: PathBuf,
    /// A response with reward ≥ this is a positive.
    pub threshold: f64,
}

/// What a label run did; its `Display` is the summary printed on stderr.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct LabelSummary {
    pub prompts: usize,
    pub responses: usize,
    pub pairs: usize,
    /// Binary feedback records written (with `--binary-out`), and how many of them are positive.
    pub binary: usize,
    pub binary_positive: usize,
    pub too_few_responses: usize,
    pub all_tied: usize,
    pub below_min_gap: usize,
    pub identical_text: usize,
    pub reward_mean: f64,
    pub reward_std: f64,
    pub seconds: f64,
    pub tokens: Option<u64>,
}

impl fmt::Display for LabelSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "label: {} prompts, {} responses scored, {} pairs kept",
            self.prompts, self.responses, self.pairs
        )?;
        if self.binary > 0 {
            writeln!(
                f,
                "label: {} binary feedback records ({} positive)",
                self.binary, self.binary_positive
            )?;
        }
        writeln!(
            f,
            "label: skipped {} with fewer than 2 responses, {} with all rewards tied, {} below --min-gap, {} with identical chosen/rejected text",
            self.too_few_responses, self.all_tied, self.below_min_gap, self.identical_text
        )?;
        writeln!(
            f,
            "label: reward mean {:.4}, std {:.4}",
            self.reward_mean, self.reward_std
        )?;
        let secs = self.seconds.max(1e-9);
        write!(
            f,
            "label: {:.1} s, {:.1} sequences/s",
            self.seconds,
            self.responses as f64 / secs
        )?;
        if let Some(t) = self.tokens {
            write!(f, ", {:.1} tokens/s", t as f64 / secs)?;
        }
        Ok(())
    }
}

/// The outcome for one prompt.
#[derive(Debug, Clone, PartialEq)]
pub enum Selection {
    Pair { chosen: usize, rejected: usize },
    TooFewResponses,
    AllTied,
    BelowMinGap,
    IdenticalText,
}

/// Apply the module's ranking rule to one prompt's responses and rewards.
pub fn select_pair(responses: &[&str], rewards: &[f64], min_gap: f64) -> Selection {
    if responses.len() < 2 {
        return Selection::TooFewResponses;
    }
    let lengths: Vec<usize> = responses.iter().map(|r| words(r).len()).collect();
    let mut order: Vec<usize> = (0..responses.len()).collect();
    // Higher reward, then more words, then earlier position first (a total, stable order).
    order.sort_by(|&a, &b| {
        rewards[b]
            .total_cmp(&rewards[a])
            .then(lengths[b].cmp(&lengths[a]))
            .then(a.cmp(&b))
    });
    let (chosen, rejected) = (order[0], order[order.len() - 1]);
    let gap = rewards[chosen] - rewards[rejected];
    if gap <= 0.0 {
        Selection::AllTied
    } else if gap < min_gap {
        Selection::BelowMinGap
    } else if responses[chosen] == responses[rejected] {
        Selection::IdenticalText
    } else {
        Selection::Pair { chosen, rejected }
    }
}

#[derive(Serialize)]
struct ScoreLine<'a> {
    id: &'a str,
    scores: &'a [f64],
}

/// Records are scored this many at a time, so a model scorer sees batches across prompts.
const RECORDS_PER_BATCH: usize = 32;

struct Labeler<'a> {
    cfg: &'a LabelConfig,
    scorer: Box<dyn Scorer>,
    source: String,
    pairs: Vec<PairRecord>,
    binary: Vec<BinaryRecord>,
    score_lines: Vec<(String, Vec<f64>)>,
    rewards: Vec<f64>,
    summary: LabelSummary,
}

impl Labeler<'_> {
    fn flush(&mut self, batch: &mut Vec<(Location, GenerationRecord)>) -> Result<()> {
        let prompts: Vec<Prompt> = batch.iter().map(|(_, r)| r.to_prompt()).collect();
        let items: Vec<ScoreItem<'_>> = batch
            .iter()
            .zip(&prompts)
            .flat_map(|((_, r), prompt)| {
                r.responses.iter().map(move |resp| ScoreItem {
                    prompt,
                    response: &resp.text,
                })
            })
            .collect();
        let scores = self.scorer.score(&items)?;
        if scores.len() != items.len() {
            bail!(
                "scorer {} returned {} scores for {} responses; this is a bug",
                self.source,
                scores.len(),
                items.len()
            );
        }
        let mut offset = 0;
        for ((at, record), prompt) in batch.drain(..).zip(prompts) {
            let k = record.responses.len();
            let rewards = &scores[offset..offset + k];
            offset += k;
            if let Some(i) = rewards.iter().position(|r| !r.is_finite()) {
                bail!(
                    "{}{at}: id {}: response {i} got reward {} (not finite)",
                    self.cfg.generations.display(),
                    record.id,
                    rewards[i]
                );
            }
            self.take(record, prompt, rewards);
        }
        Ok(())
    }

    fn take(&mut self, record: GenerationRecord, prompt: Prompt, rewards: &[f64]) {
        let texts: Vec<&str> = record.responses.iter().map(|r| r.text.as_str()).collect();
        self.summary.prompts += 1;
        self.summary.responses += texts.len();
        self.rewards.extend_from_slice(rewards);
        let selection = select_pair(&texts, rewards, self.cfg.min_gap);
        match selection {
            Selection::Pair { chosen, rejected } => self.pairs.push(PairRecord {
                id: Some(record.id.clone()),
                prompt: prompt.clone(),
                chosen: texts[chosen].into(),
                rejected: texts[rejected].into(),
                chosen_reward: Some(rewards[chosen]),
                rejected_reward: Some(rewards[rejected]),
                source: Some(self.source.clone()),
                chosen_finish_reason: Some(record.responses[chosen].finish_reason),
                rejected_finish_reason: Some(record.responses[rejected].finish_reason),
                extra: nested_meta(&record.extra),
            }),
            Selection::TooFewResponses => self.summary.too_few_responses += 1,
            Selection::AllTied => self.summary.all_tied += 1,
            Selection::BelowMinGap => self.summary.below_min_gap += 1,
            Selection::IdenticalText => self.summary.identical_text += 1,
        }
        if let Some(b) = &self.cfg.binary {
            let in_pair = |i: usize| matches!(selection, Selection::Pair { chosen, rejected } if i == chosen || i == rejected);
            for (i, resp) in record.responses.iter().enumerate() {
                if in_pair(i) {
                    continue;
                }
                let label = rewards[i] >= b.threshold;
                self.summary.binary_positive += usize::from(label);
                let mut extra = nested_meta(&record.extra);
                extra.insert("reward".into(), rewards[i].into());
                extra.insert("source".into(), self.source.clone().into());
                self.binary.push(BinaryRecord {
                    id: Some(format!("{}#{i}", record.id)),
                    prompt: prompt.clone(),
                    response: resp.text.as_str().into(),
                    label,
                    finish_reason: Some(resp.finish_reason),
                    extra,
                });
            }
        }
        if self.cfg.scores_out.is_some() {
            self.score_lines.push((record.id, rewards.to_vec()));
        }
    }
}

/// Run `engine label`: read generations, score, select pairs, write them (and the scores).
pub fn run(cfg: &LabelConfig) -> Result<LabelSummary> {
    // Written to reject NaN as well as negative gaps.
    if cfg.min_gap.is_nan() || cfg.min_gap < 0.0 {
        bail!("--min-gap must be a number ≥ 0, got {}", cfg.min_gap);
    }
    let scorer = cfg.reward.open()?;
    // Throughput counts reading, scoring and writing, not loading the model.
    let start = Instant::now();
    let source = scorer.source();
    let mut labeler = Labeler {
        cfg,
        scorer,
        source,
        pairs: Vec::new(),
        binary: Vec::new(),
        score_lines: Vec::new(),
        rewards: Vec::new(),
        summary: LabelSummary::default(),
    };
    let mut batch: Vec<(Location, GenerationRecord)> = Vec::new();
    let mut failure: Option<anyhow::Error> = None;
    for_each_record::<GenerationRecord>(&cfg.generations, |at, record| {
        batch.push((at, record));
        if batch.len() >= RECORDS_PER_BATCH {
            if let Err(e) = labeler.flush(&mut batch) {
                failure = Some(e);
                return Err(exports::Error::Invalid("scoring failed".into()));
            }
        }
        Ok(())
    })
    .map_err(|e| failure.take().unwrap_or_else(|| e.into()))?;
    labeler.flush(&mut batch)?;

    write_jsonl(&cfg.out, &labeler.pairs)
        .with_context(|| format!("writing pairs to {}", cfg.out.display()))?;
    if let Some(b) = &cfg.binary {
        write_jsonl(&b.out, &labeler.binary)
            .with_context(|| format!("writing binary feedback to {}", b.out.display()))?;
    }
    if let Some(path) = &cfg.scores_out {
        let lines: Vec<ScoreLine<'_>> = labeler
            .score_lines
            .iter()
            .map(|(id, scores)| ScoreLine { id, scores })
            .collect();
        write_jsonl(path, &lines)
            .with_context(|| format!("writing scores to {}", path.display()))?;
    }
    let mut summary = labeler.summary;
    summary.pairs = labeler.pairs.len();
    summary.binary = labeler.binary.len();
    (summary.reward_mean, summary.reward_std) = mean_std(&labeler.rewards);
    summary.seconds = start.elapsed().as_secs_f64();
    summary.tokens = labeler.scorer.tokens_scored();
    Ok(summary)
}

/// Mean and population standard deviation; (0, 0) for no values.
fn mean_std(values: &[f64]) -> (f64, f64) {
    if values.is_empty() {
        return (0.0, 0.0);
    }
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
    (mean, var.sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reward_specs_parse() {
        assert_eq!("repetition".parse(), Ok(RewardSpec::Repetition { n: 3 }));
        assert_eq!("repetition:2".parse(), Ok(RewardSpec::Repetition { n: 2 }));
        assert!("repetition:0".parse::<RewardSpec>().is_err());
        assert!("repetition:x".parse::<RewardSpec>().is_err());
        assert!("length".parse::<RewardSpec>().is_err());
    }

    #[test]
    fn best_and_worst_are_chosen_and_rejected() {
        let r = ["a", "b", "c"];
        assert_eq!(
            select_pair(&r, &[0.0, 2.0, -1.0], 0.0),
            Selection::Pair {
                chosen: 1,
                rejected: 2
            }
        );
    }

    #[test]
    fn ties_break_by_length_then_position() {
        // Rewards: two at 0 (lengths 1 and 3 words), two at −2 (lengths 4 and 2).
        let r = ["short", "a longer one", "x y x y", "x x"];
        let got = select_pair(&r, &[0.0, 0.0, -2.0, -2.0], 0.0);
        assert_eq!(
            got,
            Selection::Pair {
                chosen: 1,
                rejected: 3
            }
        );
        // Equal reward and length: the earlier response ranks higher.
        let r = ["one", "two", "dup dup"];
        assert_eq!(
            select_pair(&r, &[0.0, 0.0, -1.0], 0.0),
            Selection::Pair {
                chosen: 0,
                rejected: 2
            }
        );
    }

    #[test]
    fn ties_gaps_and_identical_texts_make_no_pair() {
        assert_eq!(
            select_pair(&["a", "b b"], &[-1.0, -1.0], 0.0),
            Selection::AllTied
        );
        assert_eq!(
            select_pair(&["a", "b"], &[0.0, -1.0], 1.5),
            Selection::BelowMinGap
        );
        assert_eq!(
            select_pair(&["a", "b"], &[0.0, -1.5], 1.5),
            Selection::Pair {
                chosen: 0,
                rejected: 1
            }
        );
        assert_eq!(
            select_pair(&["same", "same"], &[1.0, 0.0], 0.0),
            Selection::IdenticalText
        );
        assert_eq!(
            select_pair(&["only"], &[1.0], 0.0),
            Selection::TooFewResponses
        );
        assert_eq!(select_pair(&[], &[], 0.0), Selection::TooFewResponses);
    }

    #[test]
    fn repetition_scorer_is_minus_repeat_at_n_with_the_context() {
        let prompt = Prompt::Text("we will build a wall".into());
        let items = [
            ScoreItem {
                prompt: &prompt,
                response: "and we will build a wall",
            },
            ScoreItem {
                prompt: &prompt,
                response: "",
            },
        ];
        assert_eq!(
            RepetitionScorer { n: 3 }.score(&items).unwrap(),
            [-3.0, 0.0]
        );
    }

    #[test]
    fn mean_std_is_population() {
        assert_eq!(mean_std(&[1.0, 3.0]), (2.0, 1.0));
        assert_eq!(mean_std(&[]), (0.0, 0.0));
    }
}
