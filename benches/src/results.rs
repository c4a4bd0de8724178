//! What a suite hands to the BENCHMARKS.md generator: one JSON file per suite,
//! `<target dir>/bench-results/<suite>.json`, of rows that each carry their
//! same-run baseline and ratio. The suites also print their rows, so a reader
//! needs neither the JSON nor criterion's HTML.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// The environment variable that asks the suites for a short run (fewer rounds,
/// shorter criterion measurements, wider error). `cargo xtask bench --quick`
/// sets it.
pub const QUICK_ENV: &str = "BENCH_QUICK";
/// The environment variable naming the results directory (`cargo xtask bench`
/// sets it); without it, `<target dir>/bench-results`.
pub const RESULTS_DIR_ENV: &str = "BENCH_RESULTS_DIR";

/// Whether this is a quick run (see [`QUICK_ENV`]).
pub fn quick() -> bool {
    std::env::var_os(QUICK_ENV).is_some_and(|v| !v.is_empty() && v != "0")
}

/// `full` interleaved rounds, or a fifth of them (at least 5, odd so the
/// median is one round) in a quick run.
pub fn rounds(full: usize) -> usize {
    if quick() {
        (full / 5).max(5) | 1
    } else {
        full
    }
}

/// A goal on a row's ratio, or on its value.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Goal {
    /// The ratio must be at most this (times, costs).
    AtMost(f64),
    /// The ratio must be at least this (throughputs, speed-ups).
    AtLeast(f64),
    /// The value itself must be at most this, in the row's unit: a budget
    /// (bytes, say), with the baseline there for comparison only.
    ValueAtMost(f64),
}

impl Goal {
    /// Whether a row of `value` and `ratio` meets the goal.
    pub fn met(self, value: f64, ratio: f64) -> bool {
        match self {
            Goal::AtMost(max) => ratio <= max,
            Goal::AtLeast(min) => ratio >= min,
            Goal::ValueAtMost(max) => value <= max,
        }
    }

    /// `≤ 1.50×: met`, `≥ 0.80×: **not met**` or `≤ 250000 B: met`.
    pub fn describe(self, value: f64, unit: &str, ratio: f64) -> String {
        let bound = match self {
            Goal::AtMost(b) => format!("≤ {b:.2}×"),
            Goal::AtLeast(b) => format!("≥ {b:.2}×"),
            Goal::ValueAtMost(b) => format!("≤ {}", format_value(b, unit)),
        };
        let verdict = if self.met(value, ratio) {
            "met"
        } else {
            "**not met**"
        };
        format!("{bound}: {verdict}")
    }
}

/// One measured figure beside its baseline from the same run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Row {
    /// What was measured.
    pub name: String,
    /// Its value (median over rounds, unless the suite says otherwise).
    pub value: f64,
    /// The unit of `value` and `baseline_value`: `ns`, `µs`, `ms`, `s`,
    /// `hits/s`, `req/s`, `B`, `calls`.
    pub unit: String,
    /// What it is compared with.
    pub baseline: String,
    /// The baseline's value in the same run.
    pub baseline_value: f64,
    /// `value / baseline_value`, taken per round and then the median when the
    /// suite interleaves rounds (so it need not equal the ratio of the medians).
    pub ratio: f64,
    /// The goal for `ratio`, if it sets one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub goal: Option<Goal>,
    /// The suite's extra table this row belongs in (one of its
    /// [`Suite::tables`](crate::doc::Suite::tables)); `None` for its main table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<String>,
}

impl Row {
    /// A row; `ratio` is given because interleaved suites take it per round.
    pub fn new(
        name: impl Into<String>,
        value: f64,
        unit: impl Into<String>,
        baseline: impl Into<String>,
        baseline_value: f64,
        ratio: f64,
    ) -> Self {
        Row {
            name: name.into(),
            value,
            unit: unit.into(),
            baseline: baseline.into(),
            baseline_value,
            ratio,
            goal: None,
            table: None,
        }
    }

    /// The same row with a goal on its ratio.
    #[must_use]
    pub fn goal(mut self, goal: Goal) -> Self {
        self.goal = Some(goal);
        self
    }

    /// The same row, in the suite's extra table `table` (see
    /// [`Suite::tables`](crate::doc::Suite::tables)).
    #[must_use]
    pub fn in_table(mut self, table: &str) -> Self {
        self.table = Some(table.to_owned());
        self
    }
}

/// One suite's results: the contents of `<suite>.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SuiteResults {
    /// The suite's name (see [`crate::suites::SUITES`]).
    pub suite: String,
    /// When the run finished, seconds since the Unix epoch.
    pub unix_time: u64,
    /// Whether it was a quick run.
    pub quick: bool,
    /// How the figures were taken (rounds, sizes), one line.
    #[serde(default)]
    pub method: String,
    /// The rows, in the order the table shows them.
    pub rows: Vec<Row>,
    /// How the figures of each extra table were taken, where that differs
    /// from [`method`](Self::method).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub table_methods: BTreeMap<String, String>,
}

impl SuiteResults {
    /// An empty result set for `suite`, stamped now, quick if this run is.
    pub fn new(suite: &str, method: impl Into<String>) -> Self {
        SuiteResults {
            suite: suite.to_owned(),
            unix_time: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            quick: quick(),
            method: method.into(),
            rows: Vec::new(),
            table_methods: BTreeMap::new(),
        }
    }

    /// Says how the figures of the extra table `table` were taken.
    pub fn table_method(&mut self, table: &str, method: impl Into<String>) {
        self.table_methods.insert(table.to_owned(), method.into());
    }

    /// The method line of `table` (`None`: the main table).
    pub fn method_of(&self, table: Option<&str>) -> &str {
        table
            .and_then(|t| self.table_methods.get(t))
            .unwrap_or(&self.method)
    }

    /// Adds a row.
    pub fn push(&mut self, row: Row) {
        self.rows.push(row);
    }

    /// The rows as a plain-text table.
    pub fn to_text(&self) -> String {
        let mut out = format!("== {} ({}) ==\n", self.suite, self.method);
        let width = self.rows.iter().map(|r| r.name.len()).max().unwrap_or(0);
        for r in &self.rows {
            if let Some(table) = &r.table {
                let _ = write!(out, "  [{table}]");
            }
            let _ = write!(
                out,
                "  {:<width$}  {:>12}   vs {} {}   {}x",
                r.name,
                format_value(r.value, &r.unit),
                r.baseline,
                format_value(r.baseline_value, &r.unit),
                significant(r.ratio),
            );
            if let Some(goal) = r.goal {
                let goal = goal.describe(r.value, &r.unit, r.ratio);
                let _ = write!(out, "   goal {}", goal.replace("**", ""));
            }
            out.push('\n');
        }
        out
    }

    /// Prints the rows and writes `<results dir>/<suite>.json`.
    pub fn finish(&self) {
        print!("{}", self.to_text());
        let dir = results_dir();
        let path = self.write_to(&dir).unwrap_or_else(|e| panic!("{e}"));
        println!("  -> {}", path.display());
    }

    /// Writes `<dir>/<suite>.json`; returns its path.
    pub fn write_to(&self, dir: &Path) -> Result<PathBuf, String> {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let path = dir.join(format!("{}.json", self.suite));
        let json = serde_json::to_string_pretty(self).map_err(|e| e.to_string())?;
        std::fs::write(&path, json).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        Ok(path)
    }

    /// Reads `<dir>/<suite>.json`, `None` if there is none.
    pub fn read_from(dir: &Path, suite: &str) -> Result<Option<Self>, String> {
        let path = dir.join(format!("{suite}.json"));
        match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text)
                .map(Some)
                .map_err(|e| format!("{}: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("cannot read {}: {e}", path.display())),
        }
    }
}

/// Where results go: [`RESULTS_DIR_ENV`], else `$CARGO_TARGET_DIR/bench-results`,
/// else `bench-results` beside the profile directory the running binary is in
/// (`target/release/deps/<bench>` → `target/bench-results`).
pub fn results_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os(RESULTS_DIR_ENV) {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(dir).join("bench-results");
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.parent()?.join("bench-results")))
        .unwrap_or_else(|| PathBuf::from("target/bench-results"))
}

/// `x` to three significant digits (all its integer digits from 1,000 up).
pub fn significant(x: f64) -> String {
    if !x.is_finite() || x == 0.0 {
        return format!("{x}");
    }
    let digits = x.abs().log10().floor() as i32;
    let decimals = (2 - digits).max(0) as usize;
    format!("{x:.decimals$}")
}

/// A value with its unit, three significant digits, rates in k/M.
pub fn format_value(v: f64, unit: &str) -> String {
    if unit == "calls" || unit == "B" {
        return format!("{v:.0} {unit}");
    }
    if let Some(per) = unit.strip_suffix("/s") {
        if v >= 1e6 {
            return format!("{} M {per}/s", significant(v / 1e6));
        }
        if v >= 1e4 {
            return format!("{} k {per}/s", significant(v / 1e3));
        }
    }
    format!("{} {unit}", significant(v))
}

/// The per-round values of an interleaved measurement (see [`interleave`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Interleaved {
    /// `values[side][round]`: each side's per-operation value in each round.
    pub values: Vec<Vec<f64>>,
}

impl Interleaved {
    /// The median of `side`'s per-round values.
    pub fn median(&self, side: usize) -> f64 {
        median(self.values[side].clone())
    }

    /// The median over rounds of `side / base` in the same round.
    pub fn ratio(&self, side: usize, base: usize) -> f64 {
        median(
            self.values[side]
                .iter()
                .zip(&self.values[base])
                .map(|(s, b)| s / b)
                .collect(),
        )
    }

    /// A row for `side` against `base`: medians and the per-round ratio.
    pub fn row(&self, side: usize, name: &str, base: usize, base_name: &str, unit: &str) -> Row {
        Row::new(
            name,
            self.median(side),
            unit,
            base_name,
            self.median(base),
            self.ratio(side, base),
        )
    }
}

/// Runs `rounds` rounds; in each, every side runs once in turn (its closure
/// gets the round number and returns its per-operation value for the round),
/// so load that drifts between rounds hits every side alike, and ratios are
/// taken within a round ([`Interleaved::ratio`]).
pub fn interleave(rounds: usize, sides: &mut [&mut dyn FnMut(usize) -> f64]) -> Interleaved {
    let mut values: Vec<Vec<f64>> = vec![Vec::with_capacity(rounds); sides.len()];
    for round in 0..rounds {
        for (side, run) in sides.iter_mut().enumerate() {
            values[side].push(run(round));
        }
    }
    Interleaved { values }
}

/// Times `ops` calls of `op` (given the call's index) and returns the mean
/// nanoseconds per call.
pub fn ns_per_op(ops: usize, mut op: impl FnMut(usize)) -> f64 {
    let start = std::time::Instant::now();
    for i in 0..ops {
        op(i);
    }
    start.elapsed().as_nanos() as f64 / ops as f64
}

/// The median (upper middle for an even count); `NaN` for no values.
pub fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The `q` quantile (0..=1) of sorted values, nearest rank below.
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * q) as usize]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interleave_takes_ratios_within_each_round() {
        // Side 1 is always twice side 0, whatever the round's "load".
        let mut base = |r: usize| (r + 1) as f64;
        let mut double = |r: usize| 2.0 * (r + 1) as f64;
        let m = interleave(5, &mut [&mut base, &mut double]);
        assert_eq!(m.ratio(1, 0), 2.0);
        assert_eq!(m.ratio(0, 1), 0.5);
        assert_eq!(m.median(0), 3.0);
        assert_eq!(m.median(1), 6.0);
        let row = m.row(1, "double", 0, "base", "ns");
        assert_eq!((row.value, row.baseline_value, row.ratio), (6.0, 3.0, 2.0));
    }

    #[test]
    fn results_round_trip_through_json() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut results = SuiteResults::new("peers", "test");
        results.push(Row::new("a", 1.0, "ns", "b", 2.0, 0.5).goal(Goal::AtMost(1.5)));
        results.write_to(dir.path()).expect("write");
        let back = SuiteResults::read_from(dir.path(), "peers")
            .expect("read")
            .expect("present");
        assert_eq!(back, results);
        assert!(SuiteResults::read_from(dir.path(), "absent")
            .expect("read")
            .is_none());
    }

    #[test]
    fn goals_read_both_ways() {
        assert!(Goal::AtMost(1.5).met(9.0, 1.5) && !Goal::AtMost(1.5).met(0.0, 1.51));
        assert!(Goal::AtLeast(0.8).met(0.0, 0.9) && !Goal::AtLeast(0.8).met(9.0, 0.7));
        assert_eq!(
            Goal::AtLeast(0.8).describe(1.0, "ms", 0.7),
            "≥ 0.80×: **not met**"
        );
        // A budget reads the value, whatever the ratio.
        let budget = Goal::ValueAtMost(250_000.0);
        assert!(budget.met(250_000.0, 9.0) && !budget.met(250_001.0, 0.1));
        assert_eq!(budget.describe(218_742.0, "B", 0.3), "≤ 250000 B: met");
    }

    #[test]
    fn values_format_with_their_units() {
        assert_eq!(format_value(98.31, "ns"), "98.3 ns");
        assert_eq!(format_value(21_000_000.0, "hits/s"), "21.0 M hits/s");
        assert_eq!(format_value(54_321.0, "req/s"), "54.3 k req/s");
        assert_eq!(format_value(1.0, "calls"), "1 calls");
        assert_eq!(format_value(0.0234, "ms"), "0.0234 ms");
        assert_eq!(format_value(1234.6, "µs"), "1235 µs");
        assert_eq!(significant(0.001), "0.00100");
    }
}
