//! `cargo xtask`: the workspace's two set-up commands and the bench runner.
//!
//! - `cargo xtask test`: fmt, clippy (native and wasm32), native tests (with real
//!   Redis and a real S3-compatible server, started by the tests themselves), and
//!   browser tests in headless Chromium. Every suite runs; the command fails if any
//!   suite fails or cannot run. Nothing is skipped silently.
//! - `cargo xtask demo`: builds everything, wasm included, and serves the demo.
//! - `cargo xtask bench [--quick]`: every benchmark suite, then BENCHMARKS.md
//!   rewritten from the results (see `bench.rs`).
//!
//! `test` also runs the publishing checks, each a subcommand of its own:
//! `msrv` (every library crate's `rust-version` is the toolchain pinned in
//! rust-toolchain.toml, which the other suites build with), `docs` (`cargo doc`
//! with warnings denied, for every target and with the features each crate's
//! `[package.metadata.docs.rs]` names), `package` (`cargo package` of every
//! library crate together, each verified by building the packaged sources) and
//! `examples` (runs every library crate's example; builds the browser one for
//! wasm32).
//!
//! Missing tools are installed when running as root (the wasm32 target,
//! `wasm-bindgen-cli` at the version in Cargo.lock, Debian's `chromium`,
//! `chromium-driver`, `redis-server`, `redis-tools`); otherwise the exact command
//! to run is printed and the task stops.
//!
//! Std only, so that it builds in seconds on a fresh machine.

use std::env;
use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::Instant;

mod bench;

const WASM_TARGET: &str = "wasm32-unknown-unknown";
const APT_PACKAGES: &[(&str, &str)] = &[
    ("/usr/bin/chromium", "chromium"),
    ("/usr/bin/chromedriver", "chromium-driver"),
    ("redis-server", "redis-server"),
    ("redis-cli", "redis-tools"),
];

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    let root = workspace_root();
    if let Err(e) = env::set_current_dir(&root) {
        eprintln!(
            "xtask: cannot enter the workspace root {}: {e}",
            root.display()
        );
        return ExitCode::FAILURE;
    }
    let result = match args.first().map(String::as_str) {
        Some("test") => test(&args[1..]),
        Some("demo") => demo(&args[1..]),
        Some("bench") => bench::bench(&args[1..]),
        Some("setup") => setup().map(|()| true),
        // The end-to-end journey alone (also the last suite of `test`).
        Some("journey") => journey(),
        Some("msrv") => msrv(),
        Some("docs") => docs(),
        Some("package") => package(),
        Some("examples") => examples(),
        _ => {
            eprintln!(
                "usage: cargo xtask <test | demo | bench | setup | journey>\n\
                 \n  test   fmt, clippy, native tests (real Redis, real S3), browser tests in headless Chromium\
                 \n  demo   build everything (wasm included) and serve the profile-picture demo\
                 \n  bench  every benchmark suite, then BENCHMARKS.md from the results (--quick: shorter, wider error)\
                 \n  setup  only install (or print how to install) what the other tasks need\
                 \n  journey  only the end-to-end journey in headless Chromium (the last suite of `test`)\
                 \n  msrv   only: every library crate's rust-version is the pinned toolchain\
                 \n  docs   only: cargo doc as docs.rs builds it, warnings denied\
                 \n  package  only: cargo package (verified) of every library crate\
                 \n  examples  only: run every library crate's example"
            );
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("\nxtask: {e}");
            ExitCode::FAILURE
        }
    }
}

fn workspace_root() -> PathBuf {
    let manifest = env::var_os("CARGO_MANIFEST_DIR").map(PathBuf::from);
    manifest
        .and_then(|m| m.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("."))
}

// ---------------------------------------------------------------------------
// Tools: find, install when root, or say exactly how.

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn on_path(program: &str) -> Option<PathBuf> {
    if program.contains('/') {
        let p = PathBuf::from(program);
        return p.is_file().then_some(p);
    }
    let path = env::var_os("PATH")?;
    env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

fn cargo_bin_dir() -> PathBuf {
    env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"))
        .join("bin")
}

fn run_visible(what: &str, cmd: &mut Command) -> Result<(), String> {
    println!("xtask: {what}");
    match cmd.status() {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => Err(format!("`{what}` failed ({s})")),
        Err(e) => Err(format!("`{what}` could not start: {e}")),
    }
}

/// The wasm-bindgen version pinned in Cargo.lock.
fn locked_wasm_bindgen_version() -> Result<String, String> {
    let lock = fs::read_to_string("Cargo.lock")
        .map_err(|e| format!("cannot read Cargo.lock ({e}); run `cargo generate-lockfile`"))?;
    let mut lines = lock.lines();
    while let Some(line) = lines.next() {
        if line.trim() == "name = \"wasm-bindgen\"" {
            if let Some(v) = lines
                .next()
                .and_then(|l| l.trim().strip_prefix("version = "))
            {
                return Ok(v.trim_matches('"').to_string());
            }
        }
    }
    Err("Cargo.lock has no wasm-bindgen package".into())
}

fn wasm_bindgen_runner() -> PathBuf {
    on_path("wasm-bindgen-test-runner")
        .unwrap_or_else(|| cargo_bin_dir().join("wasm-bindgen-test-runner"))
}

fn installed_wasm_bindgen_version() -> Option<String> {
    let out = Command::new(wasm_bindgen_runner())
        .arg("--version")
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace().nth(1).map(str::to_string)
}

/// Makes sure every tool the tests need is here. Returns the commands that a
/// non-root user must run, if any are missing.
fn setup() -> Result<(), String> {
    let root = is_root();
    let mut todo: Vec<String> = Vec::new();

    // 1. The wasm32 target (rust-toolchain.toml lists it; older rustups may not add it).
    let targets = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    if !targets.lines().any(|l| l.trim() == WASM_TARGET) {
        let cmd = format!("rustup target add {WASM_TARGET}");
        if root {
            run_visible(
                &cmd,
                Command::new("rustup").args(["target", "add", WASM_TARGET]),
            )?;
        } else {
            todo.push(cmd);
        }
    }

    // 2. Debian packages: one `apt-get update`, then one install of what is missing.
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .filter(|(bin, _)| on_path(bin).is_none())
        .map(|(_, pkg)| *pkg)
        .collect();
    if !missing.is_empty() {
        let install = format!("apt-get install -y {}", missing.join(" "));
        if root {
            run_visible(
                "apt-get update",
                Command::new("apt-get").args(["update", "-qq"]),
            )?;
            let mut cmd = Command::new("apt-get");
            cmd.args(["install", "-y", "-qq"])
                .args(&missing)
                .env("DEBIAN_FRONTEND", "noninteractive");
            run_visible(&install, &mut cmd)?;
        } else {
            todo.push(format!("sudo apt-get update && sudo {install}"));
        }
    }

    // 3. wasm-bindgen-cli at exactly the version in Cargo.lock.
    let want = locked_wasm_bindgen_version()?;
    if installed_wasm_bindgen_version().as_deref() != Some(want.as_str()) {
        // Without --locked: the CLI's own lockfile pins a webpki-roots release that
        // is no longer on crates.io.
        let cmd = format!("cargo install wasm-bindgen-cli --version {want} --force");
        if root {
            run_visible(
                &cmd,
                Command::new("cargo").args([
                    "install",
                    "wasm-bindgen-cli",
                    "--version",
                    &want,
                    "--force",
                ]),
            )?;
        } else {
            todo.push(cmd);
        }
    }

    if todo.is_empty() {
        return Ok(());
    }
    Err(format!(
        "missing tools; not running as root, so not installing them. Run:\n  {}\nthen run the task again.",
        todo.join("\n  ")
    ))
}

// ---------------------------------------------------------------------------
// Suites.

/// Workspace members, from the root Cargo.toml (directory names).
fn members() -> Vec<String> {
    let manifest = fs::read_to_string("Cargo.toml").unwrap_or_default();
    let Some(start) = manifest.find("members") else {
        return Vec::new();
    };
    let rest = &manifest[start..];
    let (Some(open), Some(close)) = (rest.find('['), rest.find(']')) else {
        return Vec::new();
    };
    rest[open + 1..close]
        .split(',')
        .map(|m| m.trim().trim_matches('"').to_string())
        .filter(|m| !m.is_empty())
        .collect()
}

/// The package name declared in a member's Cargo.toml.
fn package_name(member: &str) -> Option<String> {
    let manifest = fs::read_to_string(Path::new(member).join("Cargo.toml")).ok()?;
    let package = manifest.split("[package]").nth(1)?;
    package.lines().find_map(|l| {
        let l = l.trim();
        l.strip_prefix("name").map(|rest| {
            rest.trim_start()
                .trim_start_matches('=')
                .trim()
                .trim_matches('"')
                .to_string()
        })
    })
}

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
struct Tally {
    passed: u64,
    failed: u64,
    ignored: u64,
}

/// Runs a command, echoing its output, and adds up `test result:` lines.
fn run_suite(cmd: &mut Command, tally: &mut Tally) -> Result<(), String> {
    cmd.stdout(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| format!("could not start: {e}"))?;
    if let Some(out) = child.stdout.take() {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            println!("{line}");
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

fn cargo() -> Command {
    Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

fn browser_env(cmd: &mut Command) -> &mut Command {
    cmd.env(
        "CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER",
        wasm_bindgen_runner(),
    )
    .env("CHROMEDRIVER", "/usr/bin/chromedriver")
    .env("WASM_BINDGEN_TEST_TIMEOUT", "180")
}

/// The tags features (off by default): the full suites build with them, so
/// every tag test runs; a second clippy and the crates' unit tests check the
/// default build.
const TAGS: &str = "cache-core/tags,cache-server/tags,cache-browser/tags,benches/tags";

fn test(args: &[String]) -> Result<bool, String> {
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

// ---------------------------------------------------------------------------
// The demo: examples/profile-web (wasm) served by examples/profile-server.

const WEB_PACKAGE: &str = "profile-web";
const WEB_STATIC: &str = "examples/profile-web/static";

fn target_dir() -> PathBuf {
    env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target"))
}

fn wasm_bindgen_cli() -> PathBuf {
    on_path("wasm-bindgen").unwrap_or_else(|| cargo_bin_dir().join("wasm-bindgen"))
}

/// Builds examples/profile-web for wasm32 (release), runs `wasm-bindgen --target
/// web` and copies the static files (index.html, sw.js) beside it, into
/// `target/profile-web/`, with the build id (a hash of the whole app) in place
/// of `__BUILD__` (the service worker names its shell cache after it). Returns
/// that directory (absolute).
fn build_web() -> Result<PathBuf, String> {
    setup()?;
    run_visible(
        &format!("cargo build --release --target {WASM_TARGET} -p {WEB_PACKAGE}"),
        cargo().args([
            "build",
            "--release",
            "--target",
            WASM_TARGET,
            "-p",
            WEB_PACKAGE,
        ]),
    )?;
    let target = target_dir();
    let wasm = target
        .join(WASM_TARGET)
        .join("release")
        .join(format!("{}.wasm", WEB_PACKAGE.replace('-', "_")));
    let out = target.join("profile-web");
    if out.exists() {
        fs::remove_dir_all(&out).map_err(|e| format!("cannot clear {}: {e}", out.display()))?;
    }
    fs::create_dir_all(&out).map_err(|e| format!("cannot create {}: {e}", out.display()))?;
    let bindgen = wasm_bindgen_cli();
    run_visible(
        &format!("wasm-bindgen --target web --out-dir {}", out.display()),
        Command::new(&bindgen)
            .args(["--target", "web", "--no-typescript", "--out-dir"])
            .arg(&out)
            .arg(&wasm),
    )?;
    let mut statics: Vec<PathBuf> = fs::read_dir(WEB_STATIC)
        .map_err(|e| format!("cannot read {WEB_STATIC}: {e}"))?
        .filter_map(|f| f.ok().map(|f| f.path()))
        .filter(|f| f.is_file())
        .collect();
    statics.sort();
    let build = build_id(&out, &statics)?;
    for file in statics {
        let name = file.file_name().unwrap_or_default();
        let bytes = fs::read(&file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
        // Text files get the build id (sw.js names its shell cache after it).
        let bytes = match String::from_utf8(bytes) {
            Ok(text) => text.replace(BUILD_PLACEHOLDER, &build).into_bytes(),
            Err(e) => e.into_bytes(),
        };
        fs::write(out.join(name), bytes)
            .map_err(|e| format!("cannot write {}: {e}", out.join(name).display()))?;
    }
    println!("xtask: web app build {build} in {}", out.display());
    fs::canonicalize(&out).map_err(|e| e.to_string())
}

/// Replaced by the build id in the web app's static files.
const BUILD_PLACEHOLDER: &str = "__BUILD__";

/// A short id of the web app's build: a hash of the wasm-bindgen output and
/// the static files, so the service worker's shell cache changes exactly when
/// the app does.
fn build_id(out: &Path, statics: &[PathBuf]) -> Result<String, String> {
    use std::hash::{DefaultHasher, Hash, Hasher};
    let mut files: Vec<PathBuf> = fs::read_dir(out)
        .map_err(|e| format!("cannot read {}: {e}", out.display()))?
        .filter_map(|f| f.ok().map(|f| f.path()))
        .filter(|f| f.is_file())
        .collect();
    files.sort();
    files.extend(statics.iter().cloned());
    // DefaultHasher::new() has fixed keys: the same files give the same id.
    let mut hasher = DefaultHasher::new();
    for file in files {
        let bytes = fs::read(&file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
        file.file_name().hash(&mut hasher);
        bytes.hash(&mut hasher);
    }
    Ok(format!("{:016x}", hasher.finish()))
}

fn demo(args: &[String]) -> Result<bool, String> {
    if let Some(extra) = args.first() {
        return Err(format!(
            "`cargo xtask demo` takes no arguments (got `{extra}`); set PORT to change the port"
        ));
    }
    let web = build_web()?;
    let port = env::var("PORT").unwrap_or_else(|_| "8080".into());
    println!("\nxtask: the demo will be at http://127.0.0.1:{port}/ (Ctrl-C stops it)\n");
    let mut server = cargo();
    server
        .args([
            "run",
            "--release",
            "-p",
            "profile-server",
            "--",
            "--web-dir",
        ])
        .arg(&web)
        .env("PORT", &port);
    run_visible("cargo run --release -p profile-server", &mut server)?;
    Ok(true)
}

/// The end-to-end journey in headless Chromium: lints the web app for wasm32,
/// builds it, then runs
/// examples/profile-server/tests/journey.rs against it (the five visits, an
/// upload seen in two windows, a new build; a screenshot per step and
/// `visits.json` under `<target dir>/journey/`). `cargo xtask test` runs it as
/// its last suite (through `cargo xtask journey`, so the build happens when
/// the suite starts).
fn journey() -> Result<bool, String> {
    // The web app is not in the wasm32 clippy suite (no browser unit tests).
    run_visible(
        &format!("cargo clippy --target {WASM_TARGET} -p {WEB_PACKAGE} -- -D warnings"),
        cargo().args([
            "clippy",
            "--target",
            WASM_TARGET,
            "--all-targets",
            "-p",
            WEB_PACKAGE,
            "--",
            "-D",
            "warnings",
        ]),
    )?;
    let web = build_web()?;
    let mut cmd = cargo();
    cmd.args([
        "test",
        "-p",
        "profile-server",
        "--features",
        "journey",
        "--test",
        "journey",
        "--",
        "--nocapture",
    ])
    .env("PROFILE_WEB_DIR", &web);
    run_visible(
        "cargo test -p profile-server --features journey --test journey",
        &mut cmd,
    )?;
    Ok(true)
}

// ---------------------------------------------------------------------------
// Publishing checks: MSRV, docs, packages, examples.

/// The library crates, by folder; their package names come from their
/// Cargo.toml. Everything else in the workspace is `publish = false`.
const LIBRARY_DIRS: &[&str] = &[
    "cache-core",
    "cache-browser",
    "cache-server",
    "presign",
    "monitor",
];

/// One line per check, and a `test result:` line that `cargo xtask test`
/// counts like the test harness's.
#[derive(Default)]
struct Checks {
    passed: u64,
    failed: u64,
}

impl Checks {
    fn check(&mut self, what: &str, outcome: Result<(), String>) {
        match outcome {
            Ok(()) => {
                self.passed += 1;
                println!("check {what} ... ok");
            }
            Err(e) => {
                self.failed += 1;
                println!("check {what} ... FAILED: {e}");
            }
        }
    }

    fn finish(self) -> Result<bool, String> {
        let ok = self.failed == 0 && self.passed > 0;
        println!(
            "\ntest result: {}. {} passed; {} failed; 0 ignored",
            if ok { "ok" } else { "FAILED" },
            self.passed,
            self.failed
        );
        Ok(ok)
    }
}

fn run_status(cmd: &mut Command) -> Result<(), String> {
    match cmd.status() {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => Err(format!("exited with {s}")),
        Err(e) => Err(format!("could not start: {e}")),
    }
}

fn library_packages() -> Result<Vec<(String, String)>, String> {
    LIBRARY_DIRS
        .iter()
        .map(|dir| {
            package_name(dir)
                .map(|name| (dir.to_string(), name))
                .ok_or_else(|| format!("{dir}/Cargo.toml has no package name"))
        })
        .collect()
}

/// `key = "value"` in `section` of a TOML file (the simple form the
/// workspace's manifests use).
fn toml_value(text: &str, section: &str, key: &str) -> Option<String> {
    toml_section(text, section)?.lines().find_map(|l| {
        let (k, v) = l.split_once('=')?;
        (k.trim() == key).then(|| v.trim().trim_matches('"').to_string())
    })
}

/// The lines of `[section]`, up to the next header.
fn toml_section(text: &str, section: &str) -> Option<String> {
    let header = format!("[{section}]");
    let mut lines = text.lines().skip_while(|l| l.trim() != header);
    lines.next()?;
    let body: Vec<&str> = lines
        .take_while(|l| !l.trim_start().starts_with('['))
        .collect();
    Some(body.join("\n"))
}

/// `["a", "b"]` → `a`, `b`.
fn toml_list(value: &str) -> Vec<String> {
    value
        .trim()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .split(',')
        .map(|v| v.trim().trim_matches('"').to_string())
        .filter(|v| !v.is_empty())
        .collect()
}

/// The MSRV check: the workspace's `rust-version` names the toolchain that
/// rust-toolchain.toml pins (so every other suite builds with the MSRV itself),
/// the compiler cargo runs is that toolchain, every library crate inherits (or
/// repeats) the workspace's `rust-version`, and its README states it.
fn msrv() -> Result<bool, String> {
    let mut checks = Checks::default();
    let root = fs::read_to_string("Cargo.toml").map_err(|e| e.to_string())?;
    let msrv = toml_value(&root, "workspace.package", "rust-version")
        .ok_or("the root Cargo.toml has no [workspace.package] rust-version")?;
    let pinned = fs::read_to_string("rust-toolchain.toml")
        .ok()
        .and_then(|t| toml_value(&t, "toolchain", "channel"))
        .ok_or("rust-toolchain.toml has no [toolchain] channel")?;
    println!("xtask: rust-version {msrv}, pinned toolchain {pinned}");
    checks.check(
        &format!("pinned toolchain {pinned} is rust-version {msrv}"),
        if pinned == msrv || pinned.starts_with(&format!("{msrv}.")) {
            Ok(())
        } else {
            Err("the pinned toolchain must be the MSRV, so the suites test it".into())
        },
    );
    let rustc = Command::new("rustc")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    checks.check(
        &format!("rustc in use is {pinned} ({})", rustc.trim()),
        if rustc.starts_with(&format!("rustc {pinned} ")) {
            Ok(())
        } else {
            Err("rustup did not select the pinned toolchain".into())
        },
    );
    for (dir, name) in library_packages()? {
        let manifest = fs::read_to_string(Path::new(&dir).join("Cargo.toml")).unwrap_or_default();
        let own = toml_value(&manifest, "package", "rust-version");
        let inherits = toml_section(&manifest, "package").is_some_and(|p| {
            p.lines()
                .any(|l| l.trim() == "rust-version.workspace = true")
        });
        checks.check(
            &format!("{name}: rust-version is {msrv}"),
            match own {
                _ if inherits => Ok(()),
                Some(v) if v == msrv => Ok(()),
                Some(v) => Err(format!("it says {v}")),
                None => Err("no rust-version".into()),
            },
        );
        let readme = fs::read_to_string(Path::new(&dir).join("README.md")).unwrap_or_default();
        checks.check(
            &format!("{name}: README states the MSRV (Rust {msrv})"),
            if readme.contains(&format!("Rust {msrv}")) {
                Ok(())
            } else {
                Err(format!("{dir}/README.md does not say `Rust {msrv}`"))
            },
        );
    }
    checks.finish()
}

/// `cargo doc` of every library crate as docs.rs will build it: for each
/// target and with the features its `[package.metadata.docs.rs]` names, with
/// rustdoc warnings (broken intra-doc links included) denied. (docs.rs uses
/// nightly and `--cfg docsrs`; this runs the pinned stable toolchain without
/// that cfg, so only the `doc_cfg` badges differ.)
fn docs() -> Result<bool, String> {
    let mut checks = Checks::default();
    for (dir, name) in library_packages()? {
        let manifest = fs::read_to_string(Path::new(&dir).join("Cargo.toml")).unwrap_or_default();
        let Some(meta) = toml_section(&manifest, "package.metadata.docs.rs") else {
            checks.check(&name, Err("no [package.metadata.docs.rs]".into()));
            continue;
        };
        let field = |key: &str| {
            meta.lines().find_map(|l| {
                let (k, v) = l.split_once('=')?;
                (k.trim() == key).then(|| v.trim().to_string())
            })
        };
        let features = field("features").map(|v| toml_list(&v)).unwrap_or_default();
        let targets = field("targets").map(|v| toml_list(&v)).unwrap_or_default();
        if targets.is_empty() {
            checks.check(
                &name,
                Err("[package.metadata.docs.rs] lists no targets".into()),
            );
            continue;
        }
        for target in targets {
            let mut cmd = cargo();
            cmd.args(["doc", "--no-deps", "-p", &name])
                .env("RUSTDOCFLAGS", "-D warnings");
            if !features.is_empty() {
                cmd.args(["--features", &features.join(",")]);
            }
            // Native docs build for the host (x86_64-unknown-linux-gnu on the
            // machines this runs on); wasm32 ones cross-compile.
            if target == WASM_TARGET {
                cmd.args(["--target", WASM_TARGET]);
            }
            let what = if features.is_empty() {
                format!("{name} for {target} (default features)")
            } else {
                format!("{name} for {target} (features: {})", features.join(", "))
            };
            println!("xtask: cargo doc {what}");
            checks.check(&what, run_status(&mut cmd));
        }
    }
    checks.finish()
}

/// `cargo package` of every library crate in one command: cargo packages the
/// interdependent crates together (a local overlay registry stands in for
/// crates.io for the ones not published yet) and verifies each by building its
/// packaged sources on their own. `--allow-dirty` so that it checks the tree
/// as it is, committed or not.
/// Cargo verifies each packaged crate against the others through a local
/// registry under `target/package/`, and unpacks that registry's crates into
/// `$CARGO_HOME/registry/src/-<hash of its path>/`, where it never unpacks the
/// same name and version again. A checkout at a path packaged before (a CI
/// clone, or this tree before a change) would then verify against the old
/// sources. Those unpacked copies of the workspace's own crates are removed
/// first (only in local registries, whose folder names start with `-`).
fn forget_packaged_sources(libs: &[(String, String)]) {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")));
    let Some(src) = home.map(|h| h.join("registry").join("src")) else {
        return;
    };
    let Ok(registries) = fs::read_dir(&src) else {
        return;
    };
    for registry in registries.flatten() {
        if !registry.file_name().to_string_lossy().starts_with('-') {
            continue;
        }
        let Ok(crates) = fs::read_dir(registry.path()) else {
            continue;
        };
        for unpacked in crates.flatten() {
            let dir = unpacked.file_name().to_string_lossy().into_owned();
            let ours = libs.iter().any(|(_, name)| {
                dir.strip_prefix(name.as_str())
                    .and_then(|rest| rest.strip_prefix('-'))
                    .is_some_and(|version| version.starts_with(|c: char| c.is_ascii_digit()))
            });
            if ours {
                if let Err(e) = fs::remove_dir_all(unpacked.path()) {
                    println!(
                        "xtask: could not remove stale {}: {e}",
                        unpacked.path().display()
                    );
                }
            }
        }
    }
}

fn package() -> Result<bool, String> {
    let mut checks = Checks::default();
    let libs = library_packages()?;
    forget_packaged_sources(&libs);
    let mut cmd = cargo();
    cmd.args(["package", "--allow-dirty"]);
    for (_, name) in &libs {
        cmd.args(["-p", name]);
    }
    let names: Vec<&str> = libs.iter().map(|(_, n)| n.as_str()).collect();
    println!(
        "xtask: cargo package --allow-dirty -p {}",
        names.join(" -p ")
    );
    let started = Instant::now();
    let outcome = run_status(&mut cmd);
    println!(
        "xtask: packaged and verified in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    for name in names {
        checks.check(
            &format!("{name} packages and its package builds"),
            outcome.clone(),
        );
    }
    checks.finish()
}

/// Runs every library crate's example (the server one starts its own
/// redis-server, which `setup` installs), and builds the browser one for
/// wasm32.
fn examples() -> Result<bool, String> {
    setup()?;
    let mut checks = Checks::default();
    // (package, example, features, run it)
    let examples: &[(&str, &str, &str, bool)] = &[
        ("cache-core", "two_tiers", "", true),
        ("cache-monitor", "report", "", true),
        ("presign", "embedded_s3", "embedded-s3", true),
        ("cache-server", "moka_redis", "", true),
        ("cache-browser", "profile_pictures", "", false),
    ];
    for (package, example, features, run) in examples {
        let mut cmd = cargo();
        cmd.arg(if *run { "run" } else { "build" })
            .args(["-p", package, "--example", example]);
        if !features.is_empty() {
            cmd.args(["--features", features]);
        }
        if !run {
            cmd.args(["--target", WASM_TARGET]);
        }
        // A REDIS_URL from the environment would point the example elsewhere.
        cmd.env_remove("REDIS_URL");
        let features = if features.is_empty() {
            String::new()
        } else {
            format!(" --features {features}")
        };
        let what = if *run {
            format!("cargo run -p {package}{features} --example {example}")
        } else {
            format!("cargo build -p {package} --example {example} --target {WASM_TARGET}")
        };
        println!("xtask: {what}");
        checks.check(&what, run_status(&mut cmd));
    }
    checks.finish()
}
