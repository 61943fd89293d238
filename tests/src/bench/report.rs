//! Per-round statistics, verdicts and the one table of a run (benchmarks.md §1 and §4).

use comfy_table::{ContentArrangement, Table, presets};

/// A ratio's per-round spread beyond this makes the verdict `INCONCLUSIVE` (±15 %).
pub const MAX_SPREAD: f64 = 0.15;

/// Which side of its target a ratio or value must be on.
#[derive(Debug, Clone, Copy)]
pub enum Goal {
    AtLeast(f64),
    AtMost(f64),
}

impl Goal {
    fn met(self, value: f64) -> bool {
        match self {
            Goal::AtLeast(target) => value >= target,
            Goal::AtMost(target) => value <= target,
        }
    }
}

/// The outcome of one row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Fail,
    Inconclusive,
    /// The row could not be measured (an error is printed above the table).
    NotRun,
}

impl Verdict {
    fn label(self) -> &'static str {
        match self {
            Verdict::Pass => "PASS",
            Verdict::Fail => "FAIL",
            Verdict::Inconclusive => "INCONCLUSIVE",
            Verdict::NotRun => "NOT RUN",
        }
    }
}

/// The median of per-round ratios with its range.
#[derive(Debug, Clone, Copy)]
pub struct RatioStats {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub rounds: usize,
}

impl RatioStats {
    /// Returns the statistics of `ratios` (finite ones only), `None` when there is none.
    pub fn of(ratios: &[f64]) -> Option<Self> {
        let mut sorted: Vec<f64> = ratios
            .iter()
            .copied()
            .filter(|ratio| ratio.is_finite())
            .collect();
        if sorted.is_empty() {
            return None;
        }
        sorted.sort_by(f64::total_cmp);
        Some(Self {
            median: median_of_sorted(&sorted),
            min: sorted[0],
            max: sorted[sorted.len() - 1],
            rounds: sorted.len(),
        })
    }

    /// Returns the largest distance from the median to an end of the range, as a fraction
    /// of the median (the `±x %` of the table).
    pub fn spread(&self) -> f64 {
        if self.median <= 0.0 {
            return f64::INFINITY;
        }
        (self.median - self.min).max(self.max - self.median) / self.median
    }

    /// Returns the verdict: `INCONCLUSIVE` beyond ±15 %, else whether the median meets `goal`.
    pub fn verdict(&self, goal: Goal) -> Verdict {
        if self.spread() > MAX_SPREAD {
            Verdict::Inconclusive
        } else if goal.met(self.median) {
            Verdict::Pass
        } else {
            Verdict::Fail
        }
    }
}

/// Returns the median of a sorted, non-empty slice.
pub fn median_of_sorted(sorted: &[f64]) -> f64 {
    let middle = sorted.len() / 2;
    if sorted.len() % 2 == 1 {
        sorted[middle]
    } else {
        (sorted[middle - 1] + sorted[middle]) / 2.0
    }
}

/// Returns the median of `values` (0 when empty).
pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    if sorted.is_empty() {
        0.0
    } else {
        median_of_sorted(&sorted)
    }
}

/// One row of the table.
#[derive(Debug, Clone)]
pub struct Row {
    pub bench: String,
    pub subject: String,
    pub reference: String,
    pub ref_value: String,
    pub subj_value: String,
    /// `None` for absolute targets (RSS, an SLO): the ratio column shows `—`.
    pub ratio: Option<f64>,
    pub target: String,
    pub rounds: usize,
    /// `None` when there is no per-round ratio (absolute rows, one round).
    pub spread: Option<f64>,
    pub verdict: Verdict,
}

impl Row {
    /// A row whose verdict is the median of per-round ratios against `goal`.
    #[allow(clippy::too_many_arguments)]
    pub fn ratio(
        bench: &str,
        subject: &str,
        reference: &str,
        ref_value: String,
        subj_value: String,
        stats: Option<RatioStats>,
        goal: Goal,
    ) -> Self {
        let (ratio, rounds, spread, verdict) = match stats {
            Some(stats) => {
                // One round has no spread to judge: its ratio alone decides.
                let spread = (stats.rounds > 1).then(|| stats.spread());
                let verdict = if stats.rounds > 1 {
                    stats.verdict(goal)
                } else if goal.met(stats.median) {
                    Verdict::Pass
                } else {
                    Verdict::Fail
                };
                (Some(stats.median), stats.rounds, spread, verdict)
            }
            None => (None, 0, None, Verdict::NotRun),
        };
        Self {
            bench: bench.to_owned(),
            subject: subject.to_owned(),
            reference: reference.to_owned(),
            ref_value,
            subj_value,
            ratio,
            target: goal_label(goal, "×"),
            rounds,
            spread,
            verdict,
        }
    }

    /// A row with an absolute limit (RSS, a latency SLO): `value` against `goal`.
    pub fn absolute(
        bench: &str,
        subject: &str,
        limit: String,
        value: Option<(f64, String)>,
        goal: Goal,
        unit: &str,
        rounds: usize,
    ) -> Self {
        let (subj_value, verdict) = match value {
            Some((value, shown)) if goal.met(value) => (shown, Verdict::Pass),
            Some((_, shown)) => (shown, Verdict::Fail),
            None => ("—".to_owned(), Verdict::NotRun),
        };
        Self {
            bench: bench.to_owned(),
            subject: subject.to_owned(),
            reference: "absolute limit".to_owned(),
            ref_value: limit,
            subj_value,
            ratio: None,
            target: goal_label(goal, unit),
            rounds,
            spread: None,
            verdict,
        }
    }
}

fn goal_label(goal: Goal, unit: &str) -> String {
    let number = |value: f64| {
        if value >= 10.0 {
            format!("{value:.0}")
        } else {
            format!("{value:.2}")
        }
    };
    match goal {
        Goal::AtLeast(target) => format!("≥{}{unit}", number(target)),
        Goal::AtMost(target) => format!("≤{}{unit}", number(target)),
    }
}

/// Renders the table of benchmarks.md §4.
pub fn table(rows: &[Row]) -> String {
    let mut table = Table::new();
    table
        .load_preset(presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled)
        .force_no_tty()
        .set_header(vec![
            "bench",
            "subject",
            "reference",
            "ref_value",
            "subj_value",
            "ratio",
            "target",
            "rounds",
            "spread",
            "verdict",
        ]);
    for row in rows {
        table.add_row(vec![
            row.bench.clone(),
            row.subject.clone(),
            row.reference.clone(),
            row.ref_value.clone(),
            row.subj_value.clone(),
            row.ratio.map_or_else(|| "—".to_owned(), ratio_text),
            row.target.clone(),
            row.rounds.to_string(),
            row.spread.map_or_else(
                || "—".to_owned(),
                |spread| {
                    if spread.is_finite() {
                        format!("±{:.0}%", spread * 100.0)
                    } else {
                        "±∞".to_owned()
                    }
                },
            ),
            row.verdict.label().to_owned(),
        ]);
    }
    for column in table.column_iter_mut() {
        column.set_padding((0, 2));
    }
    table
        .lines()
        .map(|line| line.trim_end().to_owned())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Formats a ratio with the `×` of the table; small ratios keep three decimals.
pub fn ratio_text(ratio: f64) -> String {
    if ratio < 0.1 {
        format!("{ratio:.3}×")
    } else {
        format!("{ratio:.2}×")
    }
}

/// Formats `value` with thousands separators: `6,210`.
pub fn thousands(value: f64) -> String {
    let rounded = value.round().max(0.0) as u64;
    let digits = rounded.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

/// Formats a duration in microseconds as milliseconds: `1.23 ms`.
pub fn ms(micros: f64) -> String {
    format!("{:.2} ms", micros / 1000.0)
}

/// Formats kibibytes as mebibytes: `23.4 MB`.
pub fn mb(kib: u64) -> String {
    format!("{:.1} MB", kib as f64 / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_follow_the_median_and_spread() {
        let stats = RatioStats::of(&[0.62, 0.60, 0.65]).expect("stats");
        assert!((stats.median - 0.62).abs() < 1e-9);
        assert_eq!(stats.verdict(Goal::AtLeast(0.60)), Verdict::Pass);
        let low = RatioStats::of(&[0.50, 0.52, 0.55]).expect("stats");
        assert_eq!(low.verdict(Goal::AtLeast(0.60)), Verdict::Fail);
        let wide = RatioStats::of(&[0.40, 0.62, 0.90]).expect("stats");
        assert_eq!(wide.verdict(Goal::AtLeast(0.60)), Verdict::Inconclusive);
        assert!(RatioStats::of(&[]).is_none());
    }

    #[test]
    fn numbers_are_grouped() {
        assert_eq!(thousands(6210.4), "6,210");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(thousands(1_000_000.0), "1,000,000");
    }
}
