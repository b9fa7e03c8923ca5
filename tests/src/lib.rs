//! Cross-crate integration tests, the fault-injection harness and simulations live in this
//! crate's `tests/` directory, grouped by area into few binaries (each binary linking RocksDB
//! costs link time). Per-crate tests live with their crate.
//!
//! No cross-crate tests exist yet: they arrive with the transaction engine.
