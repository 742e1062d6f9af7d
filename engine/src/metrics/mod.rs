//! The evaluation metrics of METRICS.md: word normalisation, Repeat@n, F1 and win rate.

pub mod f1;
pub mod repeat;
pub mod win_rate;
pub mod words;

pub use f1::{f1, f1_words};
pub use repeat::{repeat_at_n, repeat_count};
pub use win_rate::{win_rate, Outcome, WinRate};
pub use words::{content_words, words};
