//! Criterion suites for the workspace. Run them with `cargo xtask bench` (or
//! `cargo bench -p benches`); results and their baselines are in BENCHMARKS.md.
