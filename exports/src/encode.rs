//! How a record becomes token ids — the one rule of `DATA.md` and the README's "Record formats",
//! used by training, generation, reward scoring and evaluation alike — and the one token policy
//! (pad id, EOS set, truncation) they all share.
//!
//! * `ids(prompt)`: raw text with the tokenizer's own special-token settings, or chat messages
//!   rendered by the template with `add_generation_prompt = true` and tokenized without adding
//!   special tokens again.
//! * `ids(response)` ([`Tokenizer::completion_ids`]): a string, or a conversational response of
//!   one assistant message, is `ids(content) ++ [eos]` (tokenized without special tokens), so the
//!   string and conversational forms of the same data give identical ids. A response of several
//!   messages is rendered with the prompt by the chat template; its ids are those of the text that
//!   follows the rendered prompt, up to and including the first token of the EOS set.
//! * Prompt and response are tokenized separately and joined, never re-tokenized together, so
//!   the boundary is exact.

use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::records::{Completion, Message, Prompt};
use crate::tokenizer::{TokenId, Tokenizer};

/// The special ids every stage agrees on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenPolicy {
    /// The EOS appended to a response: the tokenizer's `eos_token`, else `config.json`'s first
    /// `eos_token_id`.
    pub eos: TokenId,
    /// Every id that ends a response: [`TokenPolicy::eos`] and `config.json`'s and
    /// `generation_config.json`'s `eos_token_id` (sorted, no repeats).
    pub stop: Vec<TokenId>,
    /// Fills padding positions (always masked out, so its value never changes a result):
    /// see [`pad_id`].
    pub pad: TokenId,
}

impl TokenPolicy {
    pub fn is_stop(&self, id: TokenId) -> bool {
        self.stop.binary_search(&id).is_ok()
    }
}

/// The pad id: `tokenizer_config.json`'s `pad_token`, else `config.json`'s `pad_token_id`, else
/// the EOS, else 0. Where only a model config is at hand (the probe of a checkpoint), call it
/// with `tokenizer_pad = None` and the config's first EOS.
pub fn pad_id(
    tokenizer_pad: Option<TokenId>,
    config_pad: Option<u32>,
    eos: Option<TokenId>,
) -> TokenId {
    tokenizer_pad
        .or(config_pad.map(TokenId))
        .or(eos)
        .unwrap_or(TokenId(0))
}

/// [`pad_id`] from a model config alone.
pub fn config_pad_id(cfg: &ModelConfig) -> TokenId {
    pad_id(
        None,
        cfg.pad_token_id,
        cfg.eos_token_ids.first().copied().map(TokenId),
    )
}

/// How a sequence longer than the limit is cut. Always from the left (the start of the prompt):
/// what a model continues, is trained on, or is scored at lies at the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Truncation {
    /// Only prompt tokens are cut, and at least one is kept; the response is never cut. A
    /// response too long for that is refused (`None`): training skips and counts the example,
    /// generation refuses a `--max-new-tokens` that leaves no room for a prompt.
    Prompt,
    /// As [`Truncation::Prompt`] while the response fits; otherwise the sequence keeps its last
    /// `max` tokens, so its end — where a reward head reads — is never cut (reward scoring).
    KeepEnd,
}

impl Truncation {
    /// Tokens to drop from the left of a `prompt + response` sequence to fit `max`, or `None`
    /// when this policy refuses.
    pub fn cut(self, prompt: usize, response: usize, max: usize) -> Option<usize> {
        let total = prompt + response;
        if total <= max {
            return Some(0);
        }
        if prompt > 0 && response < max {
            return Some(total - max);
        }
        match self {
            Truncation::Prompt => None,
            Truncation::KeepEnd => Some(total - max),
        }
    }
}

/// A tokenized prompt + response, with the response mask implied by `response_start`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Example {
    pub ids: Vec<TokenId>,
    /// Index of the first response token; `ids[response_start..]` is `ids(response)` (without the
    /// EOS for a response that did not end, see [`Tokenizer::example`]).
    pub response_start: usize,
    /// Prompt tokens dropped from the left to fit `max_length`.
    pub truncated: usize,
}

impl Example {
    pub fn response_len(&self) -> usize {
        self.ids.len() - self.response_start
    }
}

/// Join prompt and response ids and fit them to `max_length` by `truncation`.
pub fn fit_example(
    prompt: Vec<TokenId>,
    response: Vec<TokenId>,
    max_length: Option<usize>,
    truncation: Truncation,
) -> Option<Example> {
    let max = max_length.unwrap_or(usize::MAX);
    let drop = truncation.cut(prompt.len(), response.len(), max)?;
    let prompt_len = prompt.len();
    let mut ids = prompt;
    ids.extend(response);
    ids.drain(..drop);
    Some(Example {
        response_start: prompt_len.saturating_sub(drop),
        truncated: drop.min(prompt_len),
        ids,
    })
}

impl Tokenizer {
    /// `ids(prompt)`: raw text with the tokenizer's own special-token settings, or the rendered chat
    /// template tokenized without adding special tokens again.
    pub fn prompt_ids(&self, prompt: &Prompt) -> Result<Vec<TokenId>> {
        match prompt {
            Prompt::Text(t) => self.encode(t, true),
            Prompt::Messages(m) => self.encode(&self.render_chat(m)?, false),
        }
    }

    /// `ids(text) ++ [eos]`, tokenized without special tokens.
    pub fn response_ids(&self, response: &str) -> Result<Vec<TokenId>> {
        let mut ids = self.encode(response, false)?;
        ids.push(self.policy().eos);
        Ok(ids)
    }

    /// `ids(response)` by the module's rule; always ends with a token of the EOS set.
    pub fn completion_ids(&self, prompt: &Prompt, completion: &Completion) -> Result<Vec<TokenId>> {
        let messages = match completion {
            Completion::Text(t) => return self.response_ids(t),
            Completion::Messages(m) if m.len() == 1 && m[0].role == "assistant" => {
                return self.response_ids(&m[0].content)
            }
            Completion::Messages(m) => m,
        };
        let Prompt::Messages(prompt) = prompt else {
            return Err(Error::Invalid(
                "a response of several messages needs a conversational prompt (a list of messages) to be rendered with".into(),
            ));
        };
        let rendered_prompt = self.render_chat(prompt)?;
        let whole: Vec<Message> = prompt.iter().chain(messages).cloned().collect();
        let rendered = self.render_conversation(&whole)?;
        let Some(rest) = rendered.strip_prefix(&rendered_prompt) else {
            return Err(Error::Template(
                "the conversation rendered with its response does not start with the prompt rendered alone (with the generation prompt), so the response's tokens cannot be told apart".into(),
            ));
        };
        let mut ids = self.encode(rest, false)?;
        match ids.iter().position(|&t| self.policy().is_stop(t)) {
            Some(i) => ids.truncate(i + 1),
            None => ids.push(self.policy().eos),
        }
        Ok(ids)
    }

    /// Prompt and response tokenized separately and joined, fitted to `max_length` by
    /// `truncation`. `ended = false` marks a response cut by the token limit: it loses its
    /// closing EOS, so a language model is not taught to stop where the text was cut (a response
    /// with no tokens but the EOS keeps it: there is nothing else to learn).
    pub fn example(
        &self,
        prompt: &Prompt,
        completion: &Completion,
        ended: bool,
        max_length: Option<usize>,
        truncation: Truncation,
    ) -> Result<Option<Example>> {
        let mut response = self.completion_ids(prompt, completion)?;
        if !ended && response.len() > 1 {
            response.pop();
        }
        Ok(fit_example(
            self.prompt_ids(prompt)?,
            response,
            max_length,
            truncation,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(ids: &[u32]) -> Vec<TokenId> {
        ids.iter().map(|&i| TokenId(i)).collect()
    }

    #[test]
    fn prompt_truncation_drops_prompt_from_the_left_and_never_the_response() {
        let p = Truncation::Prompt;
        let e = fit_example(t(&[1, 2, 3, 4]), t(&[7, 8, 2]), Some(5), p).unwrap();
        assert_eq!(e.ids, t(&[3, 4, 7, 8, 2]));
        assert_eq!((e.response_start, e.truncated), (2, 2));
        // A response of 3 needs at least one prompt token: 4 fits, 3 does not.
        assert!(fit_example(t(&[1, 2]), t(&[7, 8, 2]), Some(4), p).is_some());
        assert!(fit_example(t(&[1, 2]), t(&[7, 8, 2]), Some(3), p).is_none());
        let e = fit_example(t(&[1]), t(&[2]), None, p).unwrap();
        assert_eq!((e.response_start, e.truncated), (1, 0));
    }

    #[test]
    fn keep_end_truncation_keeps_the_last_tokens() {
        let k = Truncation::KeepEnd;
        // Fits by cutting the prompt: the same as Prompt.
        let e = fit_example(t(&[1, 2, 3]), t(&[7, 2]), Some(3), k).unwrap();
        assert_eq!((e.ids, e.response_start), (t(&[3, 7, 2]), 1));
        // The response alone is too long: its start goes too, its end stays.
        let e = fit_example(t(&[1, 2]), t(&[7, 8, 9, 2]), Some(3), k).unwrap();
        assert_eq!(
            (e.ids.clone(), e.response_start, e.truncated),
            (t(&[8, 9, 2]), 0, 2)
        );
    }

    #[test]
    fn pad_falls_back_from_tokenizer_to_config_to_eos_to_zero() {
        assert_eq!(
            pad_id(Some(TokenId(5)), Some(3), Some(TokenId(2))),
            TokenId(5)
        );
        assert_eq!(pad_id(None, Some(3), Some(TokenId(2))), TokenId(3));
        assert_eq!(pad_id(None, None, Some(TokenId(2))), TokenId(2));
        assert_eq!(pad_id(None, None, None), TokenId(0));
    }
}
