//! [`GrpcPeers`]: a shard server's clients of the other shards' replicas, for the remote reads
//! and verdict pulls its window step asks for (any replica of a shard answers the same). A
//! call goes round the replicas until one answers or this node stops: a window cannot be
//! applied without it. A peer that refuses the request (it would never succeed) is a failure
//! of the shard, typed as [`PeerError::Refused`].

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
use client::{RefusalKind, RemoteError, Replicas, SetupError, Tls, got_many, paged};
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
        /// Which rule, if the peer said (`OutsideRetention`: this replica is replaying a
        /// window older than the peer keeps versions for).
        kind: Option<RefusalKind>,
        /// Why.
        why: String,
    },
}

/// Clients of the other shards' replicas, retried until one answers or this node stops.
pub(super) struct GrpcPeers {
    replicas: Replicas,
    me: ShardId,
    clock: Arc<Clock>,
    state: Arc<State>,
}

impl GrpcPeers {
    /// Clients of every shard's replicas (`addrs[i]`: shard `i`'s, comma-separated); this
    /// node is replica `replica` of shard `me`.
    pub(super) fn new(
        addrs: &[String],
        me: ShardId,
        replica: usize,
        clock: Arc<Clock>,
        state: Arc<State>,
        tls: Option<&Tls>,
    ) -> Result<GrpcPeers, SetupError> {
        let replicas = Replicas::new(addrs, tls, replica)?;
        Ok(GrpcPeers { replicas, me, clock, state })
    }

    /// Clients of every other node serving a shard: the other shards' replicas and this
    /// shard's other replicas.
    pub(super) fn clients(&self, replica: usize) -> Vec<ShardClient<Channel>> {
        (0..self.replicas.shards() as u32)
            .map(ShardId)
            .flat_map(|s| {
                let n = self.replicas.addrs(s).len();
                (0..n).filter(move |r| s != self.me || *r != replica).map(move |r| (s, r))
            })
            .map(|(s, r)| self.replicas.client(s, r))
            .collect()
    }

    /// The other shards' replicas this replica pushes to: of each, those whose index is this
    /// replica's modulo this shard's count of replicas ([`super::push`]).
    pub(super) fn lane(&self, replica: usize) -> Vec<(ShardId, ShardClient<Channel>)> {
        let mine = self.replicas.addrs(self.me).len();
        (0..self.replicas.shards() as u32)
            .map(ShardId)
            .filter(|s| *s != self.me)
            .flat_map(|s| {
                let n = self.replicas.addrs(s).len();
                (0..n).filter(move |r| r % mine == replica).map(move |r| (s, r))
            })
            .map(|(s, r)| (s, self.replicas.client(s, r)))
            .collect()
    }

    /// This shard's other replicas, with their addresses.
    pub(super) fn fellows(&self, replica: usize) -> Vec<(String, ShardClient<Channel>)> {
        let addrs = self.replicas.addrs(self.me);
        (0..addrs.len())
            .filter(|r| *r != replica)
            .map(|r| (addrs[r].clone(), self.replicas.client(self.me, r)))
            .collect()
    }

    /// This node's clock.
    pub(super) fn clock(&self) -> &Arc<Clock> {
        &self.clock
    }

    /// Calls `shard` (any replica) with `call` until one answers; gives up only when this node
    /// stops or the peer refuses the request as invalid (a bug: it would never succeed).
    pub(super) async fn call<T, F, Fut>(&self, shard: ShardId, mut call: F) -> Result<T, PeerError>
    where
        F: FnMut(ShardClient<Channel>, u64) -> Fut,
        Fut: std::future::Future<Output = Result<(T, u64), Status>>,
    {
        if shard == self.me {
            let why = "a shard called itself".into();
            return Err(PeerError::Refused { shard, kind: None, why });
        }
        loop {
            let answer =
                self.replicas.call(shard, &self.clock, self.state.stopped(), &mut call).await;
            let failure = match answer {
                Ok(answer) => return Ok(answer),
                Err(RemoteError::Refused { kind, why }) => {
                    return Err(PeerError::Refused { shard, kind: Some(kind), why });
                }
                Err(e) => e,
            };
            if self.state.stopping.load(Ordering::SeqCst) {
                return Err(PeerError::Stopping);
            }
            // Clock skew or an answer this node cannot read: the window waits for it.
            tracing::warn!(peer = shard.0, error = %failure, "peer call failing; retrying");
            tokio::time::sleep(PEER_RETRY).await;
        }
    }

    /// The values of `keys` (all on `shard`) at `at`, in order: one request, or a few if the
    /// values are large or the keys many.
    pub(super) async fn get_many(
        &self,
        shard: ShardId,
        keys: &[Vec<u8>],
        at: Timestamp,
        window: Epoch,
    ) -> Result<Vec<Option<Vec<u8>>>, PeerError> {
        let ask = |rest: Vec<Vec<u8>>| {
            self.call(shard, move |mut c, hlc| {
                let request = v1::GetManyRequest {
                    hlc,
                    keys: rest.clone(),
                    read_ts: at.as_u64(),
                    for_window: window.0,
                };
                async move {
                    let r = c.get_many(request).await?.into_inner();
                    Ok((r.values.into_iter().map(|v| v.value).collect(), r.hlc))
                }
            })
        };
        got_many(keys, ask, |why| PeerError::Refused { shard, kind: None, why }).await
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
