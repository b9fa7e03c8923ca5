//! Cross-crate integration tests and the tools they share. The tests live in this crate's
//! `tests/` directory, grouped by area into few binaries (each binary linking RocksDB costs
//! link time); per-crate tests live with their crate.
//!
//! - [`history`]: records a list-append workload's operations as a Jepsen history (JSON
//!   lines) and checks it with the `adya` checker, an oracle nobody here wrote. The
//!   `checker` test proves the setup can fail: it must find the anomalies listed for the
//!   reference histories in `tests/histories/` (a copy of the project's shared set).
//! - [`kv`]: small helpers for tests that store counters.

pub mod history;
pub mod kv;
