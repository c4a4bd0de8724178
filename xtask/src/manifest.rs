//! Reading the workspace's Cargo.toml files, in the simple TOML forms they use
//! (std only: no TOML parser).

use std::fs;
use std::path::Path;

/// Workspace members, from the root Cargo.toml (directory names).
pub(crate) fn members() -> Vec<String> {
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
pub(crate) fn package_name(member: &str) -> Option<String> {
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

/// `key = "value"` in `section` of a TOML file (the simple form the
/// workspace's manifests use).
pub(crate) fn toml_value(text: &str, section: &str, key: &str) -> Option<String> {
    toml_section(text, section)?.lines().find_map(|l| {
        let (k, v) = l.split_once('=')?;
        (k.trim() == key).then(|| v.trim().trim_matches('"').to_string())
    })
}

/// The lines of `[section]`, up to the next header.
pub(crate) fn toml_section(text: &str, section: &str) -> Option<String> {
    let header = format!("[{section}]");
    let mut lines = text.lines().skip_while(|l| l.trim() != header);
    lines.next()?;
    let body: Vec<&str> = lines
        .take_while(|l| !l.trim_start().starts_with('['))
        .collect();
    Some(body.join("\n"))
}

/// `["a", "b"]` → `a`, `b`.
pub(crate) fn toml_list(value: &str) -> Vec<String> {
    value
        .trim()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .split(',')
        .map(|v| v.trim().trim_matches('"').to_string())
        .filter(|v| !v.is_empty())
        .collect()
}
