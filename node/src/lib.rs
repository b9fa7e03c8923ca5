//! sealdb's node runtime: the servers a cluster's processes run, and what runs them
//! (DESIGN.md section 9). The `sealdb` binary (`main.rs`) parses its command line and calls
//! in here.
//!
//! - [`SequencerNode`] serves the sequencer: submissions, subscriptions, admin.
//! - [`ShardNode`] applies one shard's windows with the transaction core's [`txn::Step`] and
//!   serves its reads, verdicts and outcomes.
//! - [`NodeConfig`] (TOML), [`run`] (run one node on a listener until a shutdown future) and
//!   [`LocalProcesses`] (a development cluster of `sealdb` processes on loopback).
//! - [`serve_metrics`]: Prometheus metrics over HTTP; [`make_certificates`]: a development CA.
//! - [`shell`]: the binary's other commands (`dev`, `cert`, `put`, `get`, `scan`, `status`).
//! - [`allocator`]: the binaries' mimalloc settings.
//!
//! Dependencies point down: this crate uses the transaction core (`txn`), the wire contract
//! and clients (`client`), storage with RocksDB, and the sequencer; nothing but the binary,
//! the benchmark and the tests depends on it.

mod admin;
pub mod allocator;
pub mod backup;
mod certs;
mod config;
mod error;
mod metrics;
mod node;
mod sequencer;
mod server;
mod shard;
pub mod shell;

pub use crate::admin::Layout;
pub use crate::certs::{Certificates, make_certificates};
pub use crate::config::{NodeConfig, Role};
pub use crate::error::NodeError;
pub use crate::metrics::{LATENCY_BOUNDS, Metric, Value, render, serve_metrics};
pub use crate::node::{
    LocalProcesses, LocalSpec, Reclamation, StorageMib, init_logging, init_logging_from, run,
    stop_signals,
};
pub use crate::sequencer::{GroupSpec, MAX_SUBSCRIPTIONS, SequencerNode};
pub use crate::server::{
    MAX_CONNECTIONS, MAX_STREAMS_PER_CONNECTION, STOP_GRACE, connection_limit,
};
pub use crate::shard::{CheckpointMark, ShardConfig, ShardNode};
