//! The benchmark harness's tests, in one binary (each binary linking RocksDB costs link time).
//!
//! - `tpcc`: the TPC-C-like benchmark end to end, embedded and on a cluster of processes.
//! - `jepsen`: the fault suite's short schedule (`./dev jepsen` runs the full one).
//! - `retention`: GC under list-append with a short retention, checked by `adya` and a model.
//! - `report`: latency summaries.

mod jepsen;
mod report;
mod retention;
mod tpcc;
