//! The browser suite's results, from what it produces: the rows the browser
//! benchmark (`cache-browser/tests/bench.rs`, in headless Chromium) logs, and
//! the visits file the end-to-end journey writes
//! (`<target dir>/journey/visits.json`).

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::results::{Goal, Row};

/// The browser benchmark's rows: lines of the form
/// `| tier | 1.685 µs | baseline | 1.515 µs | 1.11x |` anywhere in its output
/// (the runner may prefix them). The header and separator lines are skipped.
pub fn tier_rows(log: &str) -> Vec<Row> {
    log.lines()
        .filter_map(|line| {
            let line = &line[line.find('|')?..];
            let cells: Vec<&str> = line
                .trim()
                .trim_matches('|')
                .split('|')
                .map(str::trim)
                .collect();
            let [name, value, baseline, baseline_value, ratio] = cells[..] else {
                return None;
            };
            let micros = |c: &str| c.strip_suffix("µs")?.trim().parse::<f64>().ok();
            let ratio = ratio.strip_suffix('x')?.trim().parse::<f64>().ok()?;
            let mut row = Row::new(
                name,
                micros(value)?,
                "µs",
                baseline,
                micros(baseline_value)?,
                ratio,
            );
            // Issue 7's goal, against the baseline doing the same operation
            // (BENCHMARKS.md's history explains why not a bare getItem).
            if baseline.trim_end_matches(" alone") != "`localStorage.getItem`" {
                row = row.goal(Goal::AtMost(1.5));
            }
            Some(row)
        })
        .collect()
}

/// One visit of the journey, as `visits.json` holds it.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct Visit {
    /// Which visit: first, same session, reload, later, offline.
    pub visit: String,
    /// How long the 50-picture list took, in milliseconds.
    pub list_ms: f64,
    /// How many pictures each tier served.
    pub tiers: BTreeMap<String, u64>,
}

/// The list time of each visit against the first visit's (the cold one).
/// Fails on a file that is not the journey's schema or has no visit.
pub fn visit_rows(visits_json: &str) -> Result<Vec<Row>, String> {
    let visits: Vec<Visit> = serde_json::from_str(visits_json)
        .map_err(|e| format!("visits.json is not the journey's schema: {e}"))?;
    let first = visits.first().ok_or("visits.json lists no visit")?;
    let first_name = format!("50-picture list, {} visit", first.visit);
    Ok(visits
        .iter()
        .map(|v| {
            let tiers: Vec<String> = v.tiers.iter().map(|(t, n)| format!("{t} {n}")).collect();
            Row::new(
                format!("50-picture list, {} visit ({})", v.visit, tiers.join(", ")),
                v.list_ms,
                "ms",
                first_name.clone(),
                first.list_ms,
                v.list_ms / first.list_ms,
            )
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tier_rows_come_from_the_logged_table() {
        let log = "running 1 test\n\
            | tier | median hit | baseline | baseline median | ratio |\n\
            |---|---|---|---|---|\n\
            log: | LocalStorageTier (URL JSON) | 1.685 µs | `JSON.parse(localStorage.getItem(k))` + expiry check | 1.515 µs | 1.11x |\n\
            | LocalStorageTier (URL JSON) | 1.160 µs | `localStorage.getItem` | 0.225 µs | 5.16x |\n\
            test result: ok.";
        let rows = tier_rows(log);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].name, "LocalStorageTier (URL JSON)");
        assert_eq!(rows[0].value, 1.685);
        assert_eq!(rows[0].baseline_value, 1.515);
        assert_eq!(rows[0].ratio, 1.11);
        assert_eq!(rows[0].goal, Some(Goal::AtMost(1.5)));
        assert_eq!(rows[1].goal, None);
    }

    #[test]
    fn visit_rows_compare_each_visit_with_the_first() {
        let json = r#"[{"visit": "first", "list_ms": 200.0, "tiers": {"signer": 50}},
                       {"visit": "reload", "list_ms": 20.0, "tiers": {"local-storage": 50}}]"#;
        let rows = visit_rows(json).expect("rows");
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[1].ratio, 0.1);
        assert!(rows[1].name.contains("reload") && rows[1].name.contains("local-storage 50"));
        assert!(visit_rows("[]").is_err());
        assert!(visit_rows(r#"{"visit": 1}"#).is_err());
    }
}
