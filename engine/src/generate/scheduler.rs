//! Continuous batching over a fixed set of cache slots. Each (prompt, sample) owns a slot while it
//! generates; a prompt is prefilled once and its samples share that prefill by copying the slot's
//! first P positions (prompts with one sample each that start together share one right-padded
//! prefill run, bit-identical to prefilling them one by one); every decode step runs all busy
//! slots together; a finished row's slot is refilled with the next prompt straight away. Beam
//! search holds B slots per prompt and reorders caches by copying slot prefixes.
//!
//! Nothing a row computes depends on which other rows share its step (see the batch-invariance
//! tests), and each row draws from its own RNG stream, so output does not depend on batch size.

use std::collections::{BTreeMap, VecDeque};
use std::time::Instant;

use anyhow::Result;
use exports::records::{FinishReason, PromptRecord};
use exports::TokenId;
use rand_chacha::ChaCha12Rng;

use super::backend::{Backend, Stash, StepRow};
use super::beam::{BeamSearch, StopRule};
use super::stop::Stopper;
use crate::sampling::{process_logits, select, stream_rng, Decoding, SamplingConfig};

/// A tokenized prompt, in input order.
pub struct Job {
    pub index: usize,
    pub record: PromptRecord,
    pub ids: Vec<TokenId>,
}

/// One generated response before detokenization.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Generated tokens, the EOS token included when the response ended on it.
    pub tokens: Vec<TokenId>,
    pub finish: FinishReason,
}

/// All responses of one prompt.
pub struct Finished {
    pub index: usize,
    pub record: PromptRecord,
    pub samples: Vec<Sample>,
    pub seconds: f64,
}

/// Settings the scheduler needs besides the backend.
pub struct SchedulerConfig<'a> {
    pub sampling: SamplingConfig,
    pub n: usize,
    pub seed: u64,
    pub stopper: Stopper<'a>,
}

struct PromptState {
    job: Job,
    started: Instant,
    results: Vec<Option<Sample>>,
    /// Samples not yet given a slot, and the prefill they will start from.
    waiting: VecDeque<usize>,
    stash: Option<(Stash, Vec<f32>)>,
}

enum Slot {
    Free,
    Sample {
        prompt: usize,
        sample: usize,
        rng: Box<ChaCha12Rng>,
        generated: Vec<TokenId>,
        /// Cached positions; the newest generated token is fed at this position next.
        pos: usize,
    },
    /// Beam `beam` of the group of prompt `prompt`.
    Beam {
        prompt: usize,
        beam: usize,
        pos: usize,
    },
}

struct Group {
    search: BeamSearch,
    /// Slot of each beam.
    slots: Vec<usize>,
}

pub struct Scheduler<'a> {
    pub backend: Backend,
    cfg: SchedulerConfig<'a>,
    slots: Vec<Slot>,
    prompts: BTreeMap<usize, PromptState>,
    groups: BTreeMap<usize, Group>,
    /// Generated tokens so far (for throughput).
    pub tokens: u64,
    /// The latest decode step's logits, `[rows, vocab]` (kept between steps: no allocation or
    /// copy per step).
    step_logits: Vec<f32>,
}

impl<'a> Scheduler<'a> {
    pub fn new(backend: Backend, cfg: SchedulerConfig<'a>) -> Self {
        let slots = (0..backend.slots()).map(|_| Slot::Free).collect();
        Scheduler {
            backend,
            cfg,
            slots,
            prompts: BTreeMap::new(),
            groups: BTreeMap::new(),
            tokens: 0,
            step_logits: Vec::new(),
        }
    }

    fn beams(&self) -> Option<usize> {
        match self.cfg.sampling.decoding {
            Decoding::Beam { beams } => Some(beams),
            _ => None,
        }
    }

    fn free_slots(&self) -> Vec<usize> {
        (0..self.slots.len())
            .filter(|&i| matches!(self.slots[i], Slot::Free))
            .collect()
    }

    /// Whether any slot is generating or any sample waits for one.
    pub fn busy(&self) -> bool {
        !self.prompts.is_empty()
    }

    /// Whether a new prompt could start now (stashed samples go first).
    pub fn can_admit(&self) -> bool {
        let free = self.free_slots().len();
        let stashed = self.prompts.values().any(|p| !p.waiting.is_empty());
        !stashed && free >= self.beams().unwrap_or(1)
    }

    /// Give free slots to samples that wait on a stashed prefill.
    pub fn admit_waiting(&mut self, done: &mut Vec<Finished>) {
        let keys: Vec<usize> = self
            .prompts
            .iter()
            .filter(|(_, p)| !p.waiting.is_empty())
            .map(|(k, _)| *k)
            .collect();
        for key in keys {
            loop {
                let Some(&slot) = self.free_slots().first() else {
                    return;
                };
                let p = self.prompts.get_mut(&key).expect("listed above");
                let Some(sample) = p.waiting.pop_front() else {
                    break;
                };
                let (stash, logits) = p.stash.as_ref().expect("waiting samples have a stash");
                let logits = logits.clone();
                self.backend.unstash(stash, slot);
                let len = stash.len;
                if p.waiting.is_empty() {
                    p.stash = None;
                }
                self.start_sample(key, sample, slot, len, &logits);
            }
            self.collect(key, done);
        }
    }

    /// One sample per prompt and no beams: each prompt needs exactly one slot.
    fn one_slot_per_prompt(&self) -> bool {
        self.cfg.n == 1 && self.beams().is_none()
    }

    /// How many prompts [`Scheduler::admit_all`] may be given now: every free slot when each
    /// prompt takes one slot, else one prompt at a time (while [`Scheduler::can_admit`]).
    pub fn admit_capacity(&self) -> usize {
        if !self.can_admit() {
            0
        } else if self.one_slot_per_prompt() {
            self.free_slots().len()
        } else {
            1
        }
    }

    /// Start several prompts. With one sample per prompt, prompts that land in consecutive free
    /// slots share one prefill run (see [`Backend::prefill_rows`]); otherwise each is admitted alone.
    pub fn admit_all(&mut self, jobs: Vec<Job>, done: &mut Vec<Finished>) -> Result<()> {
        let batched = jobs.len() > 1
            && self.one_slot_per_prompt()
            && self.cfg.stopper.max_new_tokens > 0
            && self.backend.can_prefill_rows();
        if !batched {
            for job in jobs {
                self.admit(job, done)?;
            }
            return Ok(());
        }
        let free = self.free_slots();
        assert!(
            jobs.len() <= free.len(),
            "more prompts than free slots; this is a bug"
        );
        let mut jobs = jobs.into_iter().zip(free).peekable();
        while let Some((job, first)) = jobs.next() {
            let mut run = vec![job];
            while let Some((_, slot)) = jobs.peek() {
                if *slot != first + run.len() {
                    break;
                }
                run.push(jobs.next().expect("peeked").0);
            }
            let started = Instant::now();
            let ids: Vec<&[TokenId]> = run.iter().map(|j| j.ids.as_slice()).collect();
            let logits = self.backend.prefill_rows(first, &ids)?.to_vec();
            let v = logits.len() / run.len();
            for (i, job) in run.into_iter().enumerate() {
                self.start_prompt(
                    job,
                    started,
                    &[first + i],
                    &logits[i * v..(i + 1) * v],
                    done,
                );
            }
        }
        Ok(())
    }

    /// Prefill a new prompt and start its samples (or beams).
    pub fn admit(&mut self, job: Job, done: &mut Vec<Finished>) -> Result<()> {
        let key = job.index;
        let p = job.ids.len();
        let n = self.cfg.n;
        let want = self.beams().unwrap_or(n);
        if self.cfg.stopper.max_new_tokens == 0 {
            let samples = vec![
                Sample {
                    tokens: vec![],
                    finish: FinishReason::Length
                };
                n
            ];
            done.push(Finished {
                index: key,
                record: job.record,
                samples,
                seconds: 0.0,
            });
            return Ok(());
        }
        let free = self.free_slots();
        let taken: Vec<usize> = free.iter().copied().take(want).collect();
        let first = taken[0];
        let started = Instant::now();
        let logits = self.backend.prefill(first, &job.ids)?.to_vec();
        for &s in &taken[1..] {
            self.backend.copy_prefix(first, s, p);
        }
        if let Some(beams) = self.beams() {
            let eos_count = if self.cfg.stopper.ignore_eos {
                0
            } else {
                self.cfg.stopper.eos.len()
            };
            let search = BeamSearch::new(job.ids.clone(), beams, eos_count);
            for (b, &s) in taken.iter().enumerate() {
                self.slots[s] = Slot::Beam {
                    prompt: key,
                    beam: b,
                    pos: p,
                };
            }
            self.prompts.insert(
                key,
                PromptState {
                    job,
                    started,
                    results: vec![None],
                    waiting: VecDeque::new(),
                    stash: None,
                },
            );
            self.groups.insert(
                key,
                Group {
                    search,
                    slots: taken,
                },
            );
            let rows: Vec<&[f32]> = vec![&logits[..]; beams];
            self.advance_group(key, &rows, done);
            return Ok(());
        }
        self.start_prompt(job, started, &taken, &logits, done);
        Ok(())
    }

    /// Start a prefilled prompt's samples in `taken` (each slot holds the prefill; the first one
    /// is its source) from the prefill's last `logits`; the samples that found no slot wait on a
    /// stash of it.
    fn start_prompt(
        &mut self,
        job: Job,
        started: Instant,
        taken: &[usize],
        logits: &[f32],
        done: &mut Vec<Finished>,
    ) {
        let (key, p, n) = (job.index, job.ids.len(), self.cfg.n);
        let waiting: VecDeque<usize> = (taken.len()..n).collect();
        let stash =
            (!waiting.is_empty()).then(|| (self.backend.stash(taken[0], p), logits.to_vec()));
        self.prompts.insert(
            key,
            PromptState {
                job,
                started,
                results: vec![None; n],
                waiting,
                stash,
            },
        );
        for (sample, &slot) in taken.iter().enumerate() {
            self.start_sample(key, sample, slot, p, logits);
        }
        self.collect(key, done);
    }

    /// Put sample `sample` of prompt `key` in `slot` (which holds the prompt's prefill) and draw
    /// its first token from the prefill logits.
    fn start_sample(&mut self, key: usize, sample: usize, slot: usize, len: usize, logits: &[f32]) {
        let id = &self.prompts[&key].job.record.id;
        let rng = Box::new(stream_rng(self.cfg.seed, id, sample));
        self.slots[slot] = Slot::Sample {
            prompt: key,
            sample,
            rng,
            generated: Vec::new(),
            pos: len,
        };
        self.sample_next(slot, logits);
    }

    /// Choose the next token of the sample in `slot`; frees the slot when the response ends.
    fn sample_next(&mut self, slot: usize, row: &[f32]) {
        let Slot::Sample {
            prompt,
            sample,
            rng,
            generated,
            ..
        } = &mut self.slots[slot]
        else {
            unreachable!("sample_next on a non-sample slot; this is a bug")
        };
        let state = self
            .prompts
            .get_mut(prompt)
            .expect("a sample's prompt is live");
        let cfg = &self.cfg.sampling;
        // The processors change a copy of the row, and only when one of them applies (the
        // common case, plain sampling, reads the backend's row in place).
        let penalties = cfg.repetition_penalty != 1.0 || cfg.no_repeat_ngram > 0;
        let processed;
        let logits: &[f32] = if penalties || generated.len() < cfg.min_new_tokens {
            let mut row = row.to_vec();
            if penalties {
                let mut context = state.job.ids.clone();
                context.extend_from_slice(generated);
                process_logits(
                    &mut row,
                    &context,
                    generated.len(),
                    cfg,
                    &self.cfg.stopper.eos,
                );
            } else {
                process_logits(&mut row, &[], generated.len(), cfg, &self.cfg.stopper.eos);
            }
            processed = row;
            &processed
        } else {
            row
        };
        let tok = select(logits, cfg, &mut **rng);
        generated.push(tok);
        self.tokens += 1;
        if let Some(finish) = self.cfg.stopper.hit(generated) {
            state.results[*sample] = Some(Sample {
                tokens: std::mem::take(generated),
                finish,
            });
            self.slots[slot] = Slot::Free;
        }
    }

    /// Send a prompt on once all its responses are in.
    fn collect(&mut self, key: usize, done: &mut Vec<Finished>) {
        let complete = self
            .prompts
            .get(&key)
            .is_some_and(|p| p.results.iter().all(Option::is_some));
        if complete {
            let p = self.prompts.remove(&key).expect("checked");
            done.push(Finished {
                index: key,
                samples: p.results.into_iter().map(|s| s.expect("checked")).collect(),
                record: p.job.record,
                seconds: p.started.elapsed().as_secs_f64(),
            });
        }
    }

    /// One decode step over every busy slot.
    pub fn step(&mut self, done: &mut Vec<Finished>) -> Result<()> {
        // Rows up to the highest busy slot; admission prefers low slots, so the batch shrinks as
        // the run drains.
        let Some(hi) = self.slots.iter().rposition(|s| !matches!(s, Slot::Free)) else {
            return Ok(());
        };
        let rows: Vec<Option<StepRow>> = self.slots[..=hi]
            .iter()
            .map(|s| match s {
                Slot::Free => None,
                Slot::Sample { generated, pos, .. } => Some(StepRow {
                    token: *generated.last().expect("started"),
                    pos: *pos,
                }),
                Slot::Beam { prompt, beam, pos } => {
                    let g = &self.groups[prompt];
                    Some(StepRow {
                        token: *g.search.running_tokens(*beam).last().expect("stepped"),
                        pos: *pos,
                    })
                }
            })
            .collect();
        let vocab = self.backend.vocab();
        let mut logits = std::mem::take(&mut self.step_logits);
        self.backend.decode_into(&rows, &mut logits)?;
        let mut touched = Vec::new();
        for slot in 0..=hi {
            match &mut self.slots[slot] {
                Slot::Sample { pos, prompt, .. } => {
                    *pos += 1;
                    touched.push(*prompt);
                    self.sample_next(slot, &logits[slot * vocab..(slot + 1) * vocab]);
                }
                Slot::Beam { pos, .. } => *pos += 1,
                Slot::Free => {}
            }
        }
        let group_keys: Vec<usize> = self.groups.keys().copied().collect();
        for key in group_keys {
            let rows: Vec<&[f32]> = self.groups[&key]
                .slots
                .iter()
                .map(|&s| &logits[s * vocab..(s + 1) * vocab])
                .collect();
            self.advance_group(key, &rows, done);
        }
        self.step_logits = logits;
        touched.sort_unstable();
        touched.dedup();
        for key in touched {
            self.collect(key, done);
        }
        Ok(())
    }

    /// Beam step for one group: choose continuations, move caches so beam i's slot holds its
    /// parent's prefix, and finish the prompt when the search is done.
    fn advance_group(&mut self, key: usize, rows: &[&[f32]], done: &mut Vec<Finished>) {
        let g = self.groups.get_mut(&key).expect("live group");
        let adv = g.search.step(
            rows,
            &self.cfg.sampling,
            &self.cfg.stopper.eos,
            &self.cfg.stopper,
        );
        self.tokens += 1;
        let slots = g.slots.clone();
        if adv.done {
            let (tokens, finish) = g.search.best();
            self.groups.remove(&key);
            for &s in &slots {
                self.slots[s] = Slot::Free;
            }
            let p = self.prompts.get_mut(&key).expect("live prompt");
            p.results[0] = Some(Sample { tokens, finish });
            self.collect(key, done);
            return;
        }
        let Slot::Beam { pos, .. } = self.slots[slots[0]] else {
            unreachable!("group slot")
        };
        // A parent slot that is itself overwritten is saved first.
        let moves: Vec<(usize, usize)> = adv
            .parents
            .iter()
            .enumerate()
            .filter(|(i, p)| *i != **p)
            .map(|(i, &p)| (slots[p], slots[i]))
            .collect();
        let saved: BTreeMap<usize, Stash> = moves
            .iter()
            .filter(|(src, _)| moves.iter().any(|(_, dst)| dst == src))
            .map(|&(src, _)| (src, self.backend.stash(src, pos)))
            .collect();
        for &(src, dst) in &moves {
            match saved.get(&src) {
                Some(stash) => self.backend.unstash(stash, dst),
                None => self.backend.copy_prefix(src, dst, pos),
            }
        }
    }
}
