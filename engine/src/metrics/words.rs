//! METRICS.md word normalisation: lowercase, then split with `\w+|[^\w\s]`.
//!
//! The pattern is the one Python's `re` applies to `str` (the paper's metrics come from Python
//! tooling, and `scripts/reference/metrics_reference.py` is our reference), so `\w` and `\s` are
//! spelled out to mean exactly what they mean there, not what they mean in Rust's `regex`:
//!
//! * Python's `\w` is `str.isalnum() or "_"`: Unicode letters (categories L*) and numbers (N*:
//!   Nd, Nl, No). Rust's `\w` (UTS #18) instead also takes combining marks (Mn, Mc, Me), connector
//!   punctuation such as `‿`, ZWJ/ZWNJ and Other_Alphabetic symbols such as `Ⓐ`, and leaves out
//!   `No` numbers such as `²` and `½`. So `[\p{L}\p{N}_]` here. Consequence, as in Python: a word
//!   with a combining mark (decomposed `é`, Devanagari vowel signs) splits at the mark, and the
//!   mark becomes a punctuation token.
//! * Python's `\s` is `str.isspace()`, which also counts the separators U+001C..U+001F that the
//!   Unicode White_Space property (Rust's `\s`) does not.
//!
//! `tests/unicode_classes.rs` checks every assigned code point against a table dumped from Python.

use std::sync::LazyLock;

use regex::Regex;

/// Group 1 holds a word; a match without it is one punctuation mark.
static TOKEN: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"([\p{L}\p{N}_]+)|[^\p{L}\p{N}_\s\x1C-\x1F]")
        .expect("constant pattern; this is a bug")
});

/// The articles F1 drops.
const ARTICLES: [&str; 3] = ["a", "an", "the"];

/// One token of normalised text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Token<'a> {
    pub text: &'a str,
    /// `true` for a `\w+` run, `false` for a single punctuation mark.
    pub word: bool,
}

/// Lowercase `text` the way Python's `str.lower()` does (full Unicode mappings, final sigma).
pub fn normalise(text: &str) -> String {
    text.to_lowercase()
}

/// Split already-lowercased text into tokens.
pub fn tokens(lowercased: &str) -> impl Iterator<Item = Token<'_>> {
    TOKEN.captures_iter(lowercased).map(|c| {
        let m = c.get(0).expect("group 0 always matches; this is a bug");
        Token {
            text: m.as_str(),
            word: c.get(1).is_some(),
        }
    })
}

/// All tokens of `text` (words and punctuation marks): what Repeat@n counts over.
pub fn words(text: &str) -> Vec<String> {
    tokens(&normalise(text))
        .map(|t| t.text.to_owned())
        .collect()
}

/// The words F1 compares: no punctuation tokens, no articles.
pub fn content_words(text: &str) -> Vec<String> {
    tokens(&normalise(text))
        .filter(|t| t.word && !ARTICLES.contains(&t.text))
        .map(|t| t.text.to_owned())
        .collect()
}

/// How the tokenizer treats one character (after lowercasing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CharClass {
    Word,
    Space,
    Punctuation,
}

/// The class of `c` under this module's pattern; exposed for the Python comparison test.
pub fn char_class(c: char) -> CharClass {
    let mut buf = [0u8; 4];
    let first = tokens(c.encode_utf8(&mut buf)).next();
    match first {
        None => CharClass::Space,
        Some(t) if t.word => CharClass::Word,
        Some(_) => CharClass::Punctuation,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_and_single_punctuation_marks_are_tokens() {
        assert_eq!(words("Hello, World!!"), ["hello", ",", "world", "!", "!"]);
        assert_eq!(words("it's x_1"), ["it", "'", "s", "x_1"]);
        assert!(words("").is_empty());
        assert!(words(" \t\n").is_empty());
    }

    #[test]
    fn content_words_drop_punctuation_and_articles_only() {
        assert_eq!(
            content_words("The cat, a dog; AN owl... the end"),
            ["cat", "dog", "owl", "end"]
        );
        // "then" and "another" only start like articles.
        assert_eq!(content_words("then another"), ["then", "another"]);
    }

    #[test]
    fn classes_follow_python_re_not_rust_regex() {
        // Python's `\w` takes `²` (No) but not a combining acute (Mn), `‿` (Pc), ZWJ or `Ⓐ` (So).
        assert_eq!(char_class('²'), CharClass::Word);
        assert_eq!(char_class('\u{301}'), CharClass::Punctuation);
        assert_eq!(char_class('‿'), CharClass::Punctuation);
        assert_eq!(char_class('\u{200d}'), CharClass::Punctuation);
        assert_eq!(char_class('ⓐ'), CharClass::Punctuation);
        assert_eq!(char_class('_'), CharClass::Word);
        // Python's `\s` takes the information separators U+001C..U+001F.
        assert_eq!(char_class('\u{1c}'), CharClass::Space);
        assert_eq!(char_class('\u{3000}'), CharClass::Space);
        assert_eq!(words("cafe\u{301}"), ["cafe", "\u{301}"]);
    }

    #[test]
    fn lowercasing_is_full_unicode() {
        assert_eq!(words("STRASSE Straße"), ["strasse", "straße"]);
        // Final sigma: the last Σ of a word becomes ς (U+03C2), as in Python.
        assert_eq!(
            words("ΟΔΟΣ ΣΑΣ"),
            ["\u{3bf}\u{3b4}\u{3bf}\u{3c2}", "\u{3c3}\u{3b1}\u{3c2}"]
        );
        // U+0130 lowercases to `i` + combining dot above, which then splits off.
        assert_eq!(words("İ"), ["i", "\u{307}"]);
    }
}
