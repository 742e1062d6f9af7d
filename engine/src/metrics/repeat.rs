//! Repeat@n (METRICS.md): how many of a generation's n-gram positions repeat an n-gram of the
//! context or of the generation itself at an earlier position.

use std::collections::HashSet;

use super::words::words;

/// Repeat@n of one example, counted on pre-split tokens.
///
/// Position `i` counts when `g[i..i+n]` occurs anywhere in `c` or at some `j < i` in `g`.
/// A generation shorter than `n` tokens, and `n == 0`, count 0.
pub fn repeat_count<S: AsRef<str> + Eq + std::hash::Hash>(
    context: &[S],
    generation: &[S],
    n: usize,
) -> usize {
    if n == 0 || generation.len() < n {
        return 0;
    }
    let context_grams: HashSet<&[S]> = context.windows(n).collect();
    let mut seen: HashSet<&[S]> = HashSet::new();
    let mut count = 0;
    for gram in generation.windows(n) {
        // `insert` is false when the same n-gram already started at an earlier position.
        let earlier = !seen.insert(gram);
        if earlier || context_grams.contains(gram) {
            count += 1;
        }
    }
    count
}

/// Repeat@n of one example given as text (normalised and split per METRICS.md).
pub fn repeat_at_n(context: &str, generation: &str, n: usize) -> usize {
    repeat_count(&words(context), &words(generation), n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_repeats_count_every_later_occurrence() {
        // 3-grams: [i like it] [like it i] [it i like] [i like it]* [like it i]* [it i like]* [i like it]*
        assert_eq!(repeat_at_n("", "i like it i like it i like it", 3), 4);
        // Unigrams: every token after its first occurrence.
        assert_eq!(repeat_at_n("", "a b a a c b", 1), 3);
    }

    #[test]
    fn context_repeats_count_without_a_self_repeat() {
        // "we will build" and "will build a" and "build a wall" occur in the context.
        assert_eq!(
            repeat_at_n("we will build a wall", "and we will build a wall again", 3),
            3
        );
        // An n-gram spanning the context/generation boundary is neither.
        assert_eq!(repeat_at_n("x y", "z w", 2), 0);
        assert_eq!(repeat_at_n("x y", "y z", 2), 0);
    }

    #[test]
    fn punctuation_and_case_are_normalised() {
        // Tokens: hello , world ! hello , world ! → bigrams [hello ,] [, world] [world !] [! hello]
        // [hello ,]* [, world]* [world !]*: three repeats (*).
        assert_eq!(repeat_at_n("", "Hello, world! HELLO, World!", 2), 3);
        assert_eq!(repeat_at_n("Hello, world", "hello , WORLD", 3), 1);
    }

    #[test]
    fn short_and_empty_texts_count_zero() {
        assert_eq!(repeat_at_n("one two", "one two", 3), 0);
        assert_eq!(repeat_at_n("one two", "one two", 2), 1);
        assert_eq!(repeat_at_n("anything", "", 1), 0);
        assert_eq!(repeat_at_n("", "", 3), 0);
        assert_eq!(repeat_at_n("a a", "a a", 0), 0);
    }

    #[test]
    fn unicode_words_repeat() {
        assert_eq!(repeat_at_n("Café au lait", "CAFÉ AU LAIT", 3), 1);
        assert_eq!(repeat_at_n("", "我爱北京 我爱北京", 1), 1);
    }
}
