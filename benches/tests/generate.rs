//! `cargo xtask bench`'s plumbing without a timed run: every suite of issue 12
//! exists, and the generator fills every table of the real BENCHMARKS.md from
//! tiny synthetic result files (and from the browser suite's raw outputs).
#![cfg(not(target_family = "wasm"))]

use std::path::{Path, PathBuf};
use std::process::Command;

use benches::doc::{generate, markers, Machine, SUITES};
use benches::results::{Goal, Row, SuiteResults};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn benchmarks_md() -> String {
    std::fs::read_to_string(workspace().join("BENCHMARKS.md")).expect("BENCHMARKS.md")
}

fn machine() -> Machine {
    Machine {
        cores: 2,
        cpu: "Synthetic CPU".into(),
        rustc: "rustc 1.95.0 (synthetic)".into(),
        load: "0.10 0.20 0.30".into(),
    }
}

/// A synthetic row named after its table.
fn synthetic_row(table: &str) -> Row {
    Row::new(
        format!("synthetic row of {table}"),
        12.5,
        "ns",
        "synthetic baseline",
        10.0,
        1.25,
    )
    .goal(Goal::AtMost(1.5))
}

/// One synthetic result file per suite, with a row named after the suite and
/// one named after each of its extra tables.
fn synthetic(dir: &Path) {
    for suite in SUITES {
        let mut results = SuiteResults::new(suite.name, "synthetic");
        results.unix_time = 1_796_013_000;
        results.push(synthetic_row(suite.name));
        for table in suite.tables {
            results.push(synthetic_row(table).in_table(table));
            results.table_method(table, format!("synthetic method of {table}"));
        }
        results.write_to(dir).expect("write");
    }
}

/// Every table a suite fills: its own and its extra ones.
fn tables_of(suite: &benches::doc::Suite) -> Vec<&'static str> {
    std::iter::once(suite.name)
        .chain(suite.tables.iter().copied())
        .collect()
}

/// The text between a block's markers.
fn block<'a>(doc: &'a str, name: &str) -> &'a str {
    let open = format!("<!-- bench:{name} -->");
    let start = doc.find(&open).expect("open marker") + open.len();
    let end = doc[start..]
        .find(&format!("<!-- /bench:{name} -->"))
        .expect("close marker");
    &doc[start..start + end]
}

#[test]
fn every_suite_of_the_issue_exists() {
    // Issue 12, part 2's list, in its order.
    let issue = [
        "chain",
        "peers",
        "redis",
        "presign",
        "stampede",
        "friend_list",
        "http",
        "browser",
    ];
    let names: Vec<&str> = SUITES.iter().map(|s| s.name).collect();
    assert_eq!(names, issue);
    let manifest = std::fs::read_to_string(workspace().join("benches/Cargo.toml")).expect("toml");
    for suite in SUITES {
        match suite.bench {
            Some(bench) => {
                let file = workspace().join(format!("benches/benches/{bench}.rs"));
                let source = std::fs::read_to_string(&file)
                    .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
                assert!(
                    manifest.contains(&format!("name = \"{bench}\"")),
                    "benches/Cargo.toml has no [[bench]] {bench}"
                );
                for table in tables_of(suite) {
                    assert!(
                        source.contains(&format!("\"{table}\"")),
                        "{bench}.rs does not write results for table {table}",
                    );
                }
            }
            None => {
                assert_eq!(suite.name, "browser");
                assert!(workspace().join("cache-browser/tests/bench.rs").is_file());
                let xtask = std::fs::read_to_string(workspace().join("xtask/src/bench.rs"))
                    .expect("xtask/src/bench.rs");
                assert!(xtask.contains("journey") && xtask.contains("visits.json"));
            }
        }
    }
    let mut blocks = markers(&benchmarks_md());
    blocks.sort();
    let mut expected: Vec<String> = SUITES
        .iter()
        .flat_map(tables_of)
        .map(str::to_owned)
        .collect();
    expected.push("machine".into());
    expected.sort();
    assert_eq!(
        blocks, expected,
        "BENCHMARKS.md has one block per suite and extra table"
    );
    // Issue 13's tables: compression in the Redis suite, features that must
    // cost a hit nothing when off in the chain suite.
    let extra = |name: &str| SUITES.iter().find(|s| s.name == name).expect(name).tables;
    assert_eq!(extra("redis"), ["redis_compression"]);
    assert_eq!(extra("chain"), ["chain_when_off"]);
}

#[test]
fn the_generator_fills_every_table_of_benchmarks_md() {
    let dir = tempfile::tempdir().expect("tempdir");
    synthetic(dir.path());
    let doc = benchmarks_md();
    let out = generate(&doc, dir.path(), &machine(), 1_796_013_000).expect("generate");
    assert!(out.missing.is_empty(), "missing: {:?}", out.missing);
    assert_eq!(out.updated.len(), SUITES.len());
    for suite in SUITES {
        for name in tables_of(suite) {
            let table = block(&out.doc, name);
            assert!(
                table.contains(&format!(
                    "| synthetic row of {name} | 12.5 ns | synthetic baseline | 10.0 ns | 1.25× | ≤ 1.50×: met |"
                )),
                "{name}'s table: {table}"
            );
            assert!(table.contains("2026-11-30 04:30 UTC"));
            // Each table holds its own rows only.
            assert_eq!(table.matches("| synthetic row of ").count(), 1, "{table}");
            if name != suite.name {
                assert!(table.contains(&format!("synthetic method of {name}")));
            }
        }
    }
    let machine_block = block(&out.doc, "machine");
    assert!(machine_block.contains("| cores | 2 |") && machine_block.contains("Synthetic CPU"));
    assert!(
        machine_block.contains("rustc 1.95.0") && machine_block.contains("2026-11-30 04:30 UTC")
    );
    // Hand-written text outside the markers is kept, and a second run is stable.
    let outside = |d: &str| {
        let mut d = d.to_owned();
        for name in markers(&d.clone()) {
            d = benches::doc::splice(&d, &name, "").expect("splice");
        }
        d
    };
    assert_eq!(outside(&out.doc), outside(&doc));
    let again = generate(&out.doc, dir.path(), &machine(), 1_796_013_000).expect("again");
    assert_eq!(again.doc, out.doc);
}

#[test]
fn a_suite_that_leaves_an_extra_table_empty_fails_the_render() {
    let dir = tempfile::tempdir().expect("tempdir");
    synthetic(dir.path());
    let mut redis = SuiteResults::read_from(dir.path(), "redis")
        .expect("read")
        .expect("redis.json");
    redis.rows.retain(|r| r.table.is_none());
    redis.write_to(dir.path()).expect("write");
    let e = generate(&benchmarks_md(), dir.path(), &machine(), 0).expect_err("empty table");
    assert!(e.contains("redis_compression"), "{e}");

    // A row for a table the suite does not have fails too.
    redis.push(synthetic_row("nowhere").in_table("nowhere"));
    redis.write_to(dir.path()).expect("write");
    let e = generate(&benchmarks_md(), dir.path(), &machine(), 0).expect_err("stray table");
    assert!(e.contains("nowhere"), "{e}");
}

#[test]
fn a_suite_without_results_keeps_its_old_table() {
    let dir = tempfile::tempdir().expect("tempdir");
    synthetic(dir.path());
    std::fs::remove_file(dir.path().join("http.json")).expect("remove");
    let doc = benchmarks_md();
    let out = generate(&doc, dir.path(), &machine(), 0).expect("generate");
    assert_eq!(out.missing, ["http"]);
    assert_eq!(block(&out.doc, "http"), block(&doc, "http"));
    // Extra tables too.
    std::fs::remove_file(dir.path().join("redis.json")).expect("remove");
    let out = generate(&doc, dir.path(), &machine(), 0).expect("generate");
    assert_eq!(out.missing, ["redis", "http"]);
    assert_eq!(
        block(&out.doc, "redis_compression"),
        block(&doc, "redis_compression")
    );
    assert!(generate("no markers here", dir.path(), &machine(), 0).is_err());
}

fn bench_report(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_bench-report"))
        .args(args)
        .output()
        .expect("bench-report")
}

#[test]
fn the_browser_suite_is_made_from_the_benchmark_log_and_the_visits() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("browser-bench.log");
    std::fs::write(
        &log,
        "| tier | median hit | baseline | baseline median | ratio |\n|---|---|---|---|---|\n\
         | IndexedDbTier (20 KB image) | 585.000 µs | raw IndexedDB `get` (one readonly tx) | 417.000 µs | 1.40x |\n",
    )
    .expect("log");
    let visits = dir.path().join("visits.json");
    std::fs::write(
        &visits,
        r#"[{"visit": "first", "list_ms": 180.0, "tiers": {"signer": 50}},
            {"visit": "offline", "list_ms": 9.0, "tiers": {"local-storage": 50}}]"#,
    )
    .expect("visits");
    let first_visit = dir.path().join("first_visit.json");
    std::fs::write(
        &first_visit,
        r#"{"weight": {"shipped": 240000, "as_before": 1500000}, "visits": [
            {"round": 0, "network": "loopback", "build": "shipped", "page_ms": 900.0},
            {"round": 0, "network": "loopback", "build": "as_before", "page_ms": 1000.0}]}"#,
    )
    .expect("first visit");
    let results = dir.path().join("results");
    let s = |p: &Path| p.to_string_lossy().into_owned();
    let browser_report = |visits: &Path, first_visit: &Path| {
        bench_report(&[
            "browser",
            "--log",
            &s(&log),
            "--visits",
            &s(visits),
            "--first-visit",
            &s(first_visit),
            "--results",
            &s(&results),
        ])
    };
    let out = browser_report(&visits, &first_visit);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let browser = SuiteResults::read_from(&results, "browser")
        .expect("read")
        .expect("browser.json");
    let names: Vec<&str> = browser.rows.iter().map(|r| r.name.as_str()).collect();
    // The tier row, the two visits, then the page's weight and its first
    // visit beside the previous build.
    assert_eq!(names.len(), 5, "{names:?}");
    assert_eq!(browser.rows[0].ratio, 1.40);
    assert!(names[2].contains("offline") && browser.rows[2].ratio == 0.05);
    assert_eq!(browser.rows[3].value, 240_000.0, "{names:?}");
    assert_eq!(browser.rows[4].ratio, 0.9, "{names:?}");

    // No visits file, or no first-visit file: the suite fails, saying why.
    for (visits, first_visit) in [
        (dir.path().join("absent.json"), first_visit.clone()),
        (visits.clone(), dir.path().join("absent.json")),
    ] {
        let out = browser_report(&visits, &first_visit);
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("wrote no"));
    }
}
