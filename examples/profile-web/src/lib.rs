//! The profile-picture page of the demo (wasm32 only; empty on native).
#[cfg(target_family = "wasm")]
mod app;
