//! Tests of the sequencer group, in one binary (no RocksDB is linked).
//!
//! - `storage`: openraft's own test suite over the log store and state machine, and the log
//!   file across restarts (torn tails cut, corruption refused).
//! - `group`: three nodes over an in-memory network: windows committed by a majority, epochs
//!   and timestamps across leader changes, deduplication across leaders, a node that
//!   restarts from its disk.

mod group;
mod storage;
