//! `cargo xtask chaos [--rounds N]`: the long fault suite. It runs the
//! fault tests of cache-server (Redis failover through Sentinel with a
//! stalled replica, both `SENTINEL FAILOVER` and `kill -9` of the primary;
//! the fleet's churn; the three-instance races with delaying and stalling
//! proxies, each round with a new seed) `N` times (default 5), counts what
//! they report, and writes RELIABILITY.md: faults injected, invalidations
//! confirmed and refused, reads checked, stale and backward reads, race
//! violations. `cargo xtask test` runs each of these tests once.

use std::fmt::Write as _;
use std::process::Command;

use crate::suites::{run_suite_lines, Tally};
use crate::workspace::cargo;

/// What the runs reported, added up.
#[derive(Default)]
struct Counts {
    failovers: u64,
    confirmed: u64,
    refused: u64,
    reads: u64,
    stale: u64,
    backwards: u64,
    races: u64,
    race_ops: u64,
    race_violations: u64,
    race_exempt: u64,
    /// Violations the deliberately broken run found (it must find some).
    mutated_caught: u64,
}

/// The number after `label` in `line` (`"... 5 invalidations Ok"` with
/// label `" invalidations Ok"` reads the number before it).
fn number_before(line: &str, label: &str) -> Option<u64> {
    let at = line.find(label)?;
    line[..at].split_whitespace().last()?.parse().ok()
}

pub(crate) fn chaos(args: &[String]) -> Result<bool, String> {
    let mut rounds: u64 = 5;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--rounds" => {
                rounds = it
                    .next()
                    .and_then(|n| n.parse().ok())
                    .ok_or("--rounds takes a number")?;
            }
            other => return Err(format!("cargo xtask chaos: unknown argument `{other}`")),
        }
    }
    crate::setup::setup()?;
    let mut counts = Counts::default();
    let mut tally = Tally::default();
    let mut failed_rounds = Vec::new();
    let started = std::time::Instant::now();
    for round in 0..rounds {
        println!("\n=== xtask chaos: round {} of {rounds} ===", round + 1);
        let mut cmd = cargo();
        cmd.args([
            "test",
            "-p",
            "cache-server",
            "--features",
            "tags",
            "--test",
            "failover",
            "--test",
            "fleet",
            "--test",
            "race",
            "--",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env("RACE_SEED", format!("{:#x}", 0xc4a0_5000_u64 + round));
        // A failed round's lines count too: its failure is listed below, and
        // what it found (a stale read, a violation) must not vanish with it.
        let (lines, result) = capture(&mut cmd, &mut tally);
        for line in &lines {
            if line.contains("handling Full:") || line.contains("handling FullWithoutEvents:") {
                counts.failovers += 1;
                counts.confirmed += number_before(line, " invalidations Ok").unwrap_or(0);
                counts.refused += number_before(line, " failed").unwrap_or(0);
                counts.reads += number_before(line, " reads").unwrap_or(0);
                counts.stale += number_before(line, " stale").unwrap_or(0);
                counts.backwards += number_before(line, " backwards").unwrap_or(0);
            }
            // tests/race.rs: "<label>: seed 0x.. (replay ..), N operations"
            // and "<label>: N violations (M stale values in Redis), K exempt".
            // The mutated run breaks the fence on purpose: its
            // violations show the check works, and count apart.
            let mutated = line.contains("mutated: ");
            if line.contains(": seed ") && line.ends_with(" operations") && !mutated {
                counts.races += 1;
                counts.race_ops += number_before(line, " operations").unwrap_or(0);
            }
            if line.contains(" violations (") {
                let n = number_before(line, " violations (").unwrap_or(0);
                if mutated {
                    counts.mutated_caught += n;
                } else {
                    counts.race_violations += n;
                    counts.race_exempt += number_before(line, " exempt").unwrap_or(0);
                }
            }
        }
        if let Err(e) = result {
            failed_rounds.push(format!("round {}: {e}", round + 1));
        }
    }
    let mut md = String::new();
    let _ = writeln!(md, "# Reliability\n");
    let _ = writeln!(
        md,
        "Written by `cargo xtask chaos --rounds {rounds}` ({:.0} s). Every number is counted by the \
         tests themselves against real processes on loopback (redis-server, redis-sentinel, \
         proxies that delay, stall or drop links); `cargo xtask test` runs each test once.\n",
        started.elapsed().as_secs_f64()
    );
    let _ = writeln!(md, "| what | count |\n|---|---|");
    for (what, n) in [
        ("failovers injected (`SENTINEL FAILOVER`, `kill -9` of the primary; a cluster's `CLUSTER FAILOVER TAKEOVER`, `kill -9` then `FORCE`), replication stalled", counts.failovers),
        ("invalidations confirmed (`Ok`) across them", counts.confirmed),
        ("invalidations reported incomplete (`WAIT` short while the replica was stalled)", counts.refused),
        ("reads checked after the failovers", counts.reads),
        ("stale reads (older than a confirmed invalidation)", counts.stale),
        ("reads that went back to an older value", counts.backwards),
        ("three-instance races run (delaying and stalling proxies)", counts.races),
        ("race operations", counts.race_ops),
        ("race violations", counts.race_violations),
        ("race reads exempt (an instance whose bus link was down: the documented exception)", counts.race_exempt),
        ("violations the deliberately broken run (fills ignoring stamps) was caught with", counts.mutated_caught),
        ("tests passed", tally.passed),
        ("tests failed", tally.failed),
    ] {
        let _ = writeln!(md, "| {what} | {n} |");
    }
    if !failed_rounds.is_empty() {
        let _ = writeln!(md, "\nFailed rounds:\n");
        for r in &failed_rounds {
            let _ = writeln!(md, "- {r}");
        }
    }
    std::fs::write("RELIABILITY.md", &md).map_err(|e| format!("writing RELIABILITY.md: {e}"))?;
    println!("\n{md}");
    Ok(failed_rounds.is_empty()
        && tally.failed == 0
        && counts.stale == 0
        && counts.backwards == 0
        && counts.race_violations == 0)
}

/// Runs `cmd` like a suite: its output lines, and whether it passed.
fn capture(cmd: &mut Command, tally: &mut Tally) -> (Vec<String>, Result<(), String>) {
    let mut lines = Vec::new();
    let result = run_suite_lines(cmd, tally, |line| lines.push(line.to_owned())).map(|_| ());
    (lines, result)
}
