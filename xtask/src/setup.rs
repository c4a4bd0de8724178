//! `cargo xtask setup`: finds the tools the other commands need, installs the
//! missing ones when running as root, or says exactly how.

use std::env;
use std::fs;
use std::path::PathBuf;
use std::process::Command;

use crate::workspace::{run_visible, WASM_TARGET};

const APT_PACKAGES: &[(&str, &str)] = &[
    ("/usr/bin/chromium", "chromium"),
    ("/usr/bin/chromedriver", "chromium-driver"),
    ("redis-server", "redis-server"),
    ("redis-cli", "redis-tools"),
    // The web app's build (`demo::build_web`): wasm-opt shrinks the wasm,
    // brotli and gzip precompress it and its JS for the server.
    ("wasm-opt", "binaryen"),
    ("brotli", "brotli"),
    ("gzip", "gzip"),
];

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

/// `$CARGO_HOME`, else `~/.cargo`.
pub(crate) fn cargo_home() -> Option<PathBuf> {
    env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
}

fn cargo_bin_dir() -> PathBuf {
    cargo_home()
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"))
        .join("bin")
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

pub(crate) fn wasm_bindgen_cli() -> PathBuf {
    on_path("wasm-bindgen").unwrap_or_else(|| cargo_bin_dir().join("wasm-bindgen"))
}

/// A program that [`setup`] installs from Debian (`APT_PACKAGES`): its path,
/// or, if it is still missing, an error with the exact command that installs
/// it. Never a silent skip.
pub(crate) fn apt_tool(program: &str) -> Result<PathBuf, String> {
    if let Some(path) = on_path(program) {
        return Ok(path);
    }
    let package = APT_PACKAGES
        .iter()
        .find(|(bin, _)| *bin == program)
        .map_or(program, |(_, pkg)| *pkg);
    Err(format!(
        "`{program}` is not on PATH; install it with:\n  sudo apt-get install -y {package}"
    ))
}

pub(crate) fn browser_env(cmd: &mut Command) -> &mut Command {
    cmd.env(
        "CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER",
        wasm_bindgen_runner(),
    )
    .env("CHROMEDRIVER", "/usr/bin/chromedriver")
    .env("WASM_BINDGEN_TEST_TIMEOUT", "180")
}

/// Makes sure every tool the tests need is here. Returns the commands that a
/// non-root user must run, if any are missing.
pub(crate) fn setup() -> Result<(), String> {
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
