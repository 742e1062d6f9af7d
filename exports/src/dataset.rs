//! `exports dataset continuation`: the paper's repetition task built from any corpus of
//! one-document-per-file text. Each example is a context of K consecutive sentences (the prompt,
//! raw text to continue) and the human next sentence (the `reference`). Documents, not sentences,
//! are split into `train`, `unlabeled` and `test`, so no test context shares a document with
//! training data.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::error::{Error, IoContext, Result};
use crate::records::{write_jsonl, PromptRecord};

/// The three splits, in a fixed order.
pub const SPLITS: [&str; 3] = ["train", "unlabeled", "test"];

#[derive(Debug, Clone)]
pub struct ContinuationConfig {
    pub text_dir: PathBuf,
    pub out: PathBuf,
    pub context_sentences: usize,
    /// Fractions of documents for train, unlabeled and test (normalised to sum to 1).
    pub split: [f64; 3],
    /// At most this many examples per split (after a seeded shuffle); `None` keeps all.
    pub limit: [Option<usize>; 3],
    pub seed: u64,
    /// Sentences shorter than this many characters are merged into the next one.
    pub min_sentence_chars: usize,
    /// Sentences longer than this are not used as a reference (nor kept in a context window).
    pub max_sentence_chars: usize,
}

/// Words that end with a period without ending a sentence.
const ABBREVIATIONS: &[&str] = &[
    "mr", "mrs", "ms", "dr", "st", "jr", "sr", "gen", "gov", "sen", "rep", "hon", "messrs", "no",
    "vs", "etc", "u.s", "u.s.a", "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep", "sept",
    "oct", "nov", "dec", "vol", "co", "inc", "ltd", "ft", "lt", "col", "capt", "prof", "i.e",
    "e.g", "a.m", "p.m",
];

/// Split prose into sentences: a sentence ends at `.`, `!` or `?` (plus closing quotes or
/// brackets) followed by whitespace and an upper-case letter, digit or opening quote — unless the
/// word before the period is a known abbreviation or a single letter (an initial).
pub fn split_sentences(text: &str) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if matches!(c, '.' | '!' | '?') {
            let mut end = i + 1;
            while end < chars.len() && matches!(chars[end], '"' | '\'' | ')' | '”' | '’' | ']')
            {
                end += 1;
            }
            let mut next = end;
            while next < chars.len() && chars[next].is_whitespace() {
                next += 1;
            }
            let boundary = next > end
                && next < chars.len()
                && (chars[next].is_uppercase()
                    || chars[next].is_ascii_digit()
                    || matches!(chars[next], '"' | '“' | '\''));
            if boundary && !(c == '.' && is_abbreviation(&chars[start..i])) {
                let s: String = chars[start..end].iter().collect();
                let s = s.split_whitespace().collect::<Vec<_>>().join(" ");
                if !s.is_empty() {
                    out.push(s);
                }
                start = next;
                i = next;
                continue;
            }
        }
        i += 1;
    }
    let tail: String = chars[start.min(chars.len())..].iter().collect();
    let tail = tail.split_whitespace().collect::<Vec<_>>().join(" ");
    if !tail.is_empty() {
        out.push(tail);
    }
    out
}

fn is_abbreviation(before: &[char]) -> bool {
    let word: String = before
        .iter()
        .rev()
        .take_while(|c| !c.is_whitespace() && **c != '(' && **c != '"')
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    let w = word.to_lowercase();
    (w.chars().count() == 1 && w.chars().all(char::is_alphabetic))
        || ABBREVIATIONS.contains(&w.as_str())
}

/// Merge fragments shorter than `min_chars` into the following sentence.
fn merge_short(sentences: Vec<String>, min_chars: usize) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut pending = String::new();
    for s in sentences {
        if pending.is_empty() {
            pending = s;
        } else {
            pending = format!("{pending} {s}");
        }
        if pending.chars().count() >= min_chars {
            out.push(std::mem::take(&mut pending));
        }
    }
    if !pending.is_empty() {
        match out.last_mut() {
            Some(last) => {
                last.push(' ');
                last.push_str(&pending);
            }
            None => out.push(pending),
        }
    }
    out
}

/// Non-overlapping windows of `k` context sentences + 1 reference sentence from one document.
pub fn document_examples(doc_id: &str, text: &str, cfg: &ContinuationConfig) -> Vec<PromptRecord> {
    let sentences = merge_short(split_sentences(text), cfg.min_sentence_chars);
    let k = cfg.context_sentences;
    let mut out = Vec::new();
    let mut i = 0;
    while i + k < sentences.len() {
        let window = &sentences[i..=i + k];
        if window
            .iter()
            .all(|s| s.chars().count() <= cfg.max_sentence_chars)
        {
            let context = window[..k].join(" ");
            out.push(PromptRecord {
                id: format!("{doc_id}-{i}"),
                prompt: Some(context),
                messages: None,
                reference: Some(window[k].clone()),
                extra: Default::default(),
            });
        }
        i += k + 1;
    }
    out
}

/// Summary of a build: examples written per split, documents per split.
#[derive(Debug, Clone, Default)]
pub struct DatasetSummary {
    pub documents: [usize; 3],
    pub examples: [usize; 3],
}

/// Build `train.jsonl`, `unlabeled.jsonl` and `test.jsonl` in `cfg.out`.
pub fn build_continuation(cfg: &ContinuationConfig) -> Result<DatasetSummary> {
    if cfg.context_sentences == 0 {
        return Err(Error::Invalid(
            "--context-sentences must be at least 1".into(),
        ));
    }
    let total: f64 = cfg.split.iter().sum();
    if total.is_nan() || total <= 0.0 || cfg.split.iter().any(|f| *f < 0.0) {
        return Err(Error::Invalid(format!(
            "--split fractions must be non-negative and not all 0, got {:?}",
            cfg.split
        )));
    }
    let mut docs: Vec<PathBuf> = fs::read_dir(&cfg.text_dir)
        .at(&cfg.text_dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "txt"))
        .collect();
    docs.sort();
    if docs.len() < 3 {
        return Err(Error::Invalid(format!(
            "{}: found {} .txt documents; a train/unlabeled/test split needs at least 3",
            cfg.text_dir.display(),
            docs.len()
        )));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    docs.shuffle(&mut rng);
    // Document counts per split: cumulative rounding, every split with a positive fraction gets ≥ 1.
    let n = docs.len();
    let mut bounds = [0usize; 4];
    let mut acc = 0.0;
    for s in 0..3 {
        acc += cfg.split[s] / total;
        bounds[s + 1] = if s == 2 {
            n
        } else {
            ((acc * n as f64).round() as usize).clamp(bounds[s], n)
        };
        if cfg.split[s] > 0.0 && bounds[s + 1] == bounds[s] && bounds[s + 1] < n {
            bounds[s + 1] += 1;
        }
    }
    let mut summary = DatasetSummary::default();
    let mut splits: BTreeMap<usize, Vec<PromptRecord>> = BTreeMap::new();
    for s in 0..3 {
        let mut examples = Vec::new();
        for path in &docs[bounds[s]..bounds[s + 1]] {
            let text = fs::read_to_string(path).at(path)?;
            let id = path
                .file_stem()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default();
            examples.extend(document_examples(&id, &text, cfg));
        }
        summary.documents[s] = bounds[s + 1] - bounds[s];
        examples.shuffle(&mut rng);
        if let Some(limit) = cfg.limit[s] {
            examples.truncate(limit);
        }
        summary.examples[s] = examples.len();
        splits.insert(s, examples);
    }
    fs::create_dir_all(&cfg.out).at(&cfg.out)?;
    for (s, examples) in splits {
        write_jsonl(&cfg.out.join(format!("{}.jsonl", SPLITS[s])), &examples)?;
    }
    Ok(summary)
}

/// Parse `train=0.5,unlabeled=0.3,test=0.2` (or three bare numbers `0.5,0.3,0.2`).
pub fn parse_split_values<T: std::str::FromStr>(s: &str, what: &str) -> Result<[Option<T>; 3]> {
    let mut out: [Option<T>; 3] = [None, None, None];
    for (i, part) in s.split(',').enumerate() {
        let (idx, value) = match part.split_once('=') {
            Some((name, v)) => (
                SPLITS
                    .iter()
                    .position(|x| *x == name.trim())
                    .ok_or_else(|| {
                        Error::Invalid(format!(
                            "{what}: unknown split `{name}` (expected train, unlabeled, test)"
                        ))
                    })?,
                v,
            ),
            None if i < 3 => (i, part),
            None => {
                return Err(Error::Invalid(format!(
                    "{what}: more than three values in `{s}`"
                )))
            }
        };
        out[idx] = Some(
            value
                .trim()
                .parse()
                .map_err(|_| Error::Invalid(format!("{what}: `{value}` is not a valid number")))?,
        );
    }
    Ok(out)
}

impl ContinuationConfig {
    pub fn new(text_dir: &Path, out: &Path) -> Self {
        ContinuationConfig {
            text_dir: text_dir.to_path_buf(),
            out: out.to_path_buf(),
            context_sentences: 3,
            split: [0.6, 0.2, 0.2],
            limit: [None, None, None],
            seed: 0,
            min_sentence_chars: 20,
            max_sentence_chars: 400,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentences_split_at_terminators_but_not_abbreviations_or_initials() {
        let s = split_sentences(
            "Mr. Speaker, the U.S. Congress met. It was cold!  \"Why?\" he asked. Then John F. Kennedy spoke. 1961 was a year. end",
        );
        assert_eq!(
            s,
            [
                "Mr. Speaker, the U.S. Congress met.",
                "It was cold!",
                "\"Why?\" he asked.",
                "Then John F. Kennedy spoke.",
                "1961 was a year. end"
            ]
        );
    }

    #[test]
    fn windows_are_disjoint_and_reference_is_the_next_sentence() {
        let mut cfg = ContinuationConfig::new(Path::new("."), Path::new("."));
        cfg.context_sentences = 2;
        cfg.min_sentence_chars = 1;
        let ex = document_examples(
            "d",
            "A one. B two. C three. D four. E five. F six. G seven.",
            &cfg,
        );
        assert_eq!(ex.len(), 2);
        assert_eq!(ex[0].prompt.as_deref(), Some("A one. B two."));
        assert_eq!(ex[0].reference.as_deref(), Some("C three."));
        assert_eq!(ex[1].id, "d-3");
        assert_eq!(ex[1].reference.as_deref(), Some("F six."));
    }

    #[test]
    fn splits_are_by_document_and_deterministic() {
        let dir = tempfile::tempdir().unwrap();
        for d in 0..10 {
            let text: String = (0..8)
                .map(|i| format!("Document {d} sentence number {i} is here. "))
                .collect();
            fs::write(dir.path().join(format!("doc{d}.txt")), text).unwrap();
        }
        let out = tempfile::tempdir().unwrap();
        let mut cfg = ContinuationConfig::new(dir.path(), out.path());
        cfg.split = [0.5, 0.3, 0.2];
        let s = build_continuation(&cfg).unwrap();
        assert_eq!(s.documents, [5, 3, 2]);
        assert_eq!(s.examples, [10, 6, 4]);
        let doc_of = |split: &str| -> std::collections::BTreeSet<String> {
            crate::records::read_jsonl::<PromptRecord>(&out.path().join(format!("{split}.jsonl")))
                .unwrap()
                .into_iter()
                .map(|r| r.id.split('-').next().unwrap().to_string())
                .collect()
        };
        let (a, b, c) = (doc_of("train"), doc_of("unlabeled"), doc_of("test"));
        assert!(a.is_disjoint(&b) && a.is_disjoint(&c) && b.is_disjoint(&c));
        let first = fs::read(out.path().join("test.jsonl")).unwrap();
        build_continuation(&cfg).unwrap();
        assert_eq!(fs::read(out.path().join("test.jsonl")).unwrap(), first);
    }

    #[test]
    fn split_values_parse_by_name_or_position() {
        let v: [Option<f64>; 3] = parse_split_values("test=0.2,train=0.8", "--split").unwrap();
        assert_eq!(v, [Some(0.8), None, Some(0.2)]);
        let v: [Option<usize>; 3] = parse_split_values("10,20,30", "--limit").unwrap();
        assert_eq!(v, [Some(10), Some(20), Some(30)]);
        assert!(parse_split_values::<f64>("dev=0.1", "--split").is_err());
    }
}
