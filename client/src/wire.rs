//! The wire contract both sides of every call keep: message size limits, HLC stamps on every
//! message, refusals with typed details (`sealdb.v1.Refusal`), outcomes, paged scans and how a
//! client reaches a node.
//!
//! Every request and response carries its sender's HLC timestamp (`hlc`). The receiver
//! observes it, so causality carries across nodes, and refuses a timestamp more than
//! `max_offset` ahead of its own physical clock (DESIGN.md section 5): a server answers
//! `FAILED_PRECONDITION`, a client drops the response and returns [`RemoteError::ClockSkew`].

use std::future::Future;

use clock::{Clock, Timestamp};
use prost::Message;
use proto::v1;
pub use proto::v1::RefusalKind;
use storage::KeyRange;
use tonic::{Code, Status};
use txn::{Outcome, Rows};

use crate::tls::Tls;

/// The most rows one `Scan` returns.
pub const MAX_SCAN_ROWS: u32 = 10_000;

/// A `Scan` stops once its rows hold this many bytes of keys and values (the row crossing it
/// included): a response stays well below every receiver's message limit.
pub const SCAN_RESPONSE_BYTES: usize = 4 << 20;

/// The largest gRPC message any sealdb server or client sends or accepts. Every server and
/// client is built with it (`sized!`), so what one side may send the other accepts.
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// The largest window a sequencer may be configured to seal (`max_window_bytes`): a shard's
/// slice of a window (at most the window's entries, [`sequencer::Entry::size`], and a small
/// header) stays well below [`MAX_MESSAGE_BYTES`], so every logged entry is deliverable.
pub const MAX_WINDOW_BYTES: usize = 32 << 20;

/// The most items one batch (`SubmitMany`, `AwaitOutcomes`) holds.
pub const MAX_BATCH: usize = 1024;

/// A generated gRPC client or server with the message limits of [`MAX_MESSAGE_BYTES`].
#[macro_export]
macro_rules! sized {
    ($service:expr) => {
        $service
            .max_decoding_message_size($crate::MAX_MESSAGE_BYTES)
            .max_encoding_message_size($crate::MAX_MESSAGE_BYTES)
    };
}

/// Failures of a call to another node.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RemoteError {
    /// The other side's clock is more than `max_offset` ahead of ours, or ours of theirs.
    /// Nothing was done by a refused request; a refused response's effect is unknown.
    #[error("clock skew: {0}")]
    ClockSkew(String),
    /// The request was invalid (a malformed id, an unknown shard, an oversize entry) or over
    /// a bound; nothing changed. Retrying the same request will not help, unless `kind` is
    /// [`RefusalKind::Busy`].
    #[error("refused: {why}")]
    Refused {
        /// Which rule, as the server said in the status details.
        kind: RefusalKind,
        /// The server's message.
        why: String,
    },
    /// The node could not be reached or stopped. For a submission, whether it was logged is
    /// unknown: submit it again with the same client id, which the log deduplicates.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// A sequencer group node that does not lead the group: nothing was logged. Submit to the
    /// leader, at `leader` when the node knew it.
    #[error("not the leader{}", .leader.as_ref().map(|l| format!(" (the leader is at {l})")).unwrap_or_default())]
    NotLeader {
        /// The leader's address.
        leader: Option<String>,
    },
    /// The node answered something this client cannot read.
    #[error("bad response: {0}")]
    BadResponse(String),
}

impl From<Status> for RemoteError {
    fn from(status: Status) -> RemoteError {
        let message = status.message().to_string();
        match status.code() {
            Code::FailedPrecondition => RemoteError::ClockSkew(message),
            Code::PermissionDenied | Code::Unauthenticated => {
                RemoteError::Refused { kind: RefusalKind::NotAllowed, why: message }
            }
            Code::InvalidArgument | Code::ResourceExhausted | Code::OutOfRange => {
                let kind =
                    v1::Refusal::decode(status.details()).map_or(RefusalKind::Other, |r| r.kind());
                RemoteError::Refused { kind, why: message }
            }
            Code::Unavailable => match v1::Refusal::decode(status.details()) {
                Ok(r) if r.kind() == RefusalKind::NotLeader => {
                    RemoteError::NotLeader { leader: (!r.leader.is_empty()).then_some(r.leader) }
                }
                _ => RemoteError::Unavailable(format!("{}: {message}", status.code())),
            },
            _ => RemoteError::Unavailable(format!("{}: {message}", status.code())),
        }
    }
}

/// How one item of a batch failed: the status it would have had alone.
pub fn item_status(status: &Status) -> v1::ItemStatus {
    v1::ItemStatus {
        code: status.code() as i32,
        message: status.message().to_string(),
        details: status.details().to_vec(),
    }
}

/// The status one item of a batch failed with.
pub fn item_failure(item: v1::ItemStatus) -> Status {
    Status::with_details(Code::from_i32(item.code), item.message, item.details.into())
}

/// A refusal: nothing changed, and the status details say which rule (`kind`).
pub fn refuse(code: Code, kind: RefusalKind, message: impl Into<String>) -> Status {
    let details = v1::Refusal { kind: kind.into(), leader: String::new() }.encode_to_vec();
    Status::with_details(code, message, details.into())
}

/// A request breaking the protocol's rules.
pub fn malformed(message: impl Into<String>) -> Status {
    refuse(Code::InvalidArgument, RefusalKind::Malformed, message)
}

/// Where to reach the node at `addr` (`host:port`): over TLS, presenting this party's
/// certificate and accepting only a cluster node's, when `tls` is given.
pub fn endpoint(addr: &str, tls: Option<&Tls>) -> Result<tonic::transport::Endpoint, SetupError> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let endpoint = tonic::transport::Endpoint::from_shared(format!("{scheme}://{addr}"))
        .map_err(|e| SetupError::Address { addr: addr.into(), why: e.to_string() })?;
    match tls {
        Some(tls) => endpoint.tls_config(tls.client()).map_err(|e| SetupError::Tls(e.to_string())),
        None => Ok(endpoint),
    }
}

/// Why a connection to a node could not even be set up: nothing was sent.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The address is not `host:port`.
    #[error("address {addr:?}: {why}")]
    Address {
        /// The address given.
        addr: String,
        /// What is wrong with it.
        why: String,
    },
    /// A file of TLS material could not be read.
    #[error("{path}: {source}", path = .path.display())]
    Read {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The TLS material cannot be used.
    #[error("TLS: {0}")]
    Tls(String),
}

/// Up to `limit` rows of `range` (one shard's part of a scan), read a page at a time:
/// `page(range, n)` reads up to `n` (at most [`MAX_SCAN_ROWS`]) rows of `range`, and says
/// whether it stopped early (for `n` or for the response size bound).
pub async fn paged<E, F, Fut>(mut range: KeyRange, limit: usize, mut page: F) -> Result<Rows, E>
where
    F: FnMut(KeyRange, usize) -> Fut,
    Fut: Future<Output = Result<(Rows, bool), E>>,
{
    let mut rows = Vec::new();
    while rows.len() < limit {
        let n = (limit - rows.len()).min(MAX_SCAN_ROWS as usize);
        let (got, more) = page(range.clone(), n).await?;
        let Some((last, _)) = got.last() else { break };
        range.start = last.iter().copied().chain([0]).collect();
        rows.extend(got);
        if !more {
            break;
        }
    }
    rows.truncate(limit);
    Ok(rows)
}

/// The values of `keys` (all on one shard), in order, read a request at a time: `ask(rest)`
/// reads the values of a prefix of `rest` (at most [`MAX_SCAN_ROWS`] keys; a shard answers
/// fewer when the values are large). An answer that is empty or longer than asked is refused
/// with `bad(why)`, so that a faulty shard cannot make this loop for ever.
pub async fn got_many<E, F, Fut>(
    keys: &[Vec<u8>],
    mut ask: F,
    bad: impl Fn(String) -> E,
) -> Result<Vec<Option<Vec<u8>>>, E>
where
    F: FnMut(Vec<Vec<u8>>) -> Fut,
    Fut: Future<Output = Result<Vec<Option<Vec<u8>>>, E>>,
{
    let mut values = Vec::with_capacity(keys.len());
    while values.len() < keys.len() {
        let rest = &keys[values.len()..];
        let rest = &rest[..rest.len().min(MAX_SCAN_ROWS as usize)];
        let got = ask(rest.to_vec()).await?;
        if got.is_empty() || got.len() > rest.len() {
            return Err(bad(format!("answered {} of {} keys", got.len(), rest.len())));
        }
        values.extend(got);
    }
    Ok(values)
}

/// This node's timestamp for an outgoing message.
pub fn stamp(clock: &Clock) -> u64 {
    clock.now().as_u64()
}

/// Observes an incoming request's timestamp, refusing it if it is too far ahead.
pub fn observe_request(clock: &Clock, hlc: u64) -> Result<(), Status> {
    clock
        .observe(Timestamp::from_u64(hlc))
        .map_err(|skew| Status::failed_precondition(skew.to_string()))
}

/// Observes an incoming response's timestamp, refusing it if it is too far ahead.
pub fn observe_response(clock: &Clock, hlc: u64) -> Result<(), RemoteError> {
    clock.observe(Timestamp::from_u64(hlc)).map_err(|skew| RemoteError::ClockSkew(skew.to_string()))
}

/// An outcome from the wire.
pub fn outcome_from_proto(o: v1::Outcome) -> Result<Outcome, RemoteError> {
    txn::outcome_from_proto(o).map(|(_, outcome)| outcome).ok_or_else(|| {
        RemoteError::BadResponse("an outcome without a result or transaction".into())
    })
}
