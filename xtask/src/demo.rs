//! `cargo xtask demo`: examples/profile-web (wasm) served by
//! examples/profile-server.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::setup::{setup, wasm_bindgen_cli};
use crate::workspace::{cargo, run_visible, target_dir, WASM_TARGET};

pub(crate) const WEB_PACKAGE: &str = "profile-web";
const WEB_STATIC: &str = "examples/profile-web/static";

/// Builds examples/profile-web for wasm32 (release), runs `wasm-bindgen --target
/// web` and copies the static files (index.html, sw.js) beside it, into
/// `target/profile-web/`, with the build id (a hash of the whole app) in place
/// of `__BUILD__` (the service worker names its shell cache after it). Returns
/// that directory (absolute).
pub(crate) fn build_web() -> Result<PathBuf, String> {
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

pub(crate) fn demo(args: &[String]) -> Result<bool, String> {
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
