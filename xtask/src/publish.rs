//! The publishing checks, each its own subcommand that `cargo xtask test`
//! runs as a suite: `msrv`, `docs`, `package`, `examples`.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use crate::manifest::{package_name, toml_list, toml_section, toml_value};
use crate::setup::{cargo_home, setup};
use crate::workspace::{cargo, WASM_TARGET};

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

/// The MSRV check: the workspace's `rust-version` names the toolchain that
/// rust-toolchain.toml pins (so every other suite builds with the MSRV itself),
/// the compiler cargo runs is that toolchain, every library crate inherits (or
/// repeats) the workspace's `rust-version`, and its README states it.
pub(crate) fn msrv() -> Result<bool, String> {
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
pub(crate) fn docs() -> Result<bool, String> {
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
/// Cargo verifies each packaged crate against the others through a local
/// registry under `target/package/`, and unpacks that registry's crates into
/// `$CARGO_HOME/registry/src/-<hash of its path>/`, where it never unpacks the
/// same name and version again. A checkout at a path packaged before (a CI
/// clone, or this tree before a change) would then verify against the old
/// sources. Those unpacked copies of the workspace's own crates are removed
/// first (only in local registries, whose folder names start with `-`).
fn forget_packaged_sources(libs: &[(String, String)]) {
    let Some(src) = cargo_home().map(|h| h.join("registry").join("src")) else {
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
/// `cargo package` of every library crate in one command: cargo packages the
/// interdependent crates together (a local overlay registry stands in for
/// crates.io for the ones not published yet) and verifies each by building its
/// packaged sources on their own. `--allow-dirty` so that it checks the tree
/// as it is, committed or not.
pub(crate) fn package() -> Result<bool, String> {
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
pub(crate) fn examples() -> Result<bool, String> {
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
