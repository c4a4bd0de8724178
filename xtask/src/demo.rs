//! `cargo xtask demo`: examples/profile-web (wasm) served by
//! examples/profile-server.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::setup::{apt_tool, setup, wasm_bindgen_cli};
use crate::wasm::restore_table_exports;
use crate::workspace::{cargo, run_visible, target_dir, WASM_TARGET};

pub(crate) const WEB_PACKAGE: &str = "profile-web";
const WEB_STATIC: &str = "examples/profile-web/static";

/// How the web app is built: the profile, whether the wasm is shrunk with
/// `wasm-opt` and its wasm and JS precompressed, and where it goes under the
/// target directory.
#[derive(Clone, Copy, Debug)]
pub(crate) struct WebBuild {
    profile: &'static str,
    shrink: bool,
    dir: &'static str,
}

/// The build that is served (`demo`, `journey`): the workspace's `web`
/// profile (built for size), `wasm-opt -Oz`, and `.br`/`.gz` copies of the
/// wasm and JS beside them, which the server sends to a browser that accepts
/// them.
pub(crate) const SHIPPED: WebBuild = WebBuild {
    profile: "web",
    shrink: true,
    dir: "profile-web",
};

/// The web app as it was built before it was built for size (issue 21): the
/// release profile, no `wasm-opt`, no compressed copies (so it is served
/// uncompressed). The first-visit benchmark's baseline.
pub(crate) const AS_BEFORE: WebBuild = WebBuild {
    profile: "release",
    shrink: false,
    dir: "profile-web-as-before",
};

/// `wasm-opt`'s optimisation level for the shipped wasm. `-O1`, not `-Oz`:
/// `-Oz` makes the file smaller but compresses worse, and what a visit
/// downloads is the compressed file (BENCHMARKS.md §8 compares the levels).
const WASM_OPT_LEVEL: &str = "-O1";

/// [`build_web_as`] the shipped build.
pub(crate) fn build_web() -> Result<PathBuf, String> {
    build_web_as(SHIPPED)
}

/// Builds examples/profile-web for wasm32 with `build`'s profile, runs
/// `wasm-bindgen --target web` and copies the static files (index.html,
/// sw.js) beside it, into `target/<build.dir>/`, with the build id (a hash of
/// the whole app) in place of `__BUILD__` (the service worker names its shell
/// cache after it). A shipped build's wasm then goes through `wasm-opt`, and
/// its wasm and JS files get brotli (`.br`) and gzip (`.gz`) copies. Returns
/// that directory (absolute).
pub(crate) fn build_web_as(build: WebBuild) -> Result<PathBuf, String> {
    setup()?;
    // Before the long build: a missing tool fails now, with its command.
    let tools = if build.shrink {
        Some((
            apt_tool("wasm-opt")?,
            apt_tool("brotli")?,
            apt_tool("gzip")?,
        ))
    } else {
        None
    };
    run_visible(
        &format!(
            "cargo build --profile {} --target {WASM_TARGET} -p {WEB_PACKAGE}",
            build.profile
        ),
        cargo().args([
            "build",
            "--profile",
            build.profile,
            "--target",
            WASM_TARGET,
            "-p",
            WEB_PACKAGE,
        ]),
    )?;
    let target = target_dir();
    let wasm = target
        .join(WASM_TARGET)
        .join(build.profile)
        .join(format!("{}.wasm", WEB_PACKAGE.replace('-', "_")));
    let out = target.join(build.dir);
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
    let bg = out.join(format!("{}_bg.wasm", WEB_PACKAGE.replace('-', "_")));
    if let Some((wasm_opt, _, _)) = &tools {
        shrink(wasm_opt, &bg)?;
    }
    let mut statics: Vec<PathBuf> = fs::read_dir(WEB_STATIC)
        .map_err(|e| format!("cannot read {WEB_STATIC}: {e}"))?
        .filter_map(|f| f.ok().map(|f| f.path()))
        .filter(|f| f.is_file())
        .collect();
    statics.sort();
    let id = build_id(&out, &statics)?;
    for file in statics {
        let name = file.file_name().unwrap_or_default();
        let bytes = fs::read(&file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
        // Text files get the build id (sw.js names its shell cache after it).
        let bytes = match String::from_utf8(bytes) {
            Ok(text) => text.replace(BUILD_PLACEHOLDER, &id).into_bytes(),
            Err(e) => e.into_bytes(),
        };
        fs::write(out.join(name), bytes)
            .map_err(|e| format!("cannot write {}: {e}", out.join(name).display()))?;
    }
    // Last, once sw.js carries the build id: the wasm and every script (the
    // service worker's too) get their compressed copies.
    if let Some((_, brotli, gzip)) = &tools {
        precompress(&out, brotli, gzip)?;
    }
    println!("xtask: web app build {id} in {}", out.display());
    fs::canonicalize(&out).map_err(|e| e.to_string())
}

/// `text` (a script) without what only people read: comment-only lines
/// (`//` lines, and `/* … */` blocks that begin a line), blank lines and
/// indentation; about 1 KB less over the wire for the page's scripts. Every
/// line of code stays a line of its own, so automatic semicolon insertion
/// reads the script as before. A script with a template literal over
/// several lines (a line with an odd number of backticks), whose
/// indentation is part of a string, is left as it is.
fn strip_js(text: &str) -> String {
    if text.lines().any(|l| l.matches('`').count() % 2 == 1) {
        return text.to_owned();
    }
    let mut out = String::with_capacity(text.len());
    let mut in_block = false;
    for line in text.lines() {
        let mut code = line.trim();
        if in_block {
            let Some((_, rest)) = code.split_once("*/") else {
                continue;
            };
            in_block = false;
            code = rest.trim();
        } else if let Some(comment) = code.strip_prefix("/*") {
            match comment.split_once("*/") {
                Some((_, rest)) => code = rest.trim(),
                None => {
                    in_block = true;
                    continue;
                }
            }
        }
        if code.is_empty() || code.starts_with("//") {
            continue;
        }
        out.push_str(code);
        out.push('\n');
    }
    out
}

/// Runs `wasm-opt` on `wasm` in place, then gives its table exports back the
/// indices that binaryen before version 110 loses ([`crate::wasm`]).
fn shrink(wasm_opt: &Path, wasm: &Path) -> Result<(), String> {
    let read = |f: &Path| fs::read(f).map_err(|e| format!("cannot read {}: {e}", f.display()));
    let original = read(wasm)?;
    let optimized = wasm.with_extension("opt.wasm");
    run_visible(
        &format!("wasm-opt {WASM_OPT_LEVEL} {}", wasm.display()),
        Command::new(wasm_opt)
            .arg(WASM_OPT_LEVEL)
            .arg(wasm)
            .arg("-o")
            .arg(&optimized),
    )?;
    let mut bytes = read(&optimized)?;
    fs::remove_file(&optimized)
        .map_err(|e| format!("cannot remove {}: {e}", optimized.display()))?;
    let fixed = restore_table_exports(&original, &mut bytes)
        .map_err(|e| format!("after wasm-opt, {}: {e}", wasm.display()))?;
    if fixed > 0 {
        println!("xtask: restored {fixed} table export(s) that wasm-opt (binaryen < 110) moved to table 0");
    }
    fs::write(wasm, &bytes).map_err(|e| format!("cannot write {}: {e}", wasm.display()))?;
    println!(
        "xtask: wasm-opt: {} -> {} bytes",
        original.len(),
        bytes.len()
    );
    Ok(())
}

fn file_size(file: &Path) -> Result<u64, String> {
    fs::metadata(file)
        .map(|m| m.len())
        .map_err(|e| format!("cannot read {}: {e}", file.display()))
}

/// Writes `<file>.br` (brotli, quality 11) and `<file>.gz` (gzip -9) beside
/// every `.wasm` and `.js` file under `dir` (wasm-bindgen's snippets
/// included), for the server's precompressed responses. Each copy keeps its
/// file's modification time, so every encoding has the same
/// `Last-Modified`.
fn precompress(dir: &Path, brotli: &Path, gzip: &Path) -> Result<(), String> {
    let mut files = Vec::new();
    collect_files(dir, &mut files)?;
    files.retain(|f| f.extension().is_some_and(|e| e == "wasm" || e == "js"));
    files.sort();
    let (mut raw, mut br, mut gz) = (0, 0, 0);
    for file in &files {
        let shown = file.display();
        if file.extension().is_some_and(|e| e == "js") {
            let text = fs::read_to_string(file).map_err(|e| format!("cannot read {shown}: {e}"))?;
            fs::write(file, strip_js(&text)).map_err(|e| format!("cannot write {shown}: {e}"))?;
        }
        let brotli_copy = PathBuf::from(format!("{shown}.br"));
        run_quiet(
            &format!("brotli --quality=11 --force -o {shown}.br {shown}"),
            Command::new(brotli)
                .args(["--quality=11", "--force", "-o"])
                .arg(&brotli_copy)
                .arg(file),
        )?;
        // -n: no name or time in the header, so the copy depends on the
        // bytes only; -k keeps the file, and gzip gives the copy its time.
        run_quiet(
            &format!("gzip -9 -n -k -f {shown}"),
            Command::new(gzip).args(["-9", "-n", "-k", "-f"]).arg(file),
        )?;
        raw += file_size(file)?;
        br += file_size(&brotli_copy)?;
        gz += file_size(&PathBuf::from(format!("{shown}.gz")))?;
    }
    println!(
        "xtask: precompressed {} wasm and JS files: {raw} bytes, {br} as brotli, {gz} as gzip",
        files.len()
    );
    Ok(())
}

fn collect_files(dir: &Path, into: &mut Vec<PathBuf>) -> Result<(), String> {
    let entries = fs::read_dir(dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
    for entry in entries {
        let path = entry.map_err(|e| e.to_string())?.path();
        if path.is_dir() {
            collect_files(&path, into)?;
        } else {
            into.push(path);
        }
    }
    Ok(())
}

/// Runs `cmd`, printing nothing unless it fails.
fn run_quiet(what: &str, cmd: &mut Command) -> Result<(), String> {
    match cmd.output() {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => Err(format!(
            "`{what}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) => Err(format!("`{what}` could not start: {e}")),
    }
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

#[cfg(test)]
mod tests {
    use super::strip_js;

    #[test]
    fn strip_js_drops_comments_blank_lines_and_indentation_only() {
        let script = "/**\n * doc\n */\nexport function f(a) {\n    // why\n\n    return a + 1; // kept\n}\n/* one */ let x = '//' + \"/*\";\n  /* a\n b */ x += 1;\n";
        assert_eq!(
            strip_js(script),
            "export function f(a) {\nreturn a + 1; // kept\n}\nlet x = '//' + \"/*\";\nx += 1;\n"
        );
        // A template literal over two lines keeps its indentation: untouched.
        let template = "const t = `a\n    b`;\n";
        assert_eq!(strip_js(template), template);
    }
}
