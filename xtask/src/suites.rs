//! `cargo xtask test`: every suite in turn (fmt, clippy, the publishing
//! checks, native tests, browser tests, the journey), a summary, and the
//! passed/failed/skipped counts added up from every `test result:` line.

use std::env;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use crate::manifest::{members, package_name};
use crate::setup::{browser_env, setup};
use crate::workspace::{cargo, WASM_TARGET};

/// Members with browser tests: by convention, those with a `webdriver.json`
/// (the Chromium options wasm-bindgen-test-runner reads).
fn browser_tested() -> Vec<String> {
    members()
        .into_iter()
        .filter(|m| Path::new(m).join("webdriver.json").is_file())
        .filter_map(|m| package_name(&m))
        .collect()
}

#[derive(Default)]
pub(crate) struct Tally {
    pub(crate) passed: u64,
    pub(crate) failed: u64,
    ignored: u64,
}

/// Runs a command, echoing its output, and adds up `test result:` lines.
fn run_suite(cmd: &mut Command, tally: &mut Tally) -> Result<(), String> {
    run_suite_lines(cmd, tally, |_| {})
}

/// [`run_suite`], also handing each line of output to `each`.
pub(crate) fn run_suite_lines(
    cmd: &mut Command,
    tally: &mut Tally,
    mut each: impl FnMut(&str),
) -> Result<(), String> {
    cmd.stdout(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| format!("could not start: {e}"))?;
    if let Some(out) = child.stdout.take() {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            println!("{line}");
            each(&line);
            if let Some(rest) = line.trim().strip_prefix("test result: ") {
                for part in rest.split([';', '.']) {
                    let mut words = part.split_whitespace();
                    if let (Some(n), Some(what)) = (words.next(), words.next()) {
                        let n: u64 = n.parse().unwrap_or(0);
                        match what {
                            "passed" => tally.passed += n,
                            "failed" => tally.failed += n,
                            "ignored" => tally.ignored += n,
                            _ => {}
                        }
                    }
                }
            }
        }
    }
    let status = child.wait().map_err(|e| e.to_string())?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("exited with {status}"))
    }
}

/// The tags features (off by default): the full suites build with them, so
/// every tag test runs; a second clippy and the crates' unit tests check the
/// default build.
const TAGS: &str =
    "cache-core/tags,cache-server/tags,cache-server/tls,cache-browser/tags,benches/tags";

pub(crate) fn test(args: &[String]) -> Result<bool, String> {
    if let Some(extra) = args.first() {
        return Err(format!(
            "`cargo xtask test` takes no arguments (got `{extra}`)"
        ));
    }
    setup()?;
    let browser = browser_tested();
    if browser.is_empty() {
        return Err(
            "no crate has browser tests (no webdriver.json found); the wasm suite cannot run"
                .into(),
        );
    }
    let mut wasm_pkgs: Vec<String> = Vec::new();
    for p in &browser {
        wasm_pkgs.push("-p".into());
        wasm_pkgs.push(p.clone());
    }

    let mut suites: Vec<(String, Command)> = Vec::new();
    let mut fmt = cargo();
    fmt.args(["fmt", "--all", "--", "--check"]);
    suites.push(("rustfmt".into(), fmt));
    // Each build linted twice: with the tags features (every tag test is
    // compiled) and as users get it by default, without them.
    let native_targets: Vec<String> = vec!["--workspace".into()];
    let mut wasm_targets: Vec<String> = vec!["--target".into(), WASM_TARGET.into()];
    wasm_targets.extend(wasm_pkgs.iter().cloned());
    for (build, targets, tags) in [
        ("native".to_owned(), &native_targets, TAGS),
        (
            format!("wasm32: {}", browser.join(", ")),
            &wasm_targets,
            "cache-browser/tags",
        ),
    ] {
        for with_tags in [true, false] {
            let mut clippy = cargo();
            clippy.args(["clippy", "--all-targets"]).args(targets);
            if with_tags {
                clippy.args(["--features", tags]);
            }
            clippy.args(["--", "-D", "warnings"]);
            let name = if with_tags {
                format!("clippy ({build})")
            } else {
                format!("clippy ({build}, without tags)")
            };
            suites.push((name, clippy));
        }
    }
    // The publishing checks, each through its own subcommand (as the journey).
    let me = env::current_exe().map_err(|e| format!("cannot find the xtask binary: {e}"))?;
    for (task, name) in [
        (
            "msrv",
            "MSRV: rust-version = pinned toolchain, stated in READMEs",
        ),
        ("docs", "docs as docs.rs builds them (warnings denied)"),
        ("package", "cargo package of every library crate (verified)"),
        (
            "examples",
            "library crates' examples (run; browser one built)",
        ),
    ] {
        let mut cmd = Command::new(&me);
        cmd.arg(task);
        suites.push((name.into(), cmd));
    }
    let mut native = cargo();
    native.args(["test", "--workspace", "--no-fail-fast", "--features", TAGS]);
    suites.push((
        "native tests (incl. doctests, real Redis and S3)".into(),
        native,
    ));
    // What only a build without tags does: an entry without the field, and
    // tiers refusing entries another build stored with tags.
    let mut no_tags = cargo();
    no_tags.args([
        "test",
        "--no-fail-fast",
        "-p",
        "cache-core",
        "-p",
        "cache-server",
        "-p",
        "cache-browser",
        "--lib",
    ]);
    suites.push(("native unit tests without the tags feature".into(), no_tags));
    let mut wasm = cargo();
    // Test targets only: doctests run natively above (on wasm32 they would need
    // every example's dev-dependencies to build for the browser).
    wasm.args(["test", "--target", WASM_TARGET, "--no-fail-fast", "--tests"])
        .args(&wasm_pkgs)
        .args(["--features", "cache-browser/tags"]);
    browser_env(&mut wasm);
    // The runner serves pages cross-origin isolated (COEP), which blocks the real
    // cross-origin fetch the Cache API tier's opaque-response test needs.
    wasm.env("WASM_BINDGEN_TEST_NO_ORIGIN_ISOLATION", "1");
    suites.push((
        format!(
            "browser tests in headless Chromium ({})",
            browser.join(", ")
        ),
        wasm,
    ));

    // Last: the end-to-end journey (examples/), which builds the web app first.
    let mut journey = Command::new(&me);
    journey.arg("journey");
    suites.push(("end-to-end journey in headless Chromium".into(), journey));

    let mut tally = Tally::default();
    let mut outcomes: Vec<(String, Result<(), String>, f64)> = Vec::new();
    for (name, mut cmd) in suites {
        println!("\n=== xtask: {name} ===");
        let started = Instant::now();
        let result = run_suite(&mut cmd, &mut tally);
        outcomes.push((name, result, started.elapsed().as_secs_f64()));
    }

    println!("\n=== xtask test: summary ===");
    let mut ok = true;
    for (name, result, secs) in &outcomes {
        match result {
            Ok(()) => println!("  ok      {name} ({secs:.0} s)"),
            Err(e) => {
                ok = false;
                println!("  FAILED  {name} ({secs:.0} s): {e}");
            }
        }
    }
    if tally.passed == 0 {
        ok = false;
        println!("  FAILED  no test ran");
    }
    println!(
        "xtask: {} passed, {} failed, {} skipped",
        tally.passed, tally.failed, tally.ignored
    );
    Ok(ok)
}
