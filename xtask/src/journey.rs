//! `cargo xtask journey`: the end-to-end journey alone (also the last suite
//! of `cargo xtask test`).

use crate::demo::{build_web, WEB_PACKAGE};
use crate::workspace::{cargo, run_visible, WASM_TARGET};

/// The end-to-end journey in headless Chromium: lints the web app for wasm32,
/// builds it, then runs
/// examples/profile-server/tests/journey.rs against it (the five visits, an
/// upload seen in two windows, a new build; a screenshot per step and
/// `visits.json` under `<target dir>/journey/`). `cargo xtask test` runs it as
/// its last suite (through `cargo xtask journey`, so the build happens when
/// the suite starts).
pub(crate) fn journey() -> Result<bool, String> {
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
        // One at a time: the weight check must not load the machine while
        // the journey times its visits (the bench reads them).
        "--test-threads=1",
    ])
    .env("PROFILE_WEB_DIR", &web);
    run_visible(
        "cargo test -p profile-server --features journey --test journey",
        &mut cmd,
    )?;
    Ok(true)
}
