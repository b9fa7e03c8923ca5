//! Tests of the transaction core, in one binary; none links RocksDB.
//!
//! - `executor`: the window executor against a serial oracle, and determinism.

mod executor;
