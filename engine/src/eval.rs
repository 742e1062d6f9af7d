//! `engine eval`: METRICS.md metrics over a generation file.
//!
//! * Repeat@n uses each prompt's [`exports::Prompt::context_text`] as the context (the raw prompt,
//!   or the last message of a chat prompt — the same context `engine label` and `engine pair` use).
//! * F1 compares with each record's `reference`; a record without one is an error naming its line.
//! * By default each record contributes its first response (greedy decoding gives one);
//!   [`ResponseSelection::All`] makes every response an example.
//! * Win rate scores each record's first response and the first response of the record with the
//!   same id in the `against` file with one scorer; ids in only one file are counted, not scored.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{bail, Result};
use exports::records::{for_each_record, GenerationRecord, Location, Prompt};
use serde_json::{json, Map, Value};

use crate::bootstrap::BootstrapConfig;
use crate::label::{RewardSpec, ScoreItem};
use crate::metrics::{f1, repeat_at_n, win_rate, Outcome, WinRate};

/// One requested metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    Repeat(usize),
    F1,
}

impl Metric {
    /// Parse a comma-separated list such as `repeat@3,f1`.
    pub fn parse_list(s: &str) -> std::result::Result<Vec<Metric>, String> {
        let metrics = s
            .split(',')
            .map(str::trim)
            .filter(|m| !m.is_empty())
            .map(str::parse)
            .collect::<std::result::Result<Vec<Metric>, String>>()?;
        if metrics.is_empty() {
            return Err("no metric given; expected e.g. repeat@3,f1".into());
        }
        Ok(metrics)
    }
}

impl FromStr for Metric {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let lower = s.to_ascii_lowercase();
        if lower == "f1" {
            return Ok(Metric::F1);
        }
        if let Some(n) = lower.strip_prefix("repeat@") {
            return n
                .parse::<usize>()
                .ok()
                .filter(|n| *n >= 1)
                .map(Metric::Repeat)
                .ok_or_else(|| format!("`{s}`: n in repeat@n must be a positive integer"));
        }
        Err(format!("unknown metric `{s}`; expected repeat@N or f1"))
    }
}

/// Which responses of a record are evaluated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ResponseSelection {
    #[default]
    First,
    All,
}

/// Win rate of the generations against another generation file.
#[derive(Debug, Clone)]
pub struct WinRateConfig {
    pub reward: RewardSpec,
    pub against: PathBuf,
}

/// Settings of one `engine eval` run.
#[derive(Debug, Clone)]
pub struct EvalConfig {
    pub generations: PathBuf,
    pub metrics: Vec<Metric>,
    pub responses: ResponseSelection,
    pub win_rate: Option<WinRateConfig>,
    pub bootstrap: BootstrapConfig,
}

/// Results of one `engine eval` run.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalReport {
    /// Number of (record, response) examples the Repeat@n and F1 means are over.
    pub examples: usize,
    /// `(n, mean Repeat@n)` in the order requested.
    pub repeat: Vec<(usize, f64)>,
    pub f1: Option<f64>,
    pub win_rate: Option<WinRate>,
    /// Ids present in only one of the generation and `against` files (win rate only).
    pub unmatched: usize,
}

impl EvalReport {
    /// The `--json` object: `examples`, `repeat@N`…, `f1`, `win_rate`, `win_rate_ci`,
    /// `win_rate_prompts`, each only when requested.
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("examples".into(), json!(self.examples));
        for (n, v) in &self.repeat {
            m.insert(format!("repeat@{n}"), json!(v));
        }
        if let Some(f) = self.f1 {
            m.insert("f1".into(), json!(f));
        }
        if let Some(w) = &self.win_rate {
            m.insert("win_rate".into(), json!(w.rate));
            m.insert(
                "win_rate_ci".into(),
                json!([w.interval.low, w.interval.high]),
            );
            m.insert("win_rate_prompts".into(), json!(w.prompts));
        }
        Value::Object(m)
    }
}

impl fmt::Display for EvalReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{:<12} value", "metric")?;
        writeln!(f, "{:<12} {}", "examples", self.examples)?;
        for (n, v) in &self.repeat {
            writeln!(f, "{:<12} {v:.4}", format!("repeat@{n}"))?;
        }
        if let Some(v) = self.f1 {
            writeln!(f, "{:<12} {v:.4}", "f1")?;
        }
        if let Some(w) = &self.win_rate {
            writeln!(
                f,
                "{:<12} {:.2} [{:.2}, {:.2}] over {} prompts ({} wins, {} ties, {} losses; {} ids unmatched)",
                "win_rate",
                w.rate,
                w.interval.low,
                w.interval.high,
                w.prompts,
                w.wins,
                w.ties,
                w.losses,
                self.unmatched
            )?;
        }
        Ok(())
    }
}

/// Running sums for the per-example metrics.
struct Sums<'a> {
    metrics: &'a [Metric],
    examples: usize,
    repeat: Vec<f64>,
    f1: f64,
}

impl Sums<'_> {
    fn add(&mut self, context: &str, generation: &str, reference: Option<&str>) {
        self.examples += 1;
        let mut k = 0;
        for m in self.metrics {
            match m {
                Metric::Repeat(n) => {
                    self.repeat[k] += repeat_at_n(context, generation, *n) as f64;
                    k += 1;
                }
                Metric::F1 => self.f1 += f1(generation, reference.unwrap_or("")),
            }
        }
    }
}

/// Run `engine eval`.
pub fn run(cfg: &EvalConfig) -> Result<EvalReport> {
    if cfg.metrics.is_empty() && cfg.win_rate.is_none() {
        bail!("nothing to evaluate: give --metrics and/or a reward for the win rate");
    }
    let wants_f1 = cfg.metrics.contains(&Metric::F1);
    let repeat_ns: Vec<usize> = cfg
        .metrics
        .iter()
        .filter_map(|m| match m {
            Metric::Repeat(n) => Some(*n),
            Metric::F1 => None,
        })
        .collect();
    let mut sums = Sums {
        metrics: &cfg.metrics,
        examples: 0,
        repeat: vec![0.0; repeat_ns.len()],
        f1: 0.0,
    };
    let path = &cfg.generations;
    let mut firsts: Vec<(String, Prompt, String)> = Vec::new();
    for_each_record::<GenerationRecord>(path, |at, record| {
        let bad = |message: String| exports::Error::Record {
            path: path.to_path_buf(),
            at,
            message,
        };
        if record.responses.is_empty() {
            return Err(bad(format!("id {}: no responses to evaluate", record.id)));
        }
        if wants_f1 && record.reference.is_none() {
            return Err(bad(format!(
                "id {}: no `reference`, which f1 needs (drop f1 from --metrics to evaluate without references)",
                record.id
            )));
        }
        let prompt = record.to_prompt();
        let take = match cfg.responses {
            ResponseSelection::First => 1,
            ResponseSelection::All => record.responses.len(),
        };
        for r in &record.responses[..take] {
            sums.add(prompt.context_text(), &r.text, record.reference.as_deref());
        }
        if cfg.win_rate.is_some() {
            firsts.push((record.id, prompt, record.responses[0].text.clone()));
        }
        Ok(())
    })?;
    if sums.examples == 0 {
        bail!("{}: no generation records to evaluate", path.display());
    }
    let n = sums.examples as f64;
    let mut report = EvalReport {
        examples: sums.examples,
        repeat: repeat_ns
            .iter()
            .zip(&sums.repeat)
            .map(|(k, s)| (*k, s / n))
            .collect(),
        f1: wants_f1.then(|| sums.f1 / n),
        win_rate: None,
        unmatched: 0,
    };
    if let Some(w) = &cfg.win_rate {
        let (outcomes, unmatched) = compare_against(&firsts, w, path)?;
        report.unmatched = unmatched;
        report.win_rate = win_rate(&outcomes, &cfg.bootstrap);
        if report.win_rate.is_none() {
            bail!(
                "win rate: no id of {} is in {}",
                path.display(),
                w.against.display()
            );
        }
    }
    Ok(report)
}

/// Score candidates and the `against` file's responses with one scorer; returns the outcomes of
/// the ids found in both files and the number of ids found in only one.
fn compare_against(
    candidates: &[(String, Prompt, String)],
    cfg: &WinRateConfig,
    generations: &Path,
) -> Result<(Vec<Outcome>, usize)> {
    let mut against: HashMap<String, (Location, Prompt, String)> = HashMap::new();
    for_each_record::<GenerationRecord>(&cfg.against, |at, record| {
        let Some(first) = record.responses.first() else {
            return Err(exports::Error::Record {
                path: cfg.against.clone(),
                at,
                message: format!("id {}: no responses to compare with", record.id),
            });
        };
        let text = first.text.clone();
        let prompt = record.to_prompt();
        if against
            .insert(record.id.clone(), (at, prompt, text))
            .is_some()
        {
            return Err(exports::Error::Record {
                path: cfg.against.clone(),
                at,
                message: format!("duplicate id {}", record.id),
            });
        }
        Ok(())
    })?;
    let mut items: Vec<ScoreItem<'_>> = Vec::new();
    let mut matched = 0usize;
    for (id, prompt, text) in candidates {
        let Some((at, their_prompt, their_text)) = against.get(id) else {
            continue;
        };
        if their_prompt != prompt {
            bail!(
                "id {id}: the prompt in {} differs from the one in {}{at}",
                generations.display(),
                cfg.against.display()
            );
        }
        matched += 1;
        items.push(ScoreItem {
            prompt,
            response: text,
        });
        items.push(ScoreItem {
            prompt: their_prompt,
            response: their_text,
        });
    }
    let unmatched = (candidates.len() - matched) + (against.len() - matched);
    let mut scorer = cfg.reward.open()?;
    let scores = scorer.score(&items)?;
    if scores.len() != items.len() || scores.iter().any(|s| !s.is_finite()) {
        bail!(
            "win rate: scorer {} returned {} scores for {} responses, or a score that is not finite",
            scorer.source(),
            scores.len(),
            items.len()
        );
    }
    let outcomes = scores
        .chunks(2)
        .map(|p| Outcome::compare(p[0], p[1]))
        .collect();
    Ok((outcomes, unmatched))
}
