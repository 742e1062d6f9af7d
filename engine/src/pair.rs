//! `engine pair`: join two generation files by prompt id into preference pairs — the paper's
//! iteration-1 construction for the repetition task (Section 3.1): the beam-search generation with
//! n-gram blocking is chosen, the greedy one rejected, and the pair is kept only if the greedy
//! generation repeats an n-gram of itself or of its context (Repeat@N > 0).
//!
//! Each side uses the first response of its record; the chosen record's extra fields are carried
//! into the pair under `meta`. Records may come in any order; an id must be
//! unique within a file, and both files must hold the same prompt for it.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use exports::records::{
    for_each_record, nested_meta, write_jsonl, GenerationRecord, Location, PairRecord,
};
use serde::Serialize;

use crate::label::repetition_reward;
use crate::metrics::repeat_at_n;

/// Settings of one `engine pair` run.
#[derive(Debug, Clone)]
pub struct PairConfig {
    /// Generations that win (e.g. beam search with n-gram blocking).
    pub chosen: PathBuf,
    /// Generations that lose (e.g. greedy decoding).
    pub rejected: PathBuf,
    pub out: PathBuf,
    /// Keep a pair only if the rejected response has Repeat@N > 0; rewards are then −Repeat@N.
    pub require_repeat: Option<usize>,
}

/// What a pair run did; its `Display` is the summary printed on stderr.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PairSummary {
    pub chosen_records: usize,
    pub rejected_records: usize,
    pub joined: usize,
    pub only_in_chosen: usize,
    pub only_in_rejected: usize,
    pub no_repeat: usize,
    pub identical_text: usize,
    pub pairs: usize,
}

impl fmt::Display for PairSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "pair: {} chosen records, {} rejected records, {} ids in both ({} only in --chosen, {} only in --rejected)",
            self.chosen_records, self.rejected_records, self.joined, self.only_in_chosen, self.only_in_rejected
        )?;
        write!(
            f,
            "pair: {} pairs kept; skipped {} whose rejected response repeats nothing, {} with identical texts",
            self.pairs, self.no_repeat, self.identical_text
        )
    }
}

/// A record with where it came from.
struct Entry {
    at: Location,
    record: GenerationRecord,
}

/// Read a generation file, in order, refusing duplicate ids and records without a response.
fn read_unique(path: &Path) -> Result<Vec<Entry>> {
    let mut seen: HashMap<String, Location> = HashMap::new();
    let mut out = Vec::new();
    for_each_record::<GenerationRecord>(path, |at, record| {
        if record.responses.is_empty() {
            return Err(exports::Error::Record {
                path: path.to_path_buf(),
                at,
                message: format!("id {}: no responses", record.id),
            });
        }
        if let Some(first) = seen.insert(record.id.clone(), at) {
            return Err(exports::Error::Record {
                path: path.to_path_buf(),
                at,
                message: format!("duplicate id {} (first at {})", record.id, first.describe()),
            });
        }
        out.push(Entry { at, record });
        Ok(())
    })?;
    Ok(out)
}

/// Run `engine pair`.
pub fn run(cfg: &PairConfig) -> Result<PairSummary> {
    if cfg.require_repeat == Some(0) {
        bail!("--require-repeat must be at least 1");
    }
    let chosen = read_unique(&cfg.chosen)?;
    let rejected = read_unique(&cfg.rejected)?;
    let mut by_id: HashMap<&str, &Entry> =
        rejected.iter().map(|e| (e.record.id.as_str(), e)).collect();
    let mut summary = PairSummary {
        chosen_records: chosen.len(),
        rejected_records: rejected.len(),
        ..PairSummary::default()
    };
    let source = match cfg.require_repeat {
        Some(n) => format!("pair:repeat@{n}"),
        None => "pair".to_owned(),
    };
    let mut pairs = Vec::new();
    for c in &chosen {
        let Some(r) = by_id.remove(c.record.id.as_str()) else {
            summary.only_in_chosen += 1;
            continue;
        };
        summary.joined += 1;
        let prompt = c.record.to_prompt();
        if prompt != r.record.to_prompt() {
            bail!(
                "id {}: the prompt differs between {}{} and {}{}",
                c.record.id,
                cfg.chosen.display(),
                c.at,
                cfg.rejected.display(),
                r.at
            );
        }
        let (chosen, rejected) = (&c.record.responses[0], &r.record.responses[0]);
        let (good, bad) = (&chosen.text, &rejected.text);
        let rewards = match cfg.require_repeat {
            Some(n) => {
                let context = prompt.context_text();
                let bad_repeats = repeat_at_n(context, bad, n);
                if bad_repeats == 0 {
                    summary.no_repeat += 1;
                    continue;
                }
                Some((
                    repetition_reward(context, good, n),
                    repetition_reward(context, bad, n),
                ))
            }
            None => None,
        };
        if good == bad {
            summary.identical_text += 1;
            continue;
        }
        pairs.push(PairRecord {
            id: Some(c.record.id.clone()),
            prompt,
            chosen: good.as_str().into(),
            rejected: bad.as_str().into(),
            chosen_reward: rewards.map(|r| r.0),
            rejected_reward: rewards.map(|r| r.1),
            source: Some(source.clone()),
            chosen_finish_reason: Some(chosen.finish_reason),
            rejected_finish_reason: Some(rejected.finish_reason),
            // The prompt's own fields, from the chosen side's record.
            extra: nested_meta(&c.record.extra),
        });
    }
    summary.only_in_rejected = by_id.len();
    summary.pairs = pairs.len();
    write_jsonl(&cfg.out, &pairs)
        .with_context(|| format!("writing pairs to {}", cfg.out.display()))?;
    Ok(summary)
}
