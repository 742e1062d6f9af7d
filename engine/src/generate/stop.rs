//! When a response ends: EOS, a `--stop` string, or the token budget. The run stage checks each new
//! token (so a stopped row leaves the batch at once); the detokenize stage cuts the final text at
//! the first stop string with the same [`first_stop`].

use exports::records::FinishReason;
use exports::{TokenId, Tokenizer};

use super::beam::StopRule;

/// Byte offset of the earliest occurrence of any stop string in `text`.
pub fn first_stop(text: &str, stops: &[String]) -> Option<usize> {
    stops
        .iter()
        .filter(|s| !s.is_empty())
        .filter_map(|s| text.find(s.as_str()))
        .min()
}

/// The stopping criteria of one run.
pub struct Stopper<'a> {
    pub tokenizer: &'a Tokenizer,
    pub eos: Vec<TokenId>,
    pub ignore_eos: bool,
    pub stops: Vec<String>,
    pub max_new_tokens: usize,
    /// Tokens of tail decoded to look for a stop string that the newest token completed: every
    /// byte-level token yields at least one byte, so a stop string of b bytes spans ≤ b + 1 tokens.
    window: usize,
}

impl<'a> Stopper<'a> {
    pub fn new(
        tokenizer: &'a Tokenizer,
        eos: Vec<TokenId>,
        ignore_eos: bool,
        stops: Vec<String>,
        max_new_tokens: usize,
    ) -> Self {
        let window = stops.iter().map(|s| s.len()).max().unwrap_or(0) + 2;
        Stopper {
            tokenizer,
            eos,
            ignore_eos,
            stops,
            max_new_tokens,
            window,
        }
    }

    fn stop_string_in_tail(&self, generated: &[TokenId]) -> bool {
        if self.stops.is_empty() {
            return false;
        }
        let tail = &generated[generated.len().saturating_sub(self.window)..];
        // A tail that starts inside a multi-byte character decodes with U+FFFD there, which no
        // stop string matches, so a window can only miss nothing and invent nothing.
        match self.tokenizer.decode(tail, true) {
            Ok(text) => first_stop(&text, &self.stops).is_some(),
            Err(_) => false,
        }
    }
}

impl StopRule for Stopper<'_> {
    fn hit(&self, generated: &[TokenId]) -> Option<FinishReason> {
        let last = *generated.last()?;
        if !self.ignore_eos && self.eos.contains(&last) {
            Some(FinishReason::Eos)
        } else if self.stop_string_in_tail(generated) {
            Some(FinishReason::Stop)
        } else if generated.len() >= self.max_new_tokens {
            Some(FinishReason::Length)
        } else {
            None
        }
    }
}

/// The response text of generated tokens: the ending EOS token and other special tokens dropped,
/// cut before the first stop string when the response stopped on one.
pub fn response_text(
    tokenizer: &Tokenizer,
    tokens: &[TokenId],
    reason: FinishReason,
    stops: &[String],
) -> exports::Result<String> {
    // An EOS id need not be a special token of the vocabulary (generation_config may name any).
    let body = match reason {
        FinishReason::Eos => &tokens[..tokens.len().saturating_sub(1)],
        _ => tokens,
    };
    let text = tokenizer.decode(body, true)?;
    Ok(match (reason, first_stop(&text, stops)) {
        (FinishReason::Stop, Some(at)) => text[..at].to_string(),
        _ => text,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_earliest_stop_string_wins() {
        let stops = vec!["END".to_string(), "\n\n".to_string(), String::new()];
        assert_eq!(first_stop("ab\n\ncdEND", &stops), Some(2));
        assert_eq!(first_stop("abEND\n\n", &stops), Some(2));
        assert_eq!(first_stop("plain", &stops), None);
    }
}
