//! `cargo xtask bench [--quick] [--only SUITE,...]`: runs every benchmark suite,
//! then rewrites BENCHMARKS.md's generated tables from that run's results.
//!
//! The suites are the ones `bench-report suites` lists (the benches crate's
//! `doc::SUITES`): each criterion suite writes
//! `<target dir>/bench-results/<suite>.json`; the browser suite runs the
//! browser benchmark in headless Chromium and the end-to-end journey (3
//! times with `--quick`, 5 without: each visit's row is its median), and
//! `bench-report browser` turns their output into `browser.json`. Then
//! `bench-report render` rewrites the tables between BENCHMARKS.md's
//! `<!-- bench:NAME -->` markers, with the machine and the date.
//!
//! `--quick` sets `BENCH_QUICK=1`: the suites run fewer rounds and shorter
//! criterion measurements (same tables, wider error; under ten minutes on
//! two cores). A suite that fails is reported and keeps its old table; the
//! command then fails.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use crate::demo::{build_web_as, AS_BEFORE, SHIPPED};
use crate::journey::journey;
use crate::setup::{browser_env, setup};
use crate::workspace::{cargo, run_visible, target_dir, WASM_TARGET};

/// `cargo` without the package variables `cargo run` gave this process
/// (`CARGO_PKG_NAME=xtask`, `CARGO_MANIFEST_DIR`, ...): build scripts such as
/// ring's rerun when they change, so keeping them would rebuild those crates
/// on every switch between `cargo xtask bench` and a plain `cargo bench`.
fn clean_cargo() -> Command {
    let mut cmd = cargo();
    for (name, _) in env::vars_os() {
        let name = name.to_string_lossy();
        if name.starts_with("CARGO_PKG_")
            || [
                "CARGO_MANIFEST_DIR",
                "CARGO_MANIFEST_PATH",
                "CARGO_MANIFEST_LINKS",
                "CARGO_CRATE_NAME",
                "CARGO_BIN_NAME",
                "CARGO_PRIMARY_PACKAGE",
            ]
            .contains(&name.as_ref())
        {
            cmd.env_remove(name.as_ref());
        }
    }
    cmd
}

/// The generator binary's arguments, run through cargo in release mode.
fn bench_report(args: &[&str]) -> Command {
    let mut cmd = clean_cargo();
    cmd.args([
        "run",
        "--quiet",
        "--release",
        "-p",
        "benches",
        "--bin",
        "bench-report",
        "--",
    ])
    .args(args);
    cmd
}

/// The bench targets built with the `tags` feature (they measure tags); the
/// others, the peers suite among them, measure the default build.
const WITH_TAGS: &[&str] = &["chain_hit", "redis_tier"];

/// `(suite, criterion bench target or None)` from `bench-report suites`.
fn suites() -> Result<Vec<(String, Option<String>)>, String> {
    let out = bench_report(&["suites"])
        .output()
        .map_err(|e| format!("cannot run bench-report: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "bench-report suites failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            let name = words.next()?.to_owned();
            let bench = words.next().filter(|b| *b != "-").map(str::to_owned);
            Some((name, bench))
        })
        .collect())
}

/// Runs `cmd`, copying its stdout to the terminal and to `log`.
fn run_logged(what: &str, cmd: &mut Command, log: &Path) -> Result<(), String> {
    println!("xtask: {what}");
    let out = cmd
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| format!("`{what}` could not start: {e}"))?;
    print!("{}", String::from_utf8_lossy(&out.stdout));
    fs::write(log, &out.stdout).map_err(|e| format!("cannot write {}: {e}", log.display()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("`{what}` failed ({})", out.status))
    }
}

/// The browser suite: the tiers in headless Chromium beside plain-JS
/// baselines, then the journey's visits (`<target dir>/journey/visits.json`),
/// then the first visit of the shipped web app beside the app built as before
/// (`<target dir>/journey/first_visit.json`). Both files must be written by
/// this run: a missing one fails the suite.
fn browser_suite(results: &Path, quick: bool) -> Result<(), String> {
    let log = results.join("browser-bench.log");
    let mut bench = clean_cargo();
    bench.args([
        "test",
        "--release",
        "--target",
        WASM_TARGET,
        "-p",
        "cache-browser",
        "--features",
        "browser-bench",
        "--test",
        "bench",
        "--",
        "--nocapture",
    ]);
    // Without the isolation switch: isolation off makes Chromium coarsen
    // `performance.now()` to 100 µs.
    browser_env(&mut bench).env_remove("WASM_BINDGEN_TEST_NO_ORIGIN_ISOLATION");
    run_logged(
        "browser benchmark in headless Chromium (cache-browser, --release)",
        &mut bench,
        &log,
    )?;

    // One journey's visits swing by half their time between runs on a
    // shared machine: the table takes each visit's median over several.
    let visits = target_dir().join("journey").join("visits.json");
    let journeys = if quick { 3 } else { 5 };
    let mut kept = Vec::with_capacity(journeys);
    for run in 1..=journeys {
        if visits.exists() {
            fs::remove_file(&visits)
                .map_err(|e| format!("cannot remove the old {}: {e}", visits.display()))?;
        }
        println!("xtask: journey {run} of {journeys}");
        if !journey()? {
            return Err("the journey failed".into());
        }
        if !visits.is_file() {
            return Err(format!(
                "the journey passed but wrote no {}: the visits table cannot be made",
                visits.display()
            ));
        }
        let copy = results.join(format!("visits-{run}.json"));
        fs::copy(&visits, &copy).map_err(|e| {
            format!(
                "cannot copy {} to {}: {e}",
                visits.display(),
                copy.display()
            )
        })?;
        kept.push(path_arg(&copy));
    }

    // The first visit beside the previous build's: both builds served, each
    // visited in turn (examples/profile-server/tests/first_visit.rs).
    let first_visits = target_dir().join("journey").join("first_visit.json");
    if first_visits.exists() {
        fs::remove_file(&first_visits)
            .map_err(|e| format!("cannot remove the old {}: {e}", first_visits.display()))?;
    }
    let shipped = build_web_as(SHIPPED)?;
    let before = build_web_as(AS_BEFORE)?;
    let mut first = clean_cargo();
    first
        .args([
            "test",
            "-p",
            "profile-server",
            "--features",
            "journey",
            "--test",
            "first_visit",
            "--",
            "--nocapture",
        ])
        .env("PROFILE_WEB_DIR", &shipped)
        .env("PROFILE_WEB_BASELINE_DIR", &before);
    if quick {
        first.env("BENCH_QUICK", "1");
    } else {
        first.env_remove("BENCH_QUICK");
    }
    run_visible(
        "first visits of the shipped build and the build as before (profile-server, --test first_visit)",
        &mut first,
    )?;
    if !first_visits.is_file() {
        return Err(format!(
            "the first-visit benchmark passed but wrote no {}",
            first_visits.display()
        ));
    }
    let (log, results) = (path_arg(&log), path_arg(results));
    let first_visits = path_arg(&first_visits);
    let mut args = vec!["browser", "--log", &log];
    for visits in &kept {
        args.extend(["--visits", visits.as_str()]);
    }
    args.extend(["--first-visit", &first_visits, "--results", &results]);
    let mut report = bench_report(&args);
    // The results file records whether the run was quick (its first visits
    // had fewer rounds), as every other suite's does.
    if quick {
        report.env("BENCH_QUICK", "1");
    } else {
        report.env_remove("BENCH_QUICK");
    }
    run_visible("bench-report browser", &mut report)
}

fn path_arg(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// `cargo xtask bench [--quick] [--only SUITE,...]`.
pub(crate) fn bench(args: &[String]) -> Result<bool, String> {
    let mut quick = false;
    let mut only: Option<Vec<String>> = None;
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        match arg.as_str() {
            "--quick" => quick = true,
            "--only" => {
                let list = rest.next().ok_or("--only needs a list of suites")?;
                only = Some(list.split(',').map(str::to_owned).collect());
            }
            other => {
                return Err(format!(
                    "`cargo xtask bench` takes --quick and --only SUITE,... (got `{other}`)"
                ))
            }
        }
    }
    setup()?;
    let all = suites()?;
    if let Some(only) = &only {
        if let Some(unknown) = only.iter().find(|o| !all.iter().any(|(n, _)| n == *o)) {
            let names: Vec<&str> = all.iter().map(|(n, _)| n.as_str()).collect();
            return Err(format!(
                "no suite `{unknown}` (suites: {})",
                names.join(", ")
            ));
        }
    }
    let results: PathBuf = env::current_dir()
        .map_err(|e| e.to_string())?
        .join(target_dir())
        .join("bench-results");
    // Only this run's results may reach the tables.
    if results.exists() {
        fs::remove_dir_all(&results)
            .map_err(|e| format!("cannot clear {}: {e}", results.display()))?;
    }
    fs::create_dir_all(&results)
        .map_err(|e| format!("cannot create {}: {e}", results.display()))?;

    let mut outcomes: Vec<(String, Result<(), String>, f64)> = Vec::new();
    for (name, target) in &all {
        if only.as_ref().is_some_and(|o| !o.contains(name)) {
            continue;
        }
        println!("\n=== xtask bench: {name} ===");
        let started = Instant::now();
        let outcome = match target {
            Some(target) => {
                let mut cmd = clean_cargo();
                cmd.args(["bench", "-p", "benches", "--bench", target]);
                if WITH_TAGS.contains(&target.as_str()) {
                    cmd.args(["--features", "tags"]);
                }
                cmd.env("BENCH_RESULTS_DIR", &results);
                if quick {
                    cmd.env("BENCH_QUICK", "1");
                } else {
                    cmd.env_remove("BENCH_QUICK");
                }
                run_visible(
                    &format!("cargo bench -p benches --bench {target}"),
                    &mut cmd,
                )
            }
            None => browser_suite(&results, quick),
        }
        .and_then(|()| {
            if results.join(format!("{name}.json")).is_file() {
                Ok(())
            } else {
                Err(format!("it wrote no {name}.json"))
            }
        });
        outcomes.push((name.clone(), outcome, started.elapsed().as_secs_f64()));
    }

    println!("\n=== xtask bench: BENCHMARKS.md ===");
    let rendered = run_visible(
        "bench-report render",
        &mut bench_report(&[
            "render",
            "--doc",
            "BENCHMARKS.md",
            "--results",
            &path_arg(&results),
        ]),
    );

    println!("\n=== xtask bench: summary ===");
    let mut ok = rendered.is_ok();
    for (name, outcome, secs) in &outcomes {
        match outcome {
            Ok(()) => println!("  ok      {name} ({secs:.0} s)"),
            Err(e) => {
                ok = false;
                println!("  FAILED  {name} ({secs:.0} s): {e}");
            }
        }
    }
    if let Err(e) = rendered {
        println!("  FAILED  BENCHMARKS.md: {e}");
    }
    Ok(ok)
}
