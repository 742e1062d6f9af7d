//! The prompt file checked whole before any model loads: a bad record at line 15,000 is reported
//! in a second, not after hours of generation. Checked: every record parses by the prompt-record
//! rules (JSON Lines or Parquet), ids are unique (a repeated id breaks `--resume`, `engine merge`
//! and `engine pair`), no extra field takes a name the output record uses for itself, and
//! `messages` prompts have a chat template to go through (and render with it). With
//! `--skip-invalid` each bad record is counted, reported as a warning and skipped; a repeated id
//! then skips the later record.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};

use anyhow::{bail, Result};
use exports::records::{for_each_parsed, Location, GENERATION_KEYS};
use exports::{PromptRecord, Tokenizer};

use super::config::{BatchSize, ChatTemplateMode, GenerateConfig};

/// What checking found.
#[derive(Debug, Default)]
pub struct Checked {
    /// Records to pass over (bad ones, with `--skip-invalid`).
    pub skip: HashSet<Location>,
    /// Skipped records of this shard.
    pub invalid: usize,
    /// Good records of this shard.
    pub prompts: usize,
    /// Tokens of this shard's longest prompt, before truncation (measured for `--batch-size
    /// auto` only, else 0).
    pub longest: usize,
}

/// What is wrong with one parsed record, if anything.
fn problem(cfg: &GenerateConfig, tokenizer: &Tokenizer, r: &PromptRecord) -> Option<String> {
    if let Some(key) = GENERATION_KEYS.iter().find(|k| r.extra.contains_key(**k)) {
        return Some(format!(
            "field `{key}` is one engine generate writes into the output record; rename it"
        ));
    }
    if let Some(m) = &r.messages {
        if cfg.chat_template == ChatTemplateMode::None {
            return Some("`messages` prompt but --chat-template none".into());
        }
        if let Err(e) = tokenizer.render_chat(m) {
            return Some(e.to_string());
        }
    }
    None
}

/// Check every record of `cfg.prompts` (see the module docs).
pub fn check(cfg: &GenerateConfig, tokenizer: &Tokenizer) -> Result<Checked> {
    struct State {
        checked: Checked,
        first_at: HashMap<String, Location>,
        /// Records so far, bad ones included (shards count them too).
        index: usize,
    }
    let path = &cfg.prompts;
    let state = RefCell::new(State {
        checked: Checked::default(),
        first_at: HashMap::new(),
        index: 0,
    });
    let in_shard = |i: usize| cfg.shard.is_none_or(|s| s.keeps(i));
    let reject = |at: Location, message: String| -> exports::Result<()> {
        let mut st = state.borrow_mut();
        let i = st.index;
        st.index += 1;
        if !cfg.skip_invalid {
            return Err(exports::Error::Record {
                path: path.clone(),
                at,
                message,
            });
        }
        tracing::warn!("{}{at}: skipped: {message}", path.display());
        st.checked.skip.insert(at);
        st.checked.invalid += usize::from(in_shard(i));
        Ok(())
    };
    for_each_parsed::<PromptRecord>(
        path,
        |at, r| {
            let message = problem(cfg, tokenizer, &r).or_else(|| {
                let st = state.borrow();
                st.first_at
                    .get(&r.id)
                    .map(|first| format!("duplicate id `{}` (first at {})", r.id, first.describe()))
            });
            if let Some(m) = message {
                return reject(at, m);
            }
            let mut st = state.borrow_mut();
            let i = st.index;
            st.index += 1;
            st.checked.prompts += usize::from(in_shard(i));
            if in_shard(i) && cfg.batch_size == BatchSize::Auto {
                // A prompt that does not tokenize is the tokenize stage's to report.
                let n = tokenizer
                    .prompt_ids(&r.to_prompt())
                    .map_or(0, |ids| ids.len());
                st.checked.longest = st.checked.longest.max(n);
            }
            st.first_at.insert(r.id, at);
            Ok(())
        },
        reject,
    )?;
    let st = state.into_inner();
    if st.index == 0 {
        bail!("{}: no prompt records", path.display());
    }
    Ok(st.checked)
}
