//! Writes BENCHMARKS.md's tables from the suites' results, and turns the browser
//! suite's raw output into results. `cargo xtask bench` runs it; by hand:
//!
//! ```text
//! bench-report suites          (one line each: name, criterion bench target or -)
//! bench-report render [--doc BENCHMARKS.md] [--results DIR]
//! bench-report browser --log FILE --visits FILE [--visits FILE ...] --first-visit FILE [--results DIR]
//! ```
//!
//! `--visits` once per journey run: each visit's row is the median over them.
//!
//! `DIR` defaults to `$BENCH_RESULTS_DIR`, else `$CARGO_TARGET_DIR/bench-results`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use benches::doc::{generate, Machine};
use benches::results::{results_dir, SuiteResults};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .map(PathBuf::from)
    };
    let dir = flag("--results").unwrap_or_else(results_dir);
    let outcome = match args.first().map(String::as_str) {
        Some("suites") => {
            for suite in benches::doc::SUITES {
                println!("{} {}", suite.name, suite.bench.unwrap_or("-"));
            }
            Ok(())
        }
        Some("render") => render(&flag("--doc").unwrap_or_else(|| "BENCHMARKS.md".into()), &dir),
        Some("browser") => {
            let visits: Vec<PathBuf> = args
                .windows(2)
                .filter(|w| w[0] == "--visits")
                .map(|w| PathBuf::from(&w[1]))
                .collect();
            match (flag("--log"), flag("--first-visit")) {
                (Some(log), Some(first)) if !visits.is_empty() => {
                    browser(&log, &visits, &first, &dir)
                }
                _ => Err(
                    "browser needs --log FILE, --visits FILE (once per journey) and --first-visit FILE"
                        .into(),
                ),
            }
        }
        _ => Err("usage: bench-report suites | render [--doc FILE] [--results DIR] | browser --log FILE --visits FILE --first-visit FILE [--results DIR]".into()),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench-report: {e}");
            ExitCode::FAILURE
        }
    }
}

fn render(doc_path: &Path, dir: &Path) -> Result<(), String> {
    let doc = std::fs::read_to_string(doc_path)
        .map_err(|e| format!("cannot read {}: {e}", doc_path.display()))?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let generated = generate(&doc, dir, &Machine::detect(), now)?;
    std::fs::write(doc_path, &generated.doc)
        .map_err(|e| format!("cannot write {}: {e}", doc_path.display()))?;
    println!(
        "bench-report: {} rewritten from {}: {}",
        doc_path.display(),
        dir.display(),
        generated.updated.join(", ")
    );
    if !generated.missing.is_empty() {
        println!(
            "bench-report: no results for {} (their old tables were kept)",
            generated.missing.join(", ")
        );
    }
    Ok(())
}

fn browser(log: &Path, visits: &[PathBuf], first_visit: &Path, dir: &Path) -> Result<(), String> {
    let log_text =
        std::fs::read_to_string(log).map_err(|e| format!("cannot read {}: {e}", log.display()))?;
    let journeys = visits
        .iter()
        .map(|file| {
            std::fs::read_to_string(file).map_err(|e| {
                format!(
                    "the journey wrote no {} ({e}): the browser suite's visits table cannot be made",
                    file.display()
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let first_text = std::fs::read_to_string(first_visit).map_err(|e| {
        format!(
            "the first-visit benchmark wrote no {} ({e}): its rows cannot be made",
            first_visit.display()
        )
    })?;
    let tiers = benches::browser::tier_rows(&log_text);
    if tiers.is_empty() {
        return Err(format!(
            "{} holds no row of the browser benchmark",
            log.display()
        ));
    }
    let mut results = SuiteResults::new(
        "browser",
        format!(
            "tiers: medians of 100 batch means per side, alternating with the baseline, headless Chromium; visits: the journey's 50-picture list, median of {} journey{}; first visits: medians over rounds, each round one visit of each build in a new Chromium, in alternating order",
            journeys.len(),
            if journeys.len() == 1 { "" } else { "s" }
        ),
    );
    for row in tiers
        .into_iter()
        .chain(benches::browser::visit_rows(&journeys)?)
        .chain(benches::browser::first_visit_rows(&first_text)?)
    {
        results.push(row);
    }
    print!("{}", results.to_text());
    let path = results.write_to(dir)?;
    println!("  -> {}", path.display());
    Ok(())
}
