//! Storage tests, in one binary because every binary that links RocksDB costs link time.
//!
//! - `suite`: the behaviour every engine must have, run on both engines.
//! - `model`: both engines side by side with a plain model, on seeded random operations.
//! - `keys`: the key codec sorts as the typed keys do.
//! - `crash`: RocksDB batches survive SIGKILL whole or not at all.
//! - `files`: RocksDB keeps a bounded number of table files open.
//! - `behind`: writes queued behind read as written, with the writer held back.
//! - `apart`: RocksDB keeping some keys in a column family of their own.
//! - `row_cache`: the row cache's table: whole through rewrites, evictions and growth.
//! - `priority`: RocksDB's background threads at the lowest CPU priority.

mod apart;
mod behind;
mod common;
mod crash;
mod files;
mod keys;
mod model;
mod priority;
mod released;
mod row_cache;
mod suite;
