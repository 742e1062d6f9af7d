//! Win rate against a reference response (METRICS.md): win 1, tie 0.5, loss 0, mean × 100, with a
//! 95% percentile bootstrap interval over prompts.

use serde::Serialize;

use crate::bootstrap::{mean_interval, BootstrapConfig, Interval};

/// How a candidate fared against the reference on one prompt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Win,
    Tie,
    Loss,
}

impl Outcome {
    /// Compare two reward-model scores. Only exactly equal scores tie; callers reject NaN before.
    pub fn compare(candidate: f64, reference: f64) -> Outcome {
        if candidate > reference {
            Outcome::Win
        } else if candidate == reference {
            Outcome::Tie
        } else {
            Outcome::Loss
        }
    }

    /// The outcome in win-rate points: 100, 50 or 0.
    pub fn points(self) -> f64 {
        match self {
            Outcome::Win => 100.0,
            Outcome::Tie => 50.0,
            Outcome::Loss => 0.0,
        }
    }
}

/// A win rate in percent over `prompts` prompts, with its bootstrap interval.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WinRate {
    pub rate: f64,
    pub interval: Interval,
    pub prompts: usize,
    pub wins: usize,
    pub ties: usize,
    pub losses: usize,
}

/// Win rate of `outcomes`; `None` when there are none.
pub fn win_rate(outcomes: &[Outcome], bootstrap: &BootstrapConfig) -> Option<WinRate> {
    let points: Vec<f64> = outcomes.iter().map(|o| o.points()).collect();
    let interval = mean_interval(&points, bootstrap)?;
    let count = |o: Outcome| outcomes.iter().filter(|x| **x == o).count();
    Some(WinRate {
        rate: points.iter().sum::<f64>() / points.len() as f64,
        interval,
        prompts: outcomes.len(),
        wins: count(Outcome::Win),
        ties: count(Outcome::Tie),
        losses: count(Outcome::Loss),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use Outcome::*;

    #[test]
    fn wins_ties_and_losses_are_weighted() {
        // (1 + 1 + 0.5 + 0) / 4 × 100 = 62.5
        let w = win_rate(&[Win, Win, Tie, Loss], &BootstrapConfig::default()).unwrap();
        assert_eq!(w.rate, 62.5);
        assert_eq!((w.wins, w.ties, w.losses, w.prompts), (2, 1, 1, 4));
        assert_eq!(Outcome::compare(1.0, 0.5), Win);
        assert_eq!(Outcome::compare(-2.0, -2.0), Tie);
        assert_eq!(Outcome::compare(-3.0, -2.0), Loss);
    }

    #[test]
    fn interval_contains_the_estimate_and_narrows_with_more_prompts() {
        let cfg = BootstrapConfig::default();
        // The same 60/10/30 mix at 20 and at 2,000 prompts.
        let mix = |k: usize| -> Vec<Outcome> {
            (0..k * 10)
                .map(|i| match i % 10 {
                    0..=5 => Win,
                    6 => Tie,
                    _ => Loss,
                })
                .collect()
        };
        let small = win_rate(&mix(2), &cfg).unwrap();
        let large = win_rate(&mix(200), &cfg).unwrap();
        assert_eq!(small.rate, 65.0);
        assert_eq!(large.rate, 65.0);
        assert!(small.interval.contains(small.rate), "{small:?}");
        assert!(large.interval.contains(large.rate), "{large:?}");
        assert!(
            large.interval.width() < small.interval.width() / 5.0,
            "{small:?} {large:?}"
        );
        // Normal approximation for 2,000 prompts: sd of a point ≈ 45.8, so the half-width ≈
        // 1.96·45.8/√2000 ≈ 2.0 points; the bootstrap should agree to within a few tenths.
        let half = large.interval.width() / 2.0;
        assert!((half - 2.0).abs() < 0.3, "{large:?}");
    }

    #[test]
    fn no_outcomes_no_win_rate() {
        assert_eq!(win_rate(&[], &BootstrapConfig::default()), None);
    }
}
