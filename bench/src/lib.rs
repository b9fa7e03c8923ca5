//! sealdb's benchmark harness.
//!
//! Each workload is a module with a `run(options) -> Report` and prints its figures; the
//! `bench` binary parses flags and calls it. Figures are measured, never assumed: every run
//! also checks its results against what it wrote, and a run whose check fails exits non-zero.
//!
//! Workloads so far:
//!
//! - [`mvcc`]: the storage layer alone on RocksDB: applies windows of versioned writes the way
//!   a shard does, reads them back at timestamps, scans, collects garbage, and checks every
//!   answer against an in-memory model. It is the end-to-end job until the transaction engine
//!   and the TPC-C-like workload exist.
//!
//! Not here: the engine itself; the harness only uses public APIs.

pub mod mvcc;
pub mod report;
