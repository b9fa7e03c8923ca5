//! [`GrpcPeers`]: a shard server's clients of the other shards, for the remote reads and
//! verdict pulls its window step asks for. A call is retried until the peer answers or this
//! node stops: a window cannot be applied without it. A peer that refuses the request (it
//! would never succeed) is a failure of the shard, typed as [`PeerError::Refused`].

use std::sync::Arc;
use std::sync::atomic::Ordering;

use ::sequencer::{ShardId, TxnId};
use clock::{Clock, Epoch, Timestamp};
use proto::v1;
use proto::v1::shard_client::ShardClient;
use storage::KeyRange;
use tonic::Status;
use tonic::transport::Channel;

use super::{PEER_RETRY, State};
use client::{RemoteError, SetupError, Tls, endpoint, observe_response, paged, sized, stamp};
use txn::{Rows, range_to_proto};

/// Why a call to a peer gave up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum PeerError {
    /// This node is stopping.
    #[error("stopping")]
    Stopping,
    /// The peer refused the request: asking again cannot help.
    #[error("shard {shard} refused: {why}", shard = .shard.0)]
    Refused {
        /// The peer.
        shard: ShardId,
        /// Why.
        why: String,
    },
}

/// Clients of the other shards, retried until they answer or this node stops.
pub(super) struct GrpcPeers {
    clients: Vec<Option<ShardClient<Channel>>>,
    clock: Arc<Clock>,
    state: Arc<State>,
}

impl GrpcPeers {
    pub(super) fn new(
        addrs: &[String],
        me: ShardId,
        clock: Arc<Clock>,
        state: Arc<State>,
        tls: Option<&Tls>,
    ) -> Result<GrpcPeers, SetupError> {
        let clients = addrs
            .iter()
            .enumerate()
            .map(|(i, addr)| {
                if i == me.0 as usize {
                    return Ok(None);
                }
                let endpoint = endpoint(addr, tls)?;
                Ok(Some(sized!(ShardClient::new(endpoint.connect_lazy()))))
            })
            .collect::<Result<_, SetupError>>()?;
        Ok(GrpcPeers { clients, clock, state })
    }

    /// The clients of the other shards.
    pub(super) fn clients(&self) -> impl Iterator<Item = &ShardClient<Channel>> {
        self.clients.iter().flatten()
    }

    /// This node's clock.
    pub(super) fn clock(&self) -> &Arc<Clock> {
        &self.clock
    }

    /// Calls `shard` with `call` until it answers; gives up only when this node stops or the
    /// peer refuses the request as invalid (a bug: the request would never succeed).
    pub(super) async fn call<T, F, Fut>(&self, shard: ShardId, mut call: F) -> Result<T, PeerError>
    where
        F: FnMut(ShardClient<Channel>, u64) -> Fut,
        Fut: std::future::Future<Output = Result<(T, u64), Status>>,
    {
        let client = self.clients[shard.0 as usize]
            .clone()
            .ok_or(PeerError::Refused { shard, why: "a shard called itself".into() })?;
        let mut attempt = 0u64;
        loop {
            attempt += 1;
            let answer = tokio::select! {
                answer = call(client.clone(), stamp(&self.clock)) => answer,
                () = self.state.stopped() => return Err(PeerError::Stopping),
            };
            let failure = match answer {
                Ok((answer, hlc)) => match observe_response(&self.clock, hlc) {
                    Ok(()) => return Ok(answer),
                    Err(e) => e,
                },
                Err(status) => match RemoteError::from(status) {
                    RemoteError::Refused { why, .. } => {
                        return Err(PeerError::Refused { shard, why });
                    }
                    e => e,
                },
            };
            // A window waits for this: say so, without flooding the log.
            if attempt == 10 || attempt.is_multiple_of(500) {
                tracing::warn!(peer = shard.0, attempt, error = %failure, "peer call failing; retrying");
            } else {
                tracing::debug!(peer = shard.0, error = %failure, "peer call failed; retrying");
            }
            if self.state.stopping.load(Ordering::SeqCst) {
                return Err(PeerError::Stopping);
            }
            tokio::time::sleep(PEER_RETRY).await;
        }
    }

    pub(super) async fn get(
        &self,
        shard: ShardId,
        key: &[u8],
        at: Timestamp,
        window: Epoch,
    ) -> Result<Option<Vec<u8>>, PeerError> {
        self.call(shard, |mut c, hlc| {
            let request = v1::GetRequest {
                hlc,
                key: key.to_vec(),
                read_ts: at.as_u64(),
                for_window: window.0,
            };
            async move {
                let r = c.get(request).await?.into_inner();
                Ok((r.found.map(|kv| kv.value), r.hlc))
            }
        })
        .await
    }

    pub(super) async fn scan(
        &self,
        shard: ShardId,
        range: &KeyRange,
        at: Timestamp,
        window: Epoch,
        limit: usize,
    ) -> Result<Rows, PeerError> {
        paged(range.clone(), limit, |range, n| {
            self.call(shard, move |mut c, hlc| {
                let request = v1::ScanRequest {
                    hlc,
                    range: Some(range_to_proto(&range)),
                    read_ts: at.as_u64(),
                    limit: n as u32,
                    for_window: window.0,
                };
                async move {
                    let r = c.scan(request).await?.into_inner();
                    let rows: Rows = r.rows.into_iter().map(|kv| (kv.key, kv.value)).collect();
                    Ok(((rows, r.more), r.hlc))
                }
            })
        })
        .await
    }

    pub(super) async fn verdicts(
        &self,
        shard: ShardId,
        e: Epoch,
    ) -> Result<Vec<(TxnId, bool)>, PeerError> {
        self.call(shard, |mut c, hlc| async move {
            let r = c.verdicts(v1::VerdictsRequest { hlc, epoch: e.0 }).await?.into_inner();
            let verdicts = r
                .verdicts
                .into_iter()
                .map(|v| (TxnId { epoch: Epoch(v.epoch), index: v.index }, v.commit))
                .collect();
            Ok((verdicts, r.hlc))
        })
        .await
    }
}
