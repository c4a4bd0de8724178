//! Criterion suites for the workspace. Run them with `cargo xtask bench` (or
//! `cargo bench -p benches`); results and their baselines are in BENCHMARKS.md.

// The workspace README's example is a doctest: it must compile and pass.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct WorkspaceReadmeDoctest;
