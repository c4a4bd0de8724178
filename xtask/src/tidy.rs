//! Checks of the house itself, run with the native tests (as rust-analyzer's
//! `tidy`): library files stay small enough to hold one concern, and the
//! monitor's report does not reach back into the monitor.

#[cfg(test)]
mod tests {
    use std::fs;
    use std::path::{Path, PathBuf};

    /// The most lines of code (not blank, not a comment) a library file may
    /// have before its unit tests. A longer file almost always mixes concerns;
    /// split it by concern (ARCHITECTURE.md's code map says where things go).
    const MAX_CODE_LINES: usize = 800;

    fn workspace() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("xtask lives in the workspace")
            .to_path_buf()
    }

    fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                rust_files(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }

    /// Lines of code before the file's first `#[cfg(test)]`.
    fn code_lines(text: &str) -> usize {
        text.lines()
            .take_while(|l| l.trim() != "#[cfg(test)]")
            .filter(|l| {
                let t = l.trim();
                !t.is_empty() && !t.starts_with("//")
            })
            .count()
    }

    #[test]
    fn code_lines_skip_blanks_comments_and_unit_tests() {
        let text = "//! doc\nfn a() {}\n\n    // note\nfn b() {}\n#[cfg(test)]\nmod tests {}\n";
        assert_eq!(code_lines(text), 2);
    }

    #[test]
    fn no_library_file_has_more_than_800_lines_of_code() {
        let root = workspace();
        let mut files = Vec::new();
        for krate in [
            "cache-core",
            "cache-server",
            "cache-browser",
            "monitor",
            "presign",
            "examples/profile-server",
            "examples/profile-web",
            "xtask",
            "benches",
        ] {
            rust_files(&root.join(krate).join("src"), &mut files);
        }
        assert!(files.len() > 50, "found only {} files", files.len());
        let mut long: Vec<String> = files
            .iter()
            .filter_map(|f| {
                let n = code_lines(&fs::read_to_string(f).ok()?);
                let rel = f.strip_prefix(&root).unwrap_or(f).display();
                (n > MAX_CODE_LINES).then(|| format!("{rel}: {n} lines of code"))
            })
            .collect();
        long.sort();
        assert!(
            long.is_empty(),
            "split by concern (at most {MAX_CODE_LINES} lines of code before the unit tests):\n{}",
            long.join("\n")
        );
    }

    #[test]
    fn the_monitors_report_does_not_import_the_monitor() {
        // report.rs turns snapshots into a `Report`; monitor.rs records and
        // calls it. An import the other way makes the two one module again.
        let report = fs::read_to_string(workspace().join("monitor/src/report.rs"))
            .expect("monitor/src/report.rs");
        let code: Vec<&str> = report
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .collect();
        for needle in ["crate::monitor", "crate::Monitor", "super::monitor"] {
            assert!(
                !code.iter().any(|l| l.contains(needle)),
                "monitor/src/report.rs uses `{needle}` (doc links are fine)"
            );
        }
    }
}
