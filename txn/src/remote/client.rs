//! [`Client`]: a cluster's transactions from another process, over gRPC.
//!
//! `call` logs a procedure call through the sequencer, then asks the entry's lowest
//! participant shard for its outcome, which that shard gives after commit-wait. Reads at a
//! timestamp go to the shard owning each key and wait for its safe time.
//!
//! What a network failure means for a call is reported, never guessed:
//!
//! - Before the sequencer answers, the entry may or may not be logged. The client submits it
//!   again under the same client id (the log deduplicates it) until the sequencer answers or
//!   it gives up, and then returns [`TxnError::OutcomeUnknown`].
//! - After the sequencer answered, the entry is logged and will be decided. The client asks
//!   the shard again until it answers; a shard that restarted since does not know outcomes of
//!   windows it applied before, and the call returns [`TxnError::OutcomeUnknown`].

use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ::sequencer::{ClientId, Entry, ShardId, TxnId};
use clock::{Clock, Timestamp};
use proto::v1;
use proto::v1::admin_client::AdminClient;
use proto::v1::shard_client::ShardClient;
use storage::KeyRange;
use tonic::Code;
use tonic::transport::{Channel, Endpoint};

use super::{RemoteError, RemoteSequencer, observe_response, outcome_from_proto, stamp};
use crate::database::output;
use crate::error::TxnError;
use crate::procedure::{Registry, Rows};
use crate::request::{participants, procedure_request, range_to_proto};
use crate::shard_map::ShardMap;
use crate::transaction::ReadAt;

/// How long a call keeps trying to reach a node before giving up.
const PATIENCE: Duration = Duration::from_secs(10);
const RETRY: Duration = Duration::from_millis(20);

/// Where a cluster's nodes are, and what it runs: the same on every node and client.
#[derive(Clone)]
pub struct Cluster {
    /// The sequencer's address (`host:port`).
    pub sequencer: String,
    /// Every shard's address, by shard id.
    pub shards: Vec<String>,
    /// Which shard owns which keys.
    pub map: ShardMap,
    /// The registered procedures (a client computes a call's key ranges with them).
    pub procedures: Registry,
}

/// A connection to a sealdb cluster.
pub struct Client {
    sequencer: RemoteSequencer,
    shards: Vec<ShardClient<Channel>>,
    map: ShardMap,
    procedures: Registry,
    clock: Arc<Clock>,
    salt: u64,
    next: AtomicU64,
}

impl Client {
    /// A client of `cluster`, stamping its messages with `clock`. Connects lazily: the first
    /// call finds out if a node is down.
    pub fn new(cluster: &Cluster, clock: Arc<Clock>) -> Result<Client, TxnError> {
        if cluster.shards.len() != cluster.map.len() as usize {
            return Err(TxnError::Unavailable(format!(
                "{} shard addresses for a map of {} shards",
                cluster.shards.len(),
                cluster.map.len()
            )));
        }
        let sequencer = RemoteSequencer::lazy(&cluster.sequencer, clock.clone())
            .map_err(TxnError::Unavailable)?;
        let shards = cluster
            .shards
            .iter()
            .map(|addr| {
                Endpoint::from_shared(format!("http://{addr}"))
                    .map(|e| ShardClient::new(e.connect_lazy()))
                    .map_err(|e| TxnError::Unavailable(format!("shard address {addr:?}: {e}")))
            })
            .collect::<Result<_, _>>()?;
        // Client ids must not repeat across clients: a random salt per client.
        let salt = RandomState::new().hash_one((std::process::id(), clock.now().as_u64()));
        Ok(Client {
            sequencer,
            shards,
            map: cluster.map.clone(),
            procedures: cluster.procedures.clone(),
            clock,
            salt,
            next: AtomicU64::new(0),
        })
    }

    /// Connects to the cluster whose sequencer is at `addr`: asks it for the cluster's layout
    /// (shard addresses and map). Calls may use the built-in procedures
    /// ([`builtin::registry`](crate::builtin::registry)); [`Client::new`] takes others.
    pub async fn connect(addr: &str, clock: Arc<Clock>) -> Result<Client, TxnError> {
        let status = cluster_status(addr, &clock).await?;
        let map = ShardMap::new(status.splits)
            .map_err(|e| TxnError::Unavailable(format!("the sequencer at {addr} sent {e}")))?;
        let cluster = Cluster {
            sequencer: addr.to_string(),
            shards: status.shard_addrs,
            map,
            procedures: crate::builtin::registry(),
        };
        Client::new(&cluster, clock)
    }

    /// The shard map.
    pub fn shard_map(&self) -> &ShardMap {
        &self.map
    }

    /// Runs procedure `name` with `args` as a read-write transaction: its output once it is
    /// committed, durable and past commit-wait.
    pub async fn call(&self, name: &str, args: &[u8]) -> Result<Vec<u8>, TxnError> {
        let request = procedure_request(&self.procedures, name, args)?;
        let participants = participants(&self.map, &request)?;
        let id = ClientId(
            (u128::from(self.salt) << 64) | u128::from(self.next.fetch_add(1, Ordering::Relaxed)),
        );
        let entry = Entry::new(id, participants.clone(), request.encode().into());
        let txn = self.submit(&entry).await?;
        output(self.outcome(participants[0], txn).await?)
    }

    /// Logs `entry`, resubmitting it after failures that leave its fate unknown.
    async fn submit(&self, entry: &Entry) -> Result<TxnId, TxnError> {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        let mut attempts = 0;
        loop {
            attempts += 1;
            match self.sequencer.submit(entry).await {
                Ok(receipt) => return Ok(receipt.txn),
                Err(RemoteError::Refused(why)) if why.contains("exceeds") => {
                    return Err(TxnError::TooLarge(why));
                }
                Err(RemoteError::Refused(why) | RemoteError::BadResponse(why)) => {
                    return Err(TxnError::Unavailable(format!("the sequencer refused: {why}")));
                }
                // Refused on the way in: nothing logged.
                Err(RemoteError::ClockSkew(why)) if attempts == 1 => {
                    return Err(TxnError::ClockSkew(why));
                }
                Err(e) => {
                    if tokio::time::Instant::now() >= deadline {
                        tracing::warn!(error = %e, attempts, "giving up on the sequencer");
                        return Err(TxnError::OutcomeUnknown);
                    }
                    tokio::time::sleep(RETRY).await;
                }
            }
        }
    }

    /// The outcome of logged entry `txn`, from its lowest participant.
    async fn outcome(
        &self,
        shard: ShardId,
        txn: TxnId,
    ) -> Result<crate::outcome::Outcome, TxnError> {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let request = v1::AwaitOutcomeRequest {
                hlc: stamp(&self.clock),
                txn: Some(v1::TxnId { epoch: txn.epoch.0, index: txn.index }),
            };
            let answer = self.shards[shard.0 as usize].clone().await_outcome(request).await;
            match answer {
                Ok(r) => {
                    let r = r.into_inner();
                    observe_response(&self.clock, r.hlc).map_err(|_| TxnError::OutcomeUnknown)?;
                    let outcome = r.outcome.ok_or(TxnError::OutcomeUnknown)?;
                    return outcome_from_proto(outcome).map_err(|_| TxnError::OutcomeUnknown);
                }
                Err(status) if status.code() == Code::NotFound => {
                    return Err(TxnError::OutcomeUnknown);
                }
                Err(status) => {
                    if tokio::time::Instant::now() >= deadline {
                        tracing::warn!(%status, %txn, "giving up on the outcome");
                        return Err(TxnError::OutcomeUnknown);
                    }
                    tokio::time::sleep(RETRY).await;
                }
            }
        }
    }

    /// The timestamp a read-only transaction reads at.
    pub fn read_ts(&self, at: ReadAt) -> Timestamp {
        match at {
            ReadAt::Latest => self.clock.now(),
            ReadAt::At(ts) => ts,
            ReadAt::BoundedStaleness(d) => self.clock.now().saturating_sub(d),
        }
    }

    /// The value of `key` at `ts` (see [`Client::read_ts`]); waits for its shard's safe time.
    pub async fn get(&self, key: &[u8], ts: Timestamp) -> Result<Option<Vec<u8>>, TxnError> {
        let shard = self.map.shard_of(key);
        let request = v1::GetRequest {
            hlc: stamp(&self.clock),
            key: key.to_vec(),
            read_ts: ts.as_u64(),
            for_window: 0,
        };
        let r = self.shards[shard.0 as usize]
            .clone()
            .get(request)
            .await
            .map_err(|s| read_error(s.into()))?
            .into_inner();
        observe_response(&self.clock, r.hlc).map_err(read_error)?;
        Ok(r.found.map(|kv| kv.value))
    }

    /// Up to `limit` keys of `range` with their values at `ts`, in order.
    pub async fn scan(
        &self,
        range: &KeyRange,
        ts: Timestamp,
        limit: usize,
    ) -> Result<Rows, TxnError> {
        let mut rows = Vec::new();
        for shard in self.map.shards_of(range) {
            let mut part = self.map.clip(range, shard);
            // One shard's part, a page of rows at a time.
            while rows.len() < limit {
                let page = (limit - rows.len()).min(super::MAX_SCAN_ROWS as usize);
                let request = v1::ScanRequest {
                    hlc: stamp(&self.clock),
                    range: Some(range_to_proto(&part)),
                    read_ts: ts.as_u64(),
                    limit: page as u32,
                    for_window: 0,
                };
                let r = self.shards[shard.0 as usize]
                    .clone()
                    .scan(request)
                    .await
                    .map_err(|s| read_error(s.into()))?
                    .into_inner();
                observe_response(&self.clock, r.hlc).map_err(read_error)?;
                let got = r.rows.len();
                let last = r.rows.last().map(|kv| kv.key.clone());
                rows.extend(r.rows.into_iter().map(|kv| (kv.key, kv.value)));
                match last {
                    Some(mut after) if got == page => {
                        after.push(0);
                        part.start = after;
                    }
                    _ => break,
                }
            }
            if rows.len() >= limit {
                break;
            }
        }
        Ok(rows)
    }
}

/// The status report of the cluster whose sequencer is at `addr`.
pub async fn cluster_status(
    addr: &str,
    clock: &Clock,
) -> Result<v1::ClusterStatusResponse, TxnError> {
    let unavailable = |e: String| TxnError::Unavailable(format!("sequencer at {addr}: {e}"));
    let endpoint =
        Endpoint::from_shared(format!("http://{addr}")).map_err(|e| unavailable(e.to_string()))?;
    let channel = endpoint.connect().await.map_err(|e| unavailable(e.to_string()))?;
    let request = v1::ClusterStatusRequest { hlc: stamp(clock) };
    let status = AdminClient::new(channel)
        .cluster_status(request)
        .await
        .map_err(|s| read_error(s.into()))?
        .into_inner();
    observe_response(clock, status.hlc).map_err(read_error)?;
    Ok(status)
}

fn read_error(e: RemoteError) -> TxnError {
    match e {
        RemoteError::ClockSkew(why) => TxnError::ClockSkew(why),
        other => TxnError::Unavailable(other.to_string()),
    }
}
