//! The profile-picture page of the demo, compiled to wasm32 with
//! `wasm-bindgen --target web` (by `cargo xtask demo`). On native targets the
//! crate is empty.
//!
//! `index.html` calls [`start`] once the module is loaded: every user listed in
//! `<body data-users="1 2 3">` is resolved through cache-browser's
//! `ProfilePictures` chain (memory → LocalStorage → IndexedDB → Cache API →
//! network, where the network is `GET /api/users/{id}/avatar` then the picture's
//! bytes from its presigned URL). Each picture shows the tier that served it and
//! the time it took; the same values are on its `<li>` as `data-served-by` and
//! `data-ms` (the end-to-end journey reads them). The upload form `PUT`s a new
//! picture, then invalidates it in every tier here and, over a
//! `BroadcastChannel`, in every other tab. `sw.js` caches the app shell so the
//! page loads offline.

#[cfg(target_family = "wasm")]
mod app;

#[cfg(target_family = "wasm")]
pub use app::start;
