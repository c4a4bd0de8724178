//! What every command needs: where the workspace is, and running cargo.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

pub(crate) const WASM_TARGET: &str = "wasm32-unknown-unknown";

pub(crate) fn workspace_root() -> PathBuf {
    let manifest = env::var_os("CARGO_MANIFEST_DIR").map(PathBuf::from);
    manifest
        .and_then(|m| m.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("."))
}

pub(crate) fn target_dir() -> PathBuf {
    env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target"))
}

pub(crate) fn cargo() -> Command {
    Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

pub(crate) fn run_visible(what: &str, cmd: &mut Command) -> Result<(), String> {
    println!("xtask: {what}");
    match cmd.status() {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => Err(format!("`{what}` failed ({s})")),
        Err(e) => Err(format!("`{what}` could not start: {e}")),
    }
}
