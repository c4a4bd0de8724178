//! `cargo xtask`: the workspace's two set-up commands and the bench runner.
//!
//! - `cargo xtask test`: fmt, clippy (native and wasm32), native tests (with real
//!   Redis and a real S3-compatible server, started by the tests themselves), and
//!   browser tests in headless Chromium. Every suite runs; the command fails if any
//!   suite fails or cannot run. Nothing is skipped silently.
//! - `cargo xtask demo`: builds everything, wasm included, and serves the demo.
//! - `cargo xtask bench [--quick]`: every benchmark suite, then BENCHMARKS.md
//!   rewritten from the results (see `bench.rs`).
//! - `cargo xtask chaos [--rounds N]`: the long fault suite, each fault and
//!   race test `N` times (default 5), writing RELIABILITY.md (see `chaos.rs`).
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
//! `chromium-driver`, `redis-server`, `redis-tools`, and `binaryen`, `brotli` and
//! `gzip` for the web app's build); otherwise the exact command to run is printed
//! and the task stops.
//!
//! Std only, so that it builds in seconds on a fresh machine.
//!
//! One module per command: `suites` (test), `demo`, `journey`, `bench`,
//! `setup`, `publish` (msrv, docs, package, examples), `chaos`; `workspace`
//! and `manifest` hold what they share, `wasm` the fix-up of `wasm-opt`'s
//! output that the web app's build needs. This file only dispatches.

use std::env;
use std::process::ExitCode;

mod bench;
mod chaos;
mod demo;
mod journey;
mod manifest;
mod publish;
mod setup;
mod suites;
mod tidy;
mod wasm;
mod workspace;

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    let root = workspace::workspace_root();
    if let Err(e) = env::set_current_dir(&root) {
        eprintln!(
            "xtask: cannot enter the workspace root {}: {e}",
            root.display()
        );
        return ExitCode::FAILURE;
    }
    let result = match args.first().map(String::as_str) {
        Some("test") => suites::test(&args[1..]),
        Some("demo") => demo::demo(&args[1..]),
        Some("bench") => bench::bench(&args[1..]),
        Some("chaos") => chaos::chaos(&args[1..]),
        Some("setup") => setup::setup().map(|()| true),
        // The end-to-end journey alone (also the last suite of `test`).
        Some("journey") => journey::journey(),
        Some("msrv") => publish::msrv(),
        Some("docs") => publish::docs(),
        Some("package") => publish::package(),
        Some("examples") => publish::examples(),
        _ => {
            eprintln!(
                "usage: cargo xtask <test | demo | bench | chaos | setup | journey>\n\
                 \n  test   fmt, clippy, native tests (real Redis, real S3), browser tests in headless Chromium\
                 \n  demo   build everything (wasm included) and serve the profile-picture demo\
                 \n  bench  every benchmark suite, then BENCHMARKS.md from the results (--quick: shorter, wider error)\
                 \n  chaos  the long fault suite (--rounds N, default 5), then RELIABILITY.md\
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
