//! The sequencer group (DESIGN.md section 6): the window log replicated by `openraft` across
//! 2f+1 sequencer nodes, so that a window is durable once a majority has fsynced it and the
//! loss of a minority loses no acknowledged commit.
//!
//! ```text
//!   leader: seal(entries, ts) ──propose──> raft log (every node: fsync before "flushed")
//!                                             │ committed by a majority
//!                                             v
//!   every node's state machine: dedup ids, assign epoch = last + 1, ts > last ts ──> Window
//! ```
//!
//! - [`TypeConfig`]: what a raft entry carries: a [`Proposal`] (a sealed window's entries and
//!   the leader's timestamp); its response is a [`Sealed`] (the epoch and timestamp the window
//!   got, and each entry's id).
//! - [`LogStore`]: the raft log and vote on disk, appended and fsynced before openraft is
//!   told an append is flushed, the vote fsynced before it is acknowledged.
//! - [`StateMachine`]: epochs, timestamps and deduplication ids, and the committed windows;
//!   snapshots on disk.
//! - [`GroupSequencer`]: a node of the group as a sequencer: submissions sealed into
//!   proposals by the leader, receipts once committed, subscriptions to committed windows and
//!   logged idle ticks from any node.
//! - [`GrpcNetwork`] and [`RaftService`]: raft's messages between sequencer nodes over gRPC
//!   (`sealdb.v1.Raft`), HLC-stamped and node-only under TLS like every other peer call.
//!
//! Invariants kept here, on every node alike (the state machine is a function of the
//! committed log):
//!
//! - Epochs are assigned when a window is applied, consecutively, so two leaders can never
//!   produce two windows with one epoch.
//! - Window timestamps strictly increase along the log, whoever proposed them: a leader whose
//!   clock is behind its predecessor's gets the predecessor's last timestamp plus one tick.
//! - A client id already in a committed window is not logged again: its receipt points to the
//!   first one (exactly-once across leader changes and resubmissions).
//!
//! Not yet here (issue 15): the `sealdb` node running a group (configuration, the service
//! answering `NOT_LEADER` with the leader's address, clients and shards following it), and the
//! log's truncation below the shards' checkpoints (issue 16).

mod log_store;
mod runtime;
mod sequencer;
mod state_machine;
mod transport;
mod types;

pub use crate::log_store::LogStore;
pub use crate::runtime::{Runtime, seed_this_thread};
pub use crate::sequencer::{CommitStats, GroupConfig, GroupSequencer, GroupView};
pub use crate::state_machine::{StateMachine, StateView};
pub use crate::transport::{GrpcConn, GrpcNetwork, RaftService};
pub use crate::types::{
    NodeId, Proposal, ProposedEntry, Raft, Receipt, Sealed, TypeConfig, raft_config,
};
