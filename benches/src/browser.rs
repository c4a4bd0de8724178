//! The browser suite's results, from what it produces: the rows the browser
//! benchmark (`cache-browser/tests/bench.rs`, in headless Chromium) logs, and
//! the visits file the end-to-end journey writes
//! (`<target dir>/journey/visits.json`).

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::results::{median, Goal, Row};

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
            // (BENCHMARKS.md's history explains why not a bare getItem). A
            // batch read must beat the per-key reads it replaced.
            if name.contains("get_many") {
                row = row.goal(Goal::AtMost(1.0));
            } else if baseline.trim_end_matches(" alone") != "`localStorage.getItem`" {
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

/// Issue 21's budget for a visit's list, in milliseconds: the reload from
/// LocalStorage, the later visit from IndexedDB, the offline one from the
/// Cache API.
fn visit_budget(visit: &str) -> Option<f64> {
    match visit {
        "reload" => Some(40.0),
        "later" => Some(60.0),
        "offline" => Some(100.0),
        _ => None,
    }
}

/// The list time of each visit against the first visit's (the cold one),
/// with the visit's budget where issue 21 sets one: from one journey's
/// `visits.json` each in `journeys`, the median over them of each visit's
/// time (its tiers are those of the first journey; the ratio is of the
/// medians). Fails on a file that is not the journey's schema, on none, or
/// on journeys that do not list the same visits.
pub fn visit_rows(journeys: &[String]) -> Result<Vec<Row>, String> {
    let runs = journeys
        .iter()
        .map(|json| {
            serde_json::from_str::<Vec<Visit>>(json)
                .map_err(|e| format!("visits.json is not the journey's schema: {e}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let visits = runs.first().ok_or("no journey's visits.json was given")?;
    let first = visits.first().ok_or("visits.json lists no visit")?;
    let names = |run: &[Visit]| run.iter().map(|v| v.visit.clone()).collect::<Vec<_>>();
    if runs.iter().any(|run| names(run) != names(visits)) {
        return Err("the journeys' visits.json files list different visits".into());
    }
    let median_ms = |i: usize| median(runs.iter().map(|run| run[i].list_ms).collect());
    let first_ms = median_ms(0);
    let first_name = format!("50-picture list, {} visit", first.visit);
    Ok(visits
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let tiers: Vec<String> = v.tiers.iter().map(|(t, n)| format!("{t} {n}")).collect();
            let ms = median_ms(i);
            let row = Row::new(
                format!("50-picture list, {} visit ({})", v.visit, tiers.join(", ")),
                ms,
                "ms",
                first_name.clone(),
                first_ms,
                ms / first_ms,
            );
            match visit_budget(&v.visit) {
                Some(budget) => row.goal(Goal::ValueAtMost(budget)),
                None => row,
            }
        })
        .collect())
}

/// The first-visit benchmark's file (`first_visit.json`, written by
/// examples/profile-server/tests/first_visit.rs).
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct FirstVisits {
    /// Each build's wasm + JS in bytes, as Chromium asks for them.
    pub weight: BTreeMap<String, f64>,
    /// Every recorded visit.
    pub visits: Vec<FirstVisit>,
}

/// One first visit of one build.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct FirstVisit {
    /// The round it belongs to (a round visits each build once).
    pub round: u32,
    /// The network Chromium emulated: `loopback`, or the link.
    pub network: String,
    /// `shipped` or `as_before`.
    pub build: String,
    /// From the navigation to the 50th picture drawn, in milliseconds.
    pub page_ms: f64,
}

/// The shipped build, as the first-visit rows name it.
const SHIPPED: &str = "size-optimised build, precompressed";
/// The baseline build, as the first-visit rows name it.
const AS_BEFORE: &str = "previous build (release profile, no wasm-opt, served uncompressed)";

/// Issue 21's budget for the page's wasm + JS over the wire, in bytes.
pub const PAGE_BUDGET: f64 = 250_000.0;

/// The shipped page's weight beside the previous build's (goal: issue 21's
/// budget), then, per network, its first visit beside the previous build's:
/// medians over rounds, the ratio the median of each round's ratio.
pub fn first_visit_rows(json: &str) -> Result<Vec<Row>, String> {
    let file: FirstVisits = serde_json::from_str(json)
        .map_err(|e| format!("first_visit.json is not the benchmark's schema: {e}"))?;
    let weight = |build: &str| {
        file.weight
            .get(build)
            .copied()
            .ok_or_else(|| format!("first_visit.json has no weight for `{build}`"))
    };
    let (shipped, before) = (weight("shipped")?, weight("as_before")?);
    let mut rows = vec![Row::new(
        format!("the page's wasm + JS over the wire as Chromium asks for them: {SHIPPED}"),
        shipped,
        "B",
        AS_BEFORE,
        before,
        shipped / before,
    )
    .goal(Goal::ValueAtMost(PAGE_BUDGET))];
    let mut networks: Vec<&str> = Vec::new();
    for v in &file.visits {
        if !networks.contains(&v.network.as_str()) {
            networks.push(&v.network);
        }
    }
    if networks.is_empty() {
        return Err("first_visit.json lists no visit".into());
    }
    for network in networks {
        let of = |build: &str| -> BTreeMap<u32, f64> {
            file.visits
                .iter()
                .filter(|v| v.network == network && v.build == build)
                .map(|v| (v.round, v.page_ms))
                .collect()
        };
        let (ours, theirs) = (of("shipped"), of("as_before"));
        let ratios: Vec<f64> = ours
            .iter()
            .filter_map(|(round, ms)| theirs.get(round).map(|b| ms / b))
            .collect();
        if ratios.is_empty() {
            return Err(format!(
                "first_visit.json has no round with both builds on {network}"
            ));
        }
        rows.push(Row::new(
            format!("first visit, navigation to 50th picture drawn, {network}: {SHIPPED}"),
            median(ours.into_values().collect()),
            "ms",
            format!("the same visit: {AS_BEFORE}"),
            median(theirs.into_values().collect()),
            median(ratios),
        ));
    }
    Ok(rows)
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
            | IndexedDbTier::get_many (50) | 900.000 µs | raw gets | 1000.000 µs | 0.90x |\n\
            test result: ok.";
        let rows = tier_rows(log);
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[2].goal, Some(Goal::AtMost(1.0)));
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
        let rows = visit_rows(&[json.to_owned()]).expect("rows");
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[1].ratio, 0.1);
        assert!(rows[1].name.contains("reload") && rows[1].name.contains("local-storage 50"));
        assert_eq!(rows[0].goal, None);
        assert_eq!(rows[1].goal, Some(Goal::ValueAtMost(40.0)));
        assert!(visit_rows(&["[]".to_owned()]).is_err());
        assert!(visit_rows(&[r#"{"visit": 1}"#.to_owned()]).is_err());
        assert!(visit_rows(&[]).is_err());
    }

    #[test]
    fn visit_rows_take_the_median_of_several_journeys() {
        let journey = |first: f64, later: f64| {
            format!(
                r#"[{{"visit": "first", "list_ms": {first}, "tiers": {{"network": 50}}}},
                    {{"visit": "later", "list_ms": {later}, "tiers": {{"indexed_db": 50}}}}]"#
            )
        };
        let runs = [
            journey(900.0, 70.0),
            journey(800.0, 40.0),
            journey(1000.0, 50.0),
        ];
        let rows = visit_rows(&runs).expect("rows");
        assert_eq!((rows[0].value, rows[1].value), (900.0, 50.0));
        assert_eq!(rows[1].baseline_value, 900.0);
        assert_eq!(rows[1].goal, Some(Goal::ValueAtMost(60.0)));
        let other = r#"[{"visit": "first", "list_ms": 1.0, "tiers": {}}]"#.to_owned();
        assert!(
            visit_rows(&[runs[0].clone(), other]).is_err(),
            "different visits"
        );
    }

    #[test]
    fn first_visit_rows_put_each_build_beside_the_previous_one() {
        let visit = |round: u32, network: &str, build: &str, ms: f64| {
            format!(
                r#"{{"round": {round}, "network": "{network}", "build": "{build}", "page_ms": {ms}, "list_ms": 1.0, "wire_bytes": 1}}"#
            )
        };
        let visits = [
            visit(0, "loopback", "shipped", 900.0),
            visit(0, "loopback", "as_before", 1000.0),
            visit(1, "loopback", "as_before", 1200.0),
            visit(1, "loopback", "shipped", 600.0),
            visit(2, "loopback", "shipped", 1000.0),
            visit(2, "loopback", "as_before", 800.0),
            visit(0, "slow", "shipped", 2000.0),
            visit(0, "slow", "as_before", 8000.0),
        ];
        let json = format!(
            r#"{{"weight": {{"shipped": 218742, "as_before": 1521000}}, "visits": [{}]}}"#,
            visits.join(",")
        );
        let rows = first_visit_rows(&json).expect("rows");
        assert_eq!(rows.len(), 3);
        assert_eq!((rows[0].value, rows[0].unit.as_str()), (218_742.0, "B"));
        assert_eq!(rows[0].goal, Some(Goal::ValueAtMost(250_000.0)));
        // Medians of each side, and the median of the per-round ratios
        // (0.9, 0.5, 1.25), not the ratio of the medians.
        assert_eq!((rows[1].value, rows[1].baseline_value), (900.0, 1000.0));
        assert_eq!(rows[1].ratio, 0.9);
        assert!(rows[1].name.contains("loopback") && rows[2].name.contains("slow"));
        assert_eq!(rows[2].ratio, 0.25);
        assert!(first_visit_rows(r#"{"weight": {}, "visits": []}"#).is_err());
    }
}
