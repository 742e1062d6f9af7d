//! What every reward is to labeling and evaluation: a [`Scorer`] of [`ScoreItem`]s. Its own module
//! so that the scorers (`label`'s repetition reward, `reward`'s reward model) and their users
//! (`label`, `eval`) depend on it and not on each other.

use anyhow::Result;
use exports::records::Prompt;

/// One response to score, with its prompt.
#[derive(Debug, Clone, Copy)]
pub struct ScoreItem<'a> {
    pub prompt: &'a Prompt,
    pub response: &'a str,
}

/// Something that gives each (prompt, response) a scalar reward, independently per response.
pub trait Scorer {
    /// Rewards for `items`, in order. `items` spans many prompts (labeling passes 32 records at a
    /// time, win rate all pairs at once); a model scorer splits it into batches of its own size.
    fn score(&mut self, items: &[ScoreItem<'_>]) -> Result<Vec<f64>>;

    /// What to write into each pair's `source` field, e.g. `repetition:3`.
    fn source(&self) -> String;

    /// Model tokens scored so far, for the throughput line; `None` for scorers without a tokenizer.
    fn tokens_scored(&self) -> Option<u64> {
        None
    }
}
