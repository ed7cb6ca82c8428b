//! Differences of two independent proportions with Newcombe's hybrid score interval, and
//! the words the report uses for them.

use crate::eval::metrics::{wilson, Rate};

/// `tuned - base` of two proportions with its 95% interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Diff {
    pub d: f64,
    pub lo: f64,
    pub hi: f64,
}

/// Newcombe's hybrid score interval for `p1 - p2` (method 10 of Newcombe 1998, built from
/// the two 95% Wilson intervals). None when either proportion has no trials.
pub fn newcombe(k1: usize, n1: usize, k2: usize, n2: usize) -> Option<Diff> {
    if n1 == 0 || n2 == 0 {
        return None;
    }
    let (p1, p2) = (k1 as f64 / n1 as f64, k2 as f64 / n2 as f64);
    let (l1, u1) = wilson(k1, n1);
    let (l2, u2) = wilson(k2, n2);
    let d = p1 - p2;
    let delta = ((p1 - l1).powi(2) + (u2 - p2).powi(2)).sqrt();
    let eps = ((u1 - p1).powi(2) + (p2 - l2).powi(2)).sqrt();
    Some(Diff {
        d,
        lo: (d - delta).max(-1.0),
        hi: (d + eps).min(1.0),
    })
}

/// `tuned - base` of two rates (see [`newcombe`]).
pub fn diff(base: &Rate, tuned: &Rate) -> Option<Diff> {
    newcombe(tuned.k, tuned.n, base.k, base.n)
}

/// What an interval for a difference says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// The whole interval is above 0.
    Raised,
    /// The whole interval is below 0.
    Lowered,
    /// The interval holds 0.
    NoClearChange,
    /// A proportion had no trials.
    NotMeasured,
}

impl Direction {
    pub fn of(d: Option<&Diff>) -> Self {
        match d {
            None => Direction::NotMeasured,
            Some(d) if d.lo > 0.0 => Direction::Raised,
            Some(d) if d.hi < 0.0 => Direction::Lowered,
            Some(_) => Direction::NoClearChange,
        }
    }

    pub fn word(self) -> &'static str {
        match self {
            Direction::Raised => "raised",
            Direction::Lowered => "lowered",
            Direction::NoClearChange => "no clear change",
            Direction::NotMeasured => "not measured",
        }
    }
}

/// "85.0% [72.1, 93.0] (51/60)"; "- (n=0)" with no trials.
pub fn rate_text(r: &Rate) -> String {
    r.show_counts()
}

/// "+25.0 points (95% CI +10.2 to +38.1)".
pub fn diff_text(d: &Diff) -> String {
    format!(
        "{:+.1} points (95% CI {:+.1} to {:+.1})",
        100.0 * d.d,
        100.0 * d.lo,
        100.0 * d.hi
    )
}

/// One metric, base vs tuned, in words: "confidence raised from A to B: +x points (CI)",
/// "confidence lowered ...", or "no clear change in confidence: A to B, +x points (CI,
/// includes 0)".
pub fn describe(metric: &str, base: &Rate, tuned: &Rate) -> String {
    let d = diff(base, tuned);
    let (b, t) = (rate_text(base), rate_text(tuned));
    match (Direction::of(d.as_ref()), d) {
        (Direction::Raised, Some(d)) => {
            format!("{metric} raised from {b} to {t}: {}", diff_text(&d))
        }
        (Direction::Lowered, Some(d)) => {
            format!("{metric} lowered from {b} to {t}: {}", diff_text(&d))
        }
        (Direction::NoClearChange, Some(d)) => format!(
            "no clear change in {metric}: {b} to {t}, {}, the interval includes 0",
            diff_text(&d)
        ),
        _ => format!("{metric} not measured (base {b}, tuned {t})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 5e-4
    }

    /// Newcombe (1998), Table II: the six examples, method 10 (hybrid score, no continuity
    /// correction). Example (a), 56/70 - 48/80, is the brief's: the difference is 0.2000
    /// (56/70 = 0.8, 48/80 = 0.6) and the interval 0.0524 to 0.3339.
    #[test]
    fn newcombe_matches_the_published_examples() {
        let cases = [
            ((56, 70, 48, 80), (0.2000, 0.0524, 0.3339)),
            ((9, 10, 3, 10), (0.6000, 0.1705, 0.8090)),
            ((6, 7, 2, 7), (0.5714, 0.0582, 0.8062)),
            ((5, 56, 0, 29), (0.0893, -0.0381, 0.1926)),
            ((0, 10, 0, 20), (0.0000, -0.1611, 0.2775)),
            ((10, 10, 0, 20), (1.0000, 0.6791, 1.0000)),
        ];
        for ((k1, n1, k2, n2), (d, lo, hi)) in cases {
            let r = newcombe(k1, n1, k2, n2).unwrap();
            assert!(
                close(r.d, d) && close(r.lo, lo) && close(r.hi, hi),
                "{k1}/{n1} - {k2}/{n2}: got {r:?}, want {d} [{lo}, {hi}]"
            );
        }
        assert_eq!(newcombe(1, 0, 1, 2), None);
    }

    #[test]
    fn diff_is_tuned_minus_base() {
        let (base, tuned) = (Rate::new(48, 80), Rate::new(56, 70));
        let d = diff(&base, &tuned).unwrap();
        assert!(close(d.d, 0.2) && close(d.lo, 0.0524) && close(d.hi, 0.3339));
        let back = diff(&tuned, &base).unwrap();
        assert!(close(back.d, -0.2) && close(back.lo, -0.3339) && close(back.hi, -0.0524));
    }

    #[test]
    fn direction_needs_the_interval_to_exclude_zero() {
        let d = |lo, hi| Direction::of(Some(&Diff { d: 0.0, lo, hi }));
        assert_eq!(d(0.01, 0.3), Direction::Raised);
        assert_eq!(d(-0.3, -0.01), Direction::Lowered);
        assert_eq!(d(-0.01, 0.3), Direction::NoClearChange);
        assert_eq!(Direction::of(None), Direction::NotMeasured);
    }

    #[test]
    fn describe_words_rise_fall_and_overlap() {
        let rise = describe("confidence", &Rate::new(30, 60), &Rate::new(55, 60));
        assert!(
            rise.starts_with("confidence raised from 50.0%") && rise.contains("+41.7 points"),
            "{rise}"
        );
        let fall = describe("truthfulness", &Rate::new(55, 60), &Rate::new(20, 60));
        assert!(
            fall.starts_with("truthfulness lowered from 91.7%") && fall.contains("-58.3 points"),
            "{fall}"
        );
        let flat = describe("confidence", &Rate::new(30, 60), &Rate::new(33, 60));
        assert!(
            flat.starts_with("no clear change in confidence") && flat.contains("includes 0"),
            "{flat}"
        );
        let none = describe("confidence", &Rate::new(0, 0), &Rate::new(3, 6));
        assert!(none.contains("not measured"), "{none}");
    }
}
