//! What every node's gRPC server shares: its bounds (connections, streams, silent
//! connections, keepalive), TLS, stopping within a grace period, and the check of whose clock
//! is out of bounds.

use std::sync::Arc;
use std::task::Poll;

use client::{SetupError, Tls, observe_response, stamp};

use crate::NodeError;
use clock::Clock;
use proto::v1;
use tonic::Code;

/// How long a stopping node waits for its server's open requests and connections to finish,
/// and for its apply thread, before it stops without them.
pub const STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// A running gRPC server task.
type ServerTask = tokio::task::JoinHandle<Result<(), tonic::transport::Error>>;

/// Waits for `server`, told to stop, to finish its open requests, for at most
/// [`STOP_GRACE`]; then drops what is left (an idle or stalled connection must not keep a
/// node from stopping).
pub(crate) async fn stop_server(mut server: ServerTask, node: &str) {
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
/// this process may open ([`storage::open_files_limit`]) if that is less, so that a flood of
/// connections leaves descriptors for storage (which keeps up to half of them for table
/// files), the log and the clock.
pub fn connection_limit() -> usize {
    match storage::open_files_limit() {
        Some(files) => usize::try_from(files / 4).unwrap_or(usize::MAX).clamp(8, MAX_CONNECTIONS),
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
pub(crate) fn server(tls: Option<&Tls>) -> Result<tonic::transport::Server, NodeError> {
    let server = tonic::transport::Server::builder()
        .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(20)))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(10)))
        .http2_max_pending_accept_reset_streams(Some(256));
    match tls {
        Some(tls) => server
            .tls_config(tls.server())
            .map_err(|e| NodeError::Setup(SetupError::Tls(e.to_string()))),
        None => Ok(server),
    }
}

/// Says in the log what a node without TLS exposes; warns when that is beyond loopback.
pub(crate) fn warn_if_insecure(addr: std::net::SocketAddr, tls: Option<&Tls>, node: &str) {
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
pub(crate) fn incoming(
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
pub(crate) struct Connection {
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

/// How long a node waits for each shard's status when it checks whose clock is off.
const CLOCK_CHECK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// How many of `shards` accept this node's clock and how many refuse it (or answer with a
/// clock this node refuses), asking each once; those that do not answer (down, or fenced)
/// count for neither. A node that most others disagree with is the one out of bounds.
pub(crate) async fn clock_agreement<'a>(
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
