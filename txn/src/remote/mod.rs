//! Cluster mode over gRPC (DESIGN.md section 9): the services nodes run and the clients that
//! call them, built on the `proto` crate.
//!
//! Every request and response carries its sender's HLC timestamp (`hlc`). The receiver
//! observes it, so causality carries across nodes, and refuses a timestamp more than
//! `max_offset` ahead of its own physical clock (DESIGN.md section 5): a server answers
//! `FAILED_PRECONDITION`, a client drops the response and returns [`RemoteError::ClockSkew`].
//!
//! - [`SequencerNode`] serves the sequencer; [`RemoteSequencer`] calls it.
//! - [`ShardNode`] applies one shard's windows and serves its reads, verdicts and outcomes.
//! - [`Client`] runs procedures, interactive transactions ([`RemoteTransaction`]) and reads
//!   at a timestamp against a cluster.
//! - [`NodeConfig`], [`run_node`] and [`LocalProcesses`] run nodes (the `sealdb` binary).
//! - [`serve_metrics`]: Prometheus metrics over HTTP.

mod admin;
mod client;
mod config;
mod metrics;
mod node;
mod sequencer;
mod shard;

use ::sequencer::TxnId;
use std::future::Future;

use clock::{Clock, Timestamp};
use proto::v1;
use storage::KeyRange;
use tonic::{Code, Status};

use crate::outcome::{AbortReason, Outcome};
use crate::procedure::Rows;

pub use self::admin::Layout;
pub use self::client::{Client, Cluster, RemoteSnapshot, RemoteTransaction, cluster_status};
pub use self::config::{NodeConfig, Role};
pub use self::metrics::{LATENCY_BOUNDS, Metric, Value, render, serve_metrics};
pub use self::node::{LocalProcesses, LocalSpec, init_logging, run_node, stop_signals};
pub use self::sequencer::{RemoteSequencer, SequencerNode, SliceDelivery};
pub use self::shard::{MAX_SCAN_ROWS, ShardConfig, ShardNode};

/// Failures of a call to another node.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// The other side's clock is more than `max_offset` ahead of ours, or ours of theirs.
    /// Nothing was done by a refused request; a refused response's effect is unknown.
    #[error("clock skew: {0}")]
    ClockSkew(String),
    /// The request was invalid (a malformed id, an unknown shard, an oversize entry); nothing
    /// changed. Retrying the same request will not help.
    #[error("refused: {0}")]
    Refused(String),
    /// The node could not be reached or stopped. For a submission, whether it was logged is
    /// unknown: submit it again with the same client id, which the log deduplicates.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The node answered something this client cannot read.
    #[error("bad response: {0}")]
    BadResponse(String),
}

impl From<Status> for RemoteError {
    fn from(status: Status) -> RemoteError {
        let message = status.message().to_string();
        match status.code() {
            Code::FailedPrecondition => RemoteError::ClockSkew(message),
            Code::InvalidArgument | Code::ResourceExhausted | Code::OutOfRange => {
                RemoteError::Refused(message)
            }
            _ => RemoteError::Unavailable(format!("{}: {message}", status.code())),
        }
    }
}

/// A server's connections from `listener`, with Nagle's algorithm off: small responses go
/// out at once instead of waiting for the peer's delayed ACK (40 ms on Linux).
fn incoming(listener: tokio::net::TcpListener) -> tonic::transport::server::TcpIncoming {
    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true))
}

/// Up to `limit` rows of `range` (one shard's part of a scan), read a page of at most
/// [`MAX_SCAN_ROWS`] at a time: `page(range, n)` reads up to `n` rows of `range`.
async fn paged<E, F, Fut>(mut range: KeyRange, limit: usize, mut page: F) -> Result<Rows, E>
where
    F: FnMut(KeyRange, usize) -> Fut,
    Fut: Future<Output = Result<Rows, E>>,
{
    let mut rows = Vec::new();
    while rows.len() < limit {
        let n = (limit - rows.len()).min(MAX_SCAN_ROWS as usize);
        let got = page(range.clone(), n).await?;
        let full = got.len() == n;
        if let Some((last, _)) = got.last() {
            range.start = last.iter().copied().chain([0]).collect();
        }
        rows.extend(got);
        if !full {
            break;
        }
    }
    Ok(rows)
}

/// This node's timestamp for an outgoing message.
fn stamp(clock: &Clock) -> u64 {
    clock.now().as_u64()
}

/// Observes an incoming request's timestamp, refusing it if it is too far ahead.
fn observe_request(clock: &Clock, hlc: u64) -> Result<(), Status> {
    clock
        .observe(Timestamp::from_u64(hlc))
        .map_err(|skew| Status::failed_precondition(skew.to_string()))
}

/// Observes an incoming response's timestamp, refusing it if it is too far ahead.
fn observe_response(clock: &Clock, hlc: u64) -> Result<(), RemoteError> {
    clock.observe(Timestamp::from_u64(hlc)).map_err(|skew| RemoteError::ClockSkew(skew.to_string()))
}

/// An outcome on the wire.
fn outcome_to_proto(txn: TxnId, outcome: &Outcome) -> v1::Outcome {
    use v1::outcome::Result as R;
    let id = Some(v1::TxnId { epoch: txn.epoch.0, index: txn.index });
    let (commit_ts, result) = match outcome {
        Outcome::Committed { ts, output } => {
            (ts.as_u64(), R::Committed(v1::Committed { output: output.clone() }))
        }
        Outcome::Conflict { key } => {
            (0, R::Conflict(v1::Conflict { key: key.clone().unwrap_or_default() }))
        }
        Outcome::Aborted(reason) => {
            let (kind, reason, key) = match reason {
                AbortReason::User(r) => ("user", r.clone(), Vec::new()),
                AbortReason::UnknownProcedure(n) => ("unknown_procedure", n.clone(), Vec::new()),
                AbortReason::OutsideDeclaredRanges(k) => {
                    ("outside_declared_ranges", String::new(), k.clone())
                }
                AbortReason::TooLarge(r) => ("too_large", r.clone(), Vec::new()),
                AbortReason::Malformed(r) => ("malformed", r.clone(), Vec::new()),
            };
            (0, R::Aborted(v1::Aborted { reason, kind: kind.into(), key }))
        }
    };
    v1::Outcome { txn: id, commit_ts, result: Some(result) }
}

/// An outcome from the wire.
fn outcome_from_proto(o: v1::Outcome) -> Result<Outcome, RemoteError> {
    use v1::outcome::Result as R;
    match o.result {
        Some(R::Committed(c)) => {
            Ok(Outcome::Committed { ts: Timestamp::from_u64(o.commit_ts), output: c.output })
        }
        Some(R::Conflict(c)) => Ok(Outcome::Conflict { key: (!c.key.is_empty()).then_some(c.key) }),
        Some(R::Aborted(a)) => Ok(Outcome::Aborted(match a.kind.as_str() {
            "unknown_procedure" => AbortReason::UnknownProcedure(a.reason),
            "outside_declared_ranges" => AbortReason::OutsideDeclaredRanges(a.key),
            "too_large" => AbortReason::TooLarge(a.reason),
            "malformed" => AbortReason::Malformed(a.reason),
            _ => AbortReason::User(a.reason),
        })),
        None => Err(RemoteError::BadResponse("an outcome without a result".into())),
    }
}
