//! `metrics.jsonl` (one line per optimizer step) and the terminal progress bar.

use std::io::IsTerminal;
use std::path::Path;

use anyhow::{Context, Result};
use exports::records::JsonlAppender;
use indicatif::{ProgressBar, ProgressStyle};

use crate::objectives::StepStats;

/// One line of `metrics.jsonl`; the format lives in `exports` because the report reads it too.
pub use exports::records::TrainMetrics as MetricsLine;

/// What a step reports besides its loss statistics.
pub struct StepInfo {
    pub step: u64,
    pub epoch: f64,
    pub tokens: usize,
    pub lr: f64,
    pub grad_norm: f64,
    pub seconds: f64,
}

/// The metrics line of one optimizer step.
pub fn metrics_line(s: &StepStats, info: &StepInfo) -> MetricsLine {
    MetricsLine {
        step: info.step,
        epoch: info.epoch,
        examples: s.examples,
        tokens: info.tokens,
        loss: s.loss,
        ce: s.ce,
        cringe: s.cringe,
        gate: s.gate,
        margin: s.margin,
        chosen_logp: s.chosen_logp,
        rejected_logp: s.rejected_logp,
        accuracy: s.accuracy,
        stop_unlikelihood: s.stop_unlikelihood,
        lr: info.lr,
        grad_norm: info.grad_norm,
        tokens_per_s: info.tokens as f64 / info.seconds.max(1e-9),
    }
}

/// Appends step lines to `metrics.jsonl`.
pub struct MetricsLog {
    out: JsonlAppender,
}

impl MetricsLog {
    /// Open `path`; lines of steps after `keep_through` (a resumed run's checkpoint step) are
    /// dropped first, so the file never holds a step twice.
    pub fn open(path: &Path, keep_through: u64) -> Result<Self> {
        if path.exists() {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            let mut kept = String::new();
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                let step = serde_json::from_str::<serde_json::Value>(line)
                    .ok()
                    .and_then(|v| v.get("step").and_then(serde_json::Value::as_u64));
                if step.is_some_and(|s| s <= keep_through) {
                    kept.push_str(line);
                    kept.push('\n');
                }
            }
            exports::fsutil::write_atomic(path, kept.as_bytes())?;
        }
        Ok(MetricsLog {
            out: JsonlAppender::open(path)?,
        })
    }

    pub fn append(&mut self, line: &MetricsLine) -> Result<()> {
        Ok(self.out.append(line)?)
    }
}

/// Read every line of a `metrics.jsonl`.
pub fn read_metrics(path: &Path) -> Result<Vec<MetricsLine>> {
    Ok(exports::records::read_jsonl(path)?)
}

/// A progress bar on stderr with tokens/s and ETA; hidden when stderr is not a terminal.
pub struct Progress {
    bar: ProgressBar,
}

impl Progress {
    pub fn new(total: u64, done: u64) -> Self {
        let bar = if std::io::stderr().is_terminal() {
            ProgressBar::new(total)
        } else {
            ProgressBar::hidden()
        };
        bar.set_style(
            ProgressStyle::with_template(
                "{bar:30} {pos}/{len} steps  {msg}  [{elapsed_precise} < {eta_precise}]",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.set_position(done);
        Progress { bar }
    }

    pub fn update(&self, line: &MetricsLine) {
        self.bar.set_position(line.step);
        self.bar.set_message(format!(
            "loss {:.4}  {:.0} tok/s",
            line.loss, line.tokens_per_s
        ));
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
