//! The sealdb cluster client: [`Client`] runs procedures, interactive transactions
//! ([`RemoteTransaction`]) and reads at a timestamp ([`RemoteSnapshot`]) against a cluster,
//! routing each request to the shards that own its keys; it implements [`txn::Store`], so
//! code written against the embedded database runs against a cluster.
//!
//! Also here, because both sides of every call keep it: the wire contract ([`wire`]: message
//! limits, HLC stamps, typed refusals, outcomes, paged scans), TLS configuration ([`Tls`]),
//! and the sequencer's client ([`RemoteSequencer`]), which shard servers use too. Links no
//! RocksDB: it depends on the transaction core, the generated gRPC code and tonic only.

mod client;
mod coalesce;
mod replicas;
mod sequencer;
mod tls;
mod watch;
pub mod wire;

pub use crate::client::{
    Client, Cluster, PATIENCE, RemoteSnapshot, RemoteTransaction, cluster_status, group_leader,
    replicas_converged,
};
pub use crate::replicas::{ATTEMPT, Replicas, fails_over, replica_addrs};
pub use crate::sequencer::{RemoteSequencer, SliceDelivery};
pub use crate::tls::{CLIENT_NAME, NODE_NAME, Tls, require_node};
pub use crate::wire::{
    MAX_BATCH, MAX_MESSAGE_BYTES, MAX_SCAN_ROWS, MAX_WINDOW_BYTES, RefusalKind, RemoteError,
    SCAN_RESPONSE_BYTES, SetupError, endpoint, got_many, item_failure, item_status, malformed,
    observe_request, observe_response, outcome_from_proto, paged, refuse, stamp,
};
