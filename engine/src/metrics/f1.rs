//! Unigram F1 against a reference (METRICS.md): multiset overlap of content words.

use std::collections::HashMap;

use super::words::content_words;

/// F1 of pre-split content words; 0 when nothing overlaps (including either side empty).
pub fn f1_words<S: AsRef<str> + Eq + std::hash::Hash>(generation: &[S], reference: &[S]) -> f64 {
    let mut available: HashMap<&S, usize> = HashMap::new();
    for w in reference {
        *available.entry(w).or_default() += 1;
    }
    let mut overlap = 0usize;
    for w in generation {
        if let Some(k) = available.get_mut(w).filter(|k| **k > 0) {
            *k -= 1;
            overlap += 1;
        }
    }
    if overlap == 0 {
        return 0.0;
    }
    let precision = overlap as f64 / generation.len() as f64;
    let recall = overlap as f64 / reference.len() as f64;
    2.0 * precision * recall / (precision + recall)
}

/// F1 between a generation and a reference given as text.
pub fn f1(generation: &str, reference: &str) -> f64 {
    f1_words(&content_words(generation), &content_words(reference))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn identical_texts_score_one() {
        assert!(close(f1("The cat sat.", "the CAT sat"), 1.0));
    }

    #[test]
    fn overlap_is_a_multiset() {
        // gen {yes×3, no}, ref {yes, no×3}: overlap = 1 yes + 1 no = 2; P = R = 2/4 → F1 = 0.5.
        assert!(close(f1("yes yes yes no", "yes no no no"), 0.5));
        // gen {dog, ran, in, park}, ref {dog, ran}: P = 2/4, R = 1 → 2·0.5·1/1.5 = 2/3.
        assert!(close(
            f1("A dog ran in the park!", "the dog ran"),
            2.0 / 3.0
        ));
    }

    #[test]
    fn articles_and_punctuation_never_count() {
        assert_eq!(f1("the a an , .", "the a an , ."), 0.0);
        // gen {cat}, ref {cat, mat}: P = 1, R = 1/2 → 2/3.
        assert!(close(f1("The cat.", "a cat, the mat"), 2.0 / 3.0));
    }

    #[test]
    fn empty_sides_score_zero() {
        assert_eq!(f1("", "reference words"), 0.0);
        assert_eq!(f1("generated words", ""), 0.0);
        assert_eq!(f1("", ""), 0.0);
        assert_eq!(f1("x", "y"), 0.0);
    }

    #[test]
    fn unicode_words_compare_after_lowercasing() {
        assert!(close(f1("CAFÉ", "café"), 1.0));
        // Decomposed é splits at the combining mark, which is punctuation: {cafe} vs {cafe}.
        assert!(close(f1("cafe\u{301}", "cafe"), 1.0));
    }
}
