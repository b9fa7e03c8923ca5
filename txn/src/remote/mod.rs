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
mod tls;

use ::sequencer::TxnId;
use std::future::Future;
use std::sync::Arc;
use std::task::Poll;

use clock::{Clock, Timestamp};
use prost::Message;
use proto::v1;
pub use proto::v1::RefusalKind;
use storage::KeyRange;
use tonic::{Code, Status};

use crate::outcome::{AbortReason, Outcome};
use crate::procedure::Rows;

pub use self::admin::Layout;
pub use self::client::{Client, Cluster, RemoteSnapshot, RemoteTransaction, cluster_status};
pub use self::config::{NodeConfig, Role};
pub use self::metrics::{LATENCY_BOUNDS, Metric, Value, render, serve_metrics};
pub use self::node::{LocalProcesses, LocalSpec, init_logging, run_node, stop_signals};
pub use self::sequencer::{MAX_SUBSCRIPTIONS, RemoteSequencer, SequencerNode, SliceDelivery};
pub use self::shard::{MAX_SCAN_ROWS, SCAN_RESPONSE_BYTES, ShardConfig, ShardNode};
pub use self::tls::{CLIENT_NAME, Certificates, NODE_NAME, Tls, make_certificates};

/// The largest gRPC message any sealdb server or client sends or accepts. Every server and
/// client is built with it ([`sized`]), so what one side may send the other accepts.
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// The largest window a sequencer may be configured to seal (`max_window_bytes`): a shard's
/// slice of a window (at most the window's entries, [`sequencer::Entry::size`], and a small
/// header) stays well below [`MAX_MESSAGE_BYTES`], so every logged entry is deliverable.
pub const MAX_WINDOW_BYTES: usize = 32 << 20;

/// A generated gRPC client or server with the message limits of [`MAX_MESSAGE_BYTES`].
macro_rules! sized {
    ($service:expr) => {
        $service
            .max_decoding_message_size($crate::remote::MAX_MESSAGE_BYTES)
            .max_encoding_message_size($crate::remote::MAX_MESSAGE_BYTES)
    };
}
use sized;

/// Failures of a call to another node.
#[derive(Debug, thiserror::Error)]
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
            _ => RemoteError::Unavailable(format!("{}: {message}", status.code())),
        }
    }
}

/// A refusal: nothing changed, and the status details say which rule (`kind`).
fn refuse(code: Code, kind: RefusalKind, message: impl Into<String>) -> Status {
    let details = v1::Refusal { kind: kind.into() }.encode_to_vec();
    Status::with_details(code, message, details.into())
}

/// A request breaking the protocol's rules.
fn malformed(message: impl Into<String>) -> Status {
    refuse(Code::InvalidArgument, RefusalKind::Malformed, message)
}

/// How long a stopping node waits for its server's open requests and connections to finish,
/// and for its apply thread, before it stops without them.
pub const STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// A running gRPC server task.
type ServerTask = tokio::task::JoinHandle<Result<(), tonic::transport::Error>>;

/// Waits for `server`, told to stop, to finish its open requests, for at most
/// [`STOP_GRACE`]; then drops what is left (an idle or stalled connection must not keep a
/// node from stopping).
async fn stop_server(mut server: ServerTask, node: &str) {
    match tokio::time::timeout(STOP_GRACE, &mut server).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => tracing::error!(node, error = %e, "server failed"),
        Ok(Err(e)) => tracing::error!(node, error = %e, "server task failed"),
        Err(_) => {
            tracing::warn!(node, "connections still open after the grace period; closing them");
            server.abort();
        }
    }
}

/// The most connections one server keeps open; it closes the ones past it at once (a node
/// out of file descriptors cannot write its log or its clock). Lower where the process may
/// open fewer files: see [`connection_limit`].
pub const MAX_CONNECTIONS: usize = 1024;

/// How many connections a server keeps open: [`MAX_CONNECTIONS`], or a quarter of the files
/// this process may open (its soft `RLIMIT_NOFILE`, from `/proc/self/limits`) if that is
/// less, so that a flood of connections leaves descriptors for storage, the log and the clock.
pub fn connection_limit() -> usize {
    let soft = std::fs::read_to_string("/proc/self/limits").ok().and_then(|limits| {
        let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
        line.split_whitespace().nth(3)?.parse::<usize>().ok()
    });
    match soft {
        Some(files) => (files / 4).clamp(8, MAX_CONNECTIONS),
        None => MAX_CONNECTIONS,
    }
}

/// The most requests (HTTP/2 streams) open at once on one connection.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 1024;

/// A gRPC server with sealdb's bounds: streams per connection, keepalive probes that close
/// connections to peers that went away, and a limit on streams reset before they are served
/// (the HTTP/2 rapid-reset attack).
/// With `tls`, it presents the node's certificate and requires one from every caller
/// ([`Tls`]).
fn server(tls: Option<&Tls>) -> Result<tonic::transport::Server, String> {
    let server = tonic::transport::Server::builder()
        .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(20)))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(10)))
        .http2_max_pending_accept_reset_streams(Some(256));
    match tls {
        Some(tls) => server.tls_config(tls.server()).map_err(|e| format!("TLS: {e}")),
        None => Ok(server),
    }
}

/// Where to reach the node at `addr` (`host:port`): over TLS, presenting this party's
/// certificate and accepting only a cluster node's, when `tls` is given.
pub fn endpoint(addr: &str, tls: Option<&Tls>) -> Result<tonic::transport::Endpoint, String> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let endpoint = tonic::transport::Endpoint::from_shared(format!("{scheme}://{addr}"))
        .map_err(|e| format!("address {addr:?}: {e}"))?;
    match tls {
        Some(tls) => endpoint.tls_config(tls.client()).map_err(|e| format!("TLS for {addr}: {e}")),
        None => Ok(endpoint),
    }
}

/// Says in the log what a node without TLS exposes; warns when that is beyond loopback.
fn warn_if_insecure(addr: std::net::SocketAddr, tls: Option<&Tls>, node: &str) {
    if tls.is_some() {
        return;
    }
    if addr.ip().is_loopback() {
        tracing::info!(node, %addr, "serving without TLS (loopback only)");
    } else {
        tracing::warn!(
            node, %addr,
            "serving without TLS beyond loopback: traffic is not encrypted, callers are not \
             authenticated and peer-only calls are open to anyone"
        );
    }
}

/// How long a new connection may stay silent before it is closed.
const FIRST_BYTES: std::time::Duration = std::time::Duration::from_secs(5);

/// A server's connections from `listener`, at most [`connection_limit`] open at once, with
/// Nagle's algorithm off: small responses go out at once instead of waiting for the peer's
/// delayed ACK (40 ms on Linux). The listener closes when the server drops the stream.
fn incoming(
    listener: tokio::net::TcpListener,
) -> tokio_stream::wrappers::ReceiverStream<std::io::Result<Connection>> {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let max = connection_limit();
    let permits = Arc::new(tokio::sync::Semaphore::new(max));
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = tx.closed() => return,
            };
            let stream = match accepted {
                Ok((stream, _)) => stream,
                // Out of descriptors, or a connection reset before it was accepted: the
                // server goes on, and the limit below keeps it from running out again.
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a connection");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                tracing::warn!(max, "too many connections; closing a new one");
                continue;
            };
            let _ = stream.set_nodelay(true);
            // A connection must start talking soon: one that does not is closed, so that
            // sockets left idle cannot hold the server's places for good.
            let tx = tx.clone();
            tokio::spawn(async move {
                let first = tokio::time::timeout(FIRST_BYTES, stream.peek(&mut [0u8; 1])).await;
                if let Ok(Ok(1..)) = first {
                    let _ = tx.send(Ok(Connection { stream, _permit: permit })).await;
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// An accepted connection, counted against [`connection_limit`] until it is closed.
struct Connection {
    stream: tokio::net::TcpStream,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl tonic::transport::server::Connected for Connection {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}

impl tokio::io::AsyncRead for Connection {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Connection {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Up to `limit` rows of `range` (one shard's part of a scan), read a page at a time:
/// `page(range, n)` reads up to `n` (at most [`MAX_SCAN_ROWS`]) rows of `range`, and says
/// whether it stopped early (for `n` or for the response size bound).
async fn paged<E, F, Fut>(mut range: KeyRange, limit: usize, mut page: F) -> Result<Rows, E>
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

/// How long a node waits for each shard's status when it checks whose clock is off.
const CLOCK_CHECK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// How many of `shards` accept this node's clock and how many refuse it (or answer with a
/// clock this node refuses), asking each once; those that do not answer (down, or fenced)
/// count for neither. A node that most others disagree with is the one out of bounds.
async fn clock_agreement<'a>(
    shards: impl IntoIterator<
        Item = &'a proto::v1::shard_client::ShardClient<tonic::transport::Channel>,
    >,
    clock: &Arc<Clock>,
) -> (usize, usize) {
    let mut calls = tokio::task::JoinSet::new();
    for client in shards {
        let (mut client, clock) = (client.clone(), clock.clone());
        calls.spawn(async move {
            let mut request = tonic::Request::new(v1::StatusRequest { hlc: stamp(&clock) });
            request.set_timeout(CLOCK_CHECK_TIMEOUT);
            match client.status(request).await {
                Ok(r) => Some(observe_response(&clock, r.into_inner().hlc).is_ok()),
                Err(status) if status.code() == Code::FailedPrecondition => Some(false),
                Err(_) => None,
            }
        });
    }
    let answers = calls.join_all().await;
    let agree = answers.iter().filter(|a| **a == Some(true)).count();
    let disagree = answers.iter().filter(|a| **a == Some(false)).count();
    (agree, disagree)
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
