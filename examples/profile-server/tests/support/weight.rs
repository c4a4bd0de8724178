//! The page's weight: its wasm and JS files as the server sends them, for the
//! journey's weight test and the first-visit benchmark.

use std::path::{Path, PathBuf};

use super::client;

/// The budget of issue 21 for the page's wasm + JS over the wire, in bytes
/// (250 KB; decimal, the stricter reading).
pub(crate) const BUDGET: u64 = 250_000;

/// The `Accept-Encoding` that Chromium sends, on http://127.0.0.1 too.
pub(crate) const CHROMIUM_ACCEPTS: &str = "gzip, deflate, br, zstd";

/// Every wasm and JS file of the built app under `dir` (wasm-bindgen's
/// module, its snippets, the wasm, the service worker), as paths relative to
/// `dir` with `/`; their precompressed `.br`/`.gz` copies left out.
pub(crate) fn page_files(dir: &Path) -> Vec<String> {
    fn walk(dir: &Path, into: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, into);
            } else {
                into.push(path);
            }
        }
    }
    let mut files = Vec::new();
    walk(dir, &mut files);
    let mut names: Vec<String> = files
        .iter()
        .filter(|f| f.extension().is_some_and(|e| e == "wasm" || e == "js"))
        .map(|f| {
            let rel = f.strip_prefix(dir).unwrap();
            rel.components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join("/")
        })
        .collect();
    names.sort();
    assert!(
        names.iter().any(|n| n.ends_with(".wasm")) && names.iter().any(|n| n.ends_with(".js")),
        "{} holds no wasm or no JS: {names:?}",
        dir.display()
    );
    names
}

/// One file as the server sent it.
#[derive(Debug)]
pub(crate) struct Served {
    pub(crate) file: String,
    /// `Content-Encoding`, if any.
    pub(crate) encoding: Option<String>,
    /// The body as it came over the wire (still encoded).
    pub(crate) body: Vec<u8>,
}

/// `GET <origin>/<file>` with `Accept-Encoding: accept` (none if `None`);
/// panics unless it is a 200 that varies with `Accept-Encoding`. The client
/// decodes nothing (reqwest is built without its decoders).
pub(crate) async fn fetch(origin: &str, file: &str, accept: Option<&str>) -> Served {
    let mut request = client().get(format!("{origin}/{file}"));
    if let Some(accept) = accept {
        request = request.header("accept-encoding", accept);
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), 200, "{file} ({accept:?})");
    let vary = response
        .headers()
        .get("vary")
        .map(|v| v.to_str().unwrap().to_ascii_lowercase())
        .unwrap_or_default();
    assert!(
        vary.contains("accept-encoding"),
        "{file} ({accept:?}): Vary is {vary:?}"
    );
    let encoding = response
        .headers()
        .get("content-encoding")
        .map(|v| v.to_str().unwrap().to_owned());
    let body = response.bytes().await.unwrap().to_vec();
    Served {
        file: file.to_owned(),
        encoding,
        body,
    }
}

/// The page's wasm and JS files fetched with `accept`, and their summed
/// bodies in bytes.
pub(crate) async fn fetch_page(
    dir: &Path,
    origin: &str,
    accept: Option<&str>,
) -> (Vec<Served>, u64) {
    let mut served = Vec::new();
    for file in page_files(dir) {
        served.push(fetch(origin, &file, accept).await);
    }
    let total = served.iter().map(|s| s.body.len() as u64).sum();
    (served, total)
}
