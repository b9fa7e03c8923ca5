//! Cluster mode over gRPC (DESIGN.md section 9): the services nodes run and the clients that
//! call them, built on the `proto` crate.
//!
//! Every request and response carries its sender's HLC timestamp (`hlc`). The receiver
//! observes it, so causality carries across nodes, and refuses a timestamp more than
//! `max_offset` ahead of its own physical clock (DESIGN.md section 5): a server answers
//! `FAILED_PRECONDITION`, a client drops the response and returns [`RemoteError::ClockSkew`].
//!
//! So far: the sequencer ([`SequencerNode`], [`RemoteSequencer`]). Shard servers, the
//! `Client` with the `Database`'s operations, and the `sealdb` binary are still to come.

mod sequencer;

use clock::{Clock, Timestamp};
use tonic::{Code, Status};

pub use self::sequencer::{RemoteSequencer, SequencerNode, SliceDelivery};

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
