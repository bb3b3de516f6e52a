//! Shipgate's benchmarks and reliability harness, run against the real `shipgate` binary.
//!
//! `shipgate-bench bench [--quick]` measures the figures in `docs/BENCHMARKS.md` and rewrites
//! it; `shipgate-bench harness [--short|--long]` runs the reliability scenarios (chaos with
//! `kill -9`, a database restart, a provider fault storm, steady mixed load) and fails if any
//! rollout ends wrongly or any provider operation is issued twice.

pub mod bench;
pub mod fleet;
pub mod harness;
pub mod markdown;
pub mod support;
