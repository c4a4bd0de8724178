//! The BENCHMARKS.md generator: the suites `cargo xtask bench` runs, and the
//! rewriting of each generated table between its markers,
//! `<!-- bench:NAME -->` … `<!-- /bench:NAME -->`, from the suites' JSON results.
//! Text outside the markers is left as written.

use std::fmt::Write as _;
use std::path::Path;

use crate::results::{format_value, significant, SuiteResults};

/// One suite of `cargo xtask bench`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Suite {
    /// The name of its results file and of its BENCHMARKS.md marker.
    pub name: &'static str,
    /// The criterion bench target in `benches/benches/` that produces it, or
    /// `None` for the browser suite, which xtask runs in headless Chromium.
    pub bench: Option<&'static str>,
    /// What the suite measures (the wording, short).
    pub what: &'static str,
    /// Its extra tables, each a BENCHMARKS.md block of its own
    /// (`<!-- bench:TABLE -->`), filled from the rows marked
    /// [`Row::in_table`](crate::results::Row::in_table); the suite's other
    /// rows go to the block named after the suite.
    pub tables: &'static [&'static str],
}

/// Every suite of issue 12, in the order BENCHMARKS.md shows them.
pub const SUITES: &[Suite] = &[
    Suite {
        name: "chain",
        bench: Some("chain_hit"),
        what: "chain overhead: tier-0 hit vs direct get, memory and moka tiers, observer off and monitor on; refresh-ahead and jitter configured but idle vs a plain chain",
        tables: &["chain_when_off"],
    },
    Suite {
        name: "peers",
        bench: Some("peers"),
        what: "the in-process hit, one and two threads, and memory per entry, beside quick_cache, moka and Mutex<HashMap>",
        tables: &[],
    },
    Suite {
        name: "redis",
        bench: Some("redis_tier"),
        what: "RedisTier get, get_many(50) and a fenced fill vs raw fred GET / MGET / SET; a 20 KB value with and without LZ4 compression",
        tables: &["redis_compression"],
    },
    Suite {
        name: "presign",
        bench: Some("presign"),
        what: "our signer vs rusty-s3 vs object_store's signer, one URL and 50",
        tables: &[],
    },
    Suite {
        name: "stampede",
        bench: Some("stampede"),
        what: "1,000 concurrent cold gets of one key: origin calls and total time, chain vs naive read-through",
        tables: &[],
    },
    Suite {
        name: "friend_list",
        bench: Some("friend_list"),
        what: "50 avatar URLs through PresignedUrls (cold, Redis-warm, warm) vs 50 sequential uncached presign + store round trips",
        tables: &[],
    },
    Suite {
        name: "http",
        bench: Some("http"),
        what: "the example server's avatar GET and batch of 50 under fixed concurrency vs its health route, warm vs signed afresh",
        tables: &[],
    },
    Suite {
        name: "browser",
        bench: None,
        what: "the browser tiers in headless Chromium beside plain-JS baselines, and the page's 50-picture list per visit",
        tables: &[],
    },
];

/// The machine a run was measured on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Machine {
    /// Logical cores available to the process.
    pub cores: usize,
    /// The CPU model (from /proc/cpuinfo).
    pub cpu: String,
    /// `rustc --version`.
    pub rustc: String,
    /// /proc/loadavg's three load averages when the tables were written.
    pub load: String,
}

impl Machine {
    /// Reads this machine's description.
    pub fn detect() -> Self {
        let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|info| {
                info.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, m)| m.trim().to_owned())
            })
            .unwrap_or_else(|| "unknown CPU".to_owned());
        let rustc =
            std::process::Command::new(std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into()))
                .arg("--version")
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
                .unwrap_or_else(|_| "unknown rustc".to_owned());
        let load = std::fs::read_to_string("/proc/loadavg")
            .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
            .unwrap_or_else(|_| "unknown".to_owned());
        Machine {
            cores,
            cpu,
            rustc,
            load,
        }
    }
}

/// `YYYY-MM-DD HH:MM UTC` for seconds since the Unix epoch.
pub fn utc(unix: u64) -> String {
    // Days to civil date (Howard Hinnant's algorithm).
    let days = (unix / 86_400) as i64;
    let secs = unix % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02} UTC",
        secs / 3_600,
        secs % 3_600 / 60
    )
}

/// The machine block: cores, CPU, rustc, date, mode and load.
pub fn render_machine(machine: &Machine, unix: u64, quick: bool) -> String {
    format!(
        "| machine | |\n|---|---|\n| cores | {} |\n| CPU | {} |\n| rustc | {} |\n| tables written | {} |\n| mode | {} |\n| load average when written | {} |\n",
        machine.cores,
        machine.cpu,
        machine.rustc,
        utc(unix),
        if quick {
            "`--quick` (fewer rounds, shorter measurements: wider error)"
        } else {
            "full"
        },
        machine.load,
    )
}

/// One suite's main table, with the date and method under it.
pub fn render_table(results: &SuiteResults) -> String {
    render_rows(results, None)
}

/// The table of `results`' rows in `table` (`None`: its main table), with the
/// date and that table's method under it.
pub fn render_rows(results: &SuiteResults, table: Option<&str>) -> String {
    let mut out = String::from(
        "| measured | result | baseline (same run) | baseline result | ratio | goal |\n|---|---|---|---|---|---|\n",
    );
    for r in results.rows.iter().filter(|r| r.table.as_deref() == table) {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {}× | {} |",
            cell(&r.name),
            format_value(r.value, &r.unit),
            cell(&r.baseline),
            format_value(r.baseline_value, &r.unit),
            significant(r.ratio),
            r.goal
                .map(|g| g.describe(r.value, &r.unit, r.ratio))
                .unwrap_or_default(),
        );
    }
    let _ = writeln!(
        out,
        "\n_{}{}; {}._",
        utc(results.unix_time),
        if results.quick { ", quick run" } else { "" },
        results.method_of(table)
    );
    out
}

/// Escapes `|` in a table cell.
fn cell(text: &str) -> String {
    text.replace('|', "\\|")
}

/// The names of the generated blocks in `doc`, in order: lines that are
/// exactly `<!-- bench:NAME -->`.
pub fn markers(doc: &str) -> Vec<String> {
    doc.lines()
        .filter_map(|line| {
            let name = line
                .trim()
                .strip_prefix("<!-- bench:")?
                .strip_suffix(" -->")?;
            Some(name.to_owned())
        })
        .collect()
}

/// Replaces the text between `<!-- bench:NAME -->` and `<!-- /bench:NAME -->`
/// with `content`. Fails if the markers are missing or out of order.
pub fn splice(doc: &str, name: &str, content: &str) -> Result<String, String> {
    let open = format!("<!-- bench:{name} -->");
    let close = format!("<!-- /bench:{name} -->");
    let start = doc
        .find(&open)
        .ok_or_else(|| format!("BENCHMARKS.md has no `{open}`"))?
        + open.len();
    let end = doc[start..]
        .find(&close)
        .ok_or_else(|| format!("BENCHMARKS.md has `{open}` but no `{close}` after it"))?
        + start;
    Ok(format!("{}\n{}{}", &doc[..start], content, &doc[end..]))
}

/// What [`generate`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Generated {
    /// The new document.
    pub doc: String,
    /// Suites whose tables were rewritten.
    pub updated: Vec<String>,
    /// Suites with no results in this run: their old tables were kept.
    pub missing: Vec<String>,
}

/// Rewrites every generated block of `doc` from the results in `dir`: the
/// `machine` block, and each suite of [`SUITES`]'s table and extra tables. A
/// suite without a results file keeps its old tables and is listed in
/// [`Generated::missing`]. Fails if `doc` lacks a suite's markers, has markers
/// of no suite, or a suite's results leave one of its tables empty or name a
/// table it does not have.
pub fn generate(doc: &str, dir: &Path, machine: &Machine, now: u64) -> Result<Generated, String> {
    let known: Vec<&str> = SUITES
        .iter()
        .flat_map(|s| std::iter::once(s.name).chain(s.tables.iter().copied()))
        .chain(["machine"])
        .collect();
    if let Some(stray) = markers(doc).iter().find(|m| !known.contains(&m.as_str())) {
        return Err(format!("BENCHMARKS.md has a block of no suite: `{stray}`"));
    }
    let mut out = Generated {
        doc: doc.to_owned(),
        ..Generated::default()
    };
    let mut quick = false;
    for suite in SUITES {
        match SuiteResults::read_from(dir, suite.name)? {
            Some(results) => {
                quick |= results.quick;
                if let Some(stray) = results
                    .rows
                    .iter()
                    .filter_map(|r| r.table.as_deref())
                    .find(|t| !suite.tables.contains(t))
                {
                    return Err(format!(
                        "suite {} has a row for table `{stray}`, which is not one of its tables",
                        suite.name
                    ));
                }
                out.doc = splice(&out.doc, suite.name, &render_table(&results))?;
                for table in suite.tables {
                    if !results
                        .rows
                        .iter()
                        .any(|r| r.table.as_deref() == Some(table))
                    {
                        return Err(format!(
                            "suite {} wrote no rows for its table `{table}`",
                            suite.name
                        ));
                    }
                    out.doc = splice(&out.doc, table, &render_rows(&results, Some(table)))?;
                }
                out.updated.push(suite.name.to_owned());
            }
            None => {
                // Still check that the markers are there.
                for name in std::iter::once(suite.name).chain(suite.tables.iter().copied()) {
                    splice(&out.doc, name, "")?;
                }
                out.missing.push(suite.name.to_owned());
            }
        }
    }
    out.doc = splice(&out.doc, "machine", &render_machine(machine, now, quick))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::{Goal, Row};

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00 UTC");
        assert_eq!(utc(1_767_225_600), "2026-01-01 00:00 UTC");
        assert_eq!(utc(1_796_013_000), "2026-11-30 04:30 UTC");
    }

    #[test]
    fn splice_keeps_the_text_around_the_markers() {
        let doc = "intro\n<!-- bench:peers -->\nold\n<!-- /bench:peers -->\noutro\n";
        let new = splice(doc, "peers", "new\n").expect("splice");
        assert_eq!(
            new,
            "intro\n<!-- bench:peers -->\nnew\n<!-- /bench:peers -->\noutro\n"
        );
        assert!(splice(doc, "http", "x").is_err());
        assert_eq!(markers(doc), ["peers"]);
    }

    #[test]
    fn a_table_shows_value_baseline_ratio_and_goal() {
        let mut results = SuiteResults::new("peers", "11 rounds");
        results.push(
            Row::new("chain | MemoryTier", 60.0, "ns", "quick_cache", 45.0, 1.33)
                .goal(Goal::AtMost(1.5)),
        );
        let table = render_table(&results);
        assert!(table.contains(
            "| chain \\| MemoryTier | 60.0 ns | quick_cache | 45.0 ns | 1.33× | ≤ 1.50×: met |"
        ));
        assert!(table.contains("11 rounds"));
    }

    #[test]
    fn rows_of_an_extra_table_go_only_to_that_table_with_its_method() {
        let mut results = SuiteResults::new("redis", "main method");
        results.push(Row::new("main row", 1.0, "µs", "base", 1.0, 1.0));
        results.push(Row::new("extra row", 2.0, "µs", "base", 1.0, 2.0).in_table("extra"));
        results.table_method("extra", "extra method");
        let main = render_table(&results);
        assert!(main.contains("main row") && !main.contains("extra row"));
        assert!(main.contains("main method"));
        let extra = render_rows(&results, Some("extra"));
        assert!(extra.contains("extra row") && !extra.contains("main row"));
        assert!(extra.contains("extra method") && !extra.contains("main method"));
    }
}
