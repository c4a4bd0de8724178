//! The profile-picture page of the demo, compiled to wasm32 with
//! `wasm-bindgen --target web` (by `cargo xtask demo`). On native targets the
//! crate is empty.
//!
//! `index.html` calls [`start`] once the module is loaded. It builds
//! cache-browser's `ProfilePictures` chain (memory → LocalStorage → IndexedDB
//! → Cache API → network, where the network is `GET /api/users/{id}/avatar`
//! then the picture's bytes from its presigned URL), with a
//! `cache_monitor::Monitor` as its observer, and defines the custom element
//! `<cached-profile-picture user-id="…" size="…" alt="…">` on
//! `cache_browser::use_profile_picture`. Then:
//!
//! - a friend list of 50 of the server's 200 users, each picture with the
//!   tier that served it, the tier lookup's time and the time until its image
//!   was decoded, and a summary line for the whole list;
//! - an upload form that replaces a picture and invalidates it in every tier
//!   here and, over a `BroadcastChannel`, in every other tab, whose elements
//!   draw it again;
//! - live updates: cache-browser's `ServerInvalidations` on the server's
//!   `GET /api/events`, so a picture uploaded by anyone (another client,
//!   another server instance) is invalidated here and in every tab, and its
//!   elements draw it again without a reload; a gap in the stream empties the
//!   URL tiers;
//! - an in-page monitor (button or `m`), docked beside the list (below it on
//!   a narrow screen), never over it, and closed with its × button: a row
//!   for each of the five tiers (memory, LocalStorage, IndexedDB, Cache API,
//!   network) with hits, misses, hit rate, average time and bytes saved,
//!   zeros included; what the figures cover and how latency was sampled; and
//!   an SVG chart of every lookup's time, oldest to newest across the
//!   panel's width (a log scale when the times span two orders of
//!   magnitude);
//! - a console API: `cacheMonitor.report()` (returns the report, with its
//!   `period` and `sampling`, and prints a table of the five tiers),
//!   `cacheMonitor.reset()`, `cacheMonitor.peek(id)` (what each tier
//!   holds for a user), `cacheMonitor.toggle()` and
//!   `cacheMonitor.serverEvents()` (the live update stream's state);
//! - a test hook: `?clock-offset-min=N` runs the page's clock N minutes ahead.
//!
//! `sw.js` keeps the app shell per build and answers `/pictures/{id}` from the
//! chain's Cache API tier, so the page and its pictures load offline.

#[cfg(target_family = "wasm")]
mod app;
// Plain Rust (its tests run natively); only the page uses it.
#[cfg_attr(not(target_family = "wasm"), allow(dead_code))]
mod by_name;
// Plain Rust (its tests run natively); only the page uses it.
#[cfg_attr(not(target_family = "wasm"), allow(dead_code))]
mod chart;
#[cfg(target_family = "wasm")]
mod element;
#[cfg(target_family = "wasm")]
mod monitor;

#[cfg(target_family = "wasm")]
pub use app::start;
