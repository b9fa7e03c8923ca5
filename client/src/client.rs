//! [`Client`]: a cluster's transactions from another process, over gRPC.
//!
//! `call` logs a procedure call through the sequencer and learns its outcome from the entry's
//! lowest participant shard, which gives it after commit-wait: pushed on the client's watch
//! of that shard's outcomes ([`OutcomeWatch`]), or asked for when the watch cannot say.
//! Calls made at about the same time share their requests (`SubmitMany`, `AwaitOutcomes`): a
//! busy client pays gRPC's cost per batch, not per call. Reads at a timestamp go to the shard
//! owning each key and wait for its safe time.
//!
//! What a network failure means for a call is reported, never guessed:
//!
//! - Before the sequencer answers, the entry may or may not be logged. The client submits it
//!   again under the same client id (the log deduplicates it) until the sequencer answers or
//!   it gives up, and then returns [`TxnError::OutcomeUnknown`].
//! - After the sequencer answered, the entry is logged and will be decided. The client asks
//!   the shard (any of its replicas) again until it answers. Shards keep outcomes by client
//!   id for the retention period, across restarts; past it, the call returns
//!   [`TxnError::OutcomeUnknown`].
//!
//! A caller that gave up can ask later: [`Client::call_as`] runs a call under an id of its
//! choosing ([`Client::new_id`]), and [`Client::outcome`] finds what became of it.
//!
//! Each shard's calls go to one of its replicas and move to the next when it fails or is
//! silent ([`Replicas`]).

use std::future::Future;
use std::hash::{BuildHasher, RandomState};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::Poll;
use std::time::Duration;

use ::sequencer::{ClientId, Entry, Receipt, ShardId, TxnId};
use clock::{Clock, Timestamp};
use proto::v1;
use proto::v1::admin_client::AdminClient;
use storage::KeyRange;

use txn::{
    AbortReason, Buffer, Outcome, ReadAt, Registry, Request, Rows, ShardMap, Store, StoreSnapshot,
    StoreTransaction, TxnError, commit_ts, declared_ranges, outcome_result_from_proto, overlay,
    participants, procedure_request, range_to_proto, refused, rows_needed,
};

use crate::coalesce::{Coalescer, Limits};
use crate::replicas::{ATTEMPT, HEDGE, Replicas, fails_over};
use crate::sequencer::RemoteSequencer;
use crate::sized;
use crate::tls::Tls;
use crate::watch::OutcomeWatch;
use crate::wire::{
    MAX_BATCH, RefusalKind, RemoteError, endpoint, got_many, item_failure, observe_response,
    outcome_from_proto, paged, stamp,
};

/// How long a call keeps trying to reach a node before giving up, unless the client is told
/// otherwise ([`Client::with_patience`]).
pub const PATIENCE: Duration = Duration::from_secs(10);
const RETRY: Duration = Duration::from_millis(20);

/// Where a cluster's nodes are, and what it runs: the same on every node and client.
#[derive(Clone)]
pub struct Cluster {
    /// The sequencer's address (`host:port`), or a sequencer group's, comma-separated.
    pub sequencer: String,
    /// Every shard's replica addresses, by shard id: one string per shard, comma-separated.
    pub shards: Vec<String>,
    /// Which shard owns which keys.
    pub map: ShardMap,
    /// The registered procedures (a client computes a call's key ranges with them).
    pub procedures: Registry,
    /// The client's certificate and the cluster's CA, if the cluster runs TLS.
    pub tls: Option<Tls>,
}

/// How a client batches its submissions: at most two requests in flight, the rest queued for
/// the next. (Measured with `bench micro --cluster local:3`, 2,048 clients: 1 or 2 in flight
/// gave 76,000-85,000 calls a second, 4 gave 76,000, 8 gave 66,000; at 64 and 256 clients, 2
/// and 8 were within a few percent.)
const SUBMISSIONS: Limits = Limits { items: MAX_BATCH, bytes: 8 << 20, in_flight: 2 };

/// How a client batches its requests for outcomes, to each shard: one in flight. A shard
/// answers a request once a window it applies decides one of its transactions, so a second
/// request in flight was answered by the same window and only doubled the messages; a call
/// that joins meanwhile is for a later window, asked for in the next request. (TPC-C through
/// `--cluster local:3`, 64 clients: 2,678-3,370 txn/s against 2,794-3,153 with two, about 4%
/// fewer HTTP/2 flushes a window.)
const OUTCOME_REQUESTS: Limits = Limits { items: MAX_BATCH, bytes: usize::MAX, in_flight: 1 };

/// A submitted entry, back with the sequencer's answer: submitted again without a copy.
type Submitted = (Entry, Result<Receipt, RemoteError>);

/// What a shard said of one transaction it was asked the outcome of.
enum Awaited {
    /// Its outcome, or why the shard cannot give it.
    Known(Result<Outcome, RemoteError>),
    /// Not decided yet: ask again.
    Pending,
    /// This replica failed on it in a way another may not (a storage error): ask again after
    /// a pause, as a failed call is retried.
    Failing,
}

/// A connection to a sealdb cluster. Its concurrent calls share requests: entries submitted
/// at about the same time go to the sequencer in one `SubmitMany`, outcomes awaited at about
/// the same time from one shard in one `AwaitOutcomes` (a `Coalescer`); most outcomes come
/// pushed on one stream per shard (an `OutcomeWatch`) without being asked for.
pub struct Client {
    sequencer: RemoteSequencer,
    /// Started on first use, in the runtime of the first call.
    submissions: OnceLock<Coalescer<Entry, Submitted>>,
    shards: Arc<Replicas>,
    /// By shard, started on first use.
    outcomes: Vec<OnceLock<Coalescer<(TxnId, ClientId), Awaited>>>,
    /// By shard, started on first use: the outcomes of this client's ids, pushed.
    watches: Vec<OnceLock<OutcomeWatch>>,
    map: ShardMap,
    procedures: Registry,
    clock: Arc<Clock>,
    salt: u64,
    next: AtomicU64,
    patience: Duration,
}

impl Client {
    /// A client of `cluster`, stamping its messages with `clock`. Connects lazily: the first
    /// call finds out if a node is down. Must be called within a tokio runtime, which its
    /// connections then use.
    pub fn new(cluster: &Cluster, clock: Arc<Clock>) -> Result<Client, TxnError> {
        if cluster.shards.len() != cluster.map.len() as usize {
            return Err(TxnError::Unavailable(format!(
                "{} shard addresses for a map of {} shards",
                cluster.shards.len(),
                cluster.map.len()
            )));
        }
        let tls = cluster.tls.as_ref();
        let sequencer = RemoteSequencer::lazy(&cluster.sequencer, clock.clone(), tls)
            .map_err(|e| TxnError::Unavailable(e.to_string()))?;
        // Client ids must not repeat across clients: a random salt per client.
        let salt = RandomState::new().hash_one((std::process::id(), clock.now().as_u64()));
        // Clients start on different replicas, spreading the reads.
        let shards = Replicas::new(&cluster.shards, tls, salt as usize)
            .map_err(|e| TxnError::Unavailable(format!("shard: {e}")))?;
        Ok(Client {
            sequencer,
            submissions: OnceLock::new(),
            outcomes: (0..cluster.map.len()).map(|_| OnceLock::new()).collect(),
            watches: (0..cluster.map.len()).map(|_| OnceLock::new()).collect(),
            shards: Arc::new(shards),
            map: cluster.map.clone(),
            procedures: cluster.procedures.clone(),
            clock,
            salt,
            next: AtomicU64::new(0),
            patience: PATIENCE,
        })
    }

    /// How long each of its calls keeps trying to reach the cluster (resubmitting to the
    /// sequencer, going round a shard's replicas) before it gives up: [`PATIENCE`] unless set
    /// here. A call that gives up after its entry may have been logged returns
    /// [`TxnError::OutcomeUnknown`]; a read returns [`TxnError::Unavailable`].
    pub fn with_patience(mut self, patience: Duration) -> Client {
        self.patience = patience;
        self
    }

    /// Connects to the cluster whose sequencer is at `addr`: asks it for the cluster's layout
    /// (shard addresses and map). Calls may use the built-in procedures
    /// ([`builtin::registry`](txn::builtin::registry)); [`Client::new`] takes others.
    pub async fn connect(addr: &str, clock: Arc<Clock>) -> Result<Client, TxnError> {
        Client::connect_with(addr, clock, txn::builtin::registry(), None).await
    }

    /// [`Client::connect`] for a cluster whose nodes register `procedures`, over TLS with
    /// `tls` (this client's certificate and the cluster's CA).
    pub async fn connect_with(
        addr: &str,
        clock: Arc<Clock>,
        procedures: Registry,
        tls: Option<Tls>,
    ) -> Result<Client, TxnError> {
        // Any member of a sequencer group knows the layout.
        let status = cluster_status(addr, &clock, tls.as_ref()).await?;
        Client::of_status(addr, status, clock, procedures, tls)
    }

    /// A client of the cluster whose layout `status` gives ([`cluster_status`] of the
    /// sequencer at `addr`), calling its procedures from `procedures`; asks nothing more.
    pub fn of_status(
        addr: &str,
        status: v1::ClusterStatusResponse,
        clock: Arc<Clock>,
        procedures: Registry,
        tls: Option<Tls>,
    ) -> Result<Client, TxnError> {
        let map = ShardMap::new(status.splits)
            .map_err(|e| TxnError::Unavailable(format!("the sequencer at {addr} sent {e}")))?;
        let sequencer = addr.to_string();
        let cluster = Cluster { sequencer, shards: status.shard_addrs, map, procedures, tls };
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
        Outcome::into_output(self.run(request).await?)
    }

    /// [`Client::call`] under client id `id` (from [`Client::new_id`]): a caller that gets
    /// [`TxnError::OutcomeUnknown`], or loses track of the call, can ask for its outcome with
    /// [`Client::outcome`], or call again under the same id (the log runs it at most once).
    pub async fn call_as(
        &self,
        id: ClientId,
        name: &str,
        args: &[u8],
    ) -> Result<Vec<u8>, TxnError> {
        let request = procedure_request(&self.procedures, name, args)?;
        Outcome::into_output(self.run_as(id, request).await?)
    }

    /// A client id no other call of any client uses: a random salt per client, and a counter.
    pub fn new_id(&self) -> ClientId {
        ClientId(
            (u128::from(self.salt) << 64) | u128::from(self.next.fetch_add(1, Ordering::Relaxed)),
        )
    }

    /// What became of the transaction submitted under `id`: its outcome, if a shard decided
    /// it within the retention period (60 s by default); `None` if no shard has (it was not
    /// logged, is not decided yet, or is older). Asks every shard (any replica of each),
    /// since only the transaction's lowest participant keeps its outcome.
    pub async fn outcome(&self, id: ClientId) -> Result<Option<Outcome>, TxnError> {
        for shard in (0..self.shards.shards() as u32).map(ShardId) {
            let found = self
                .shards
                .call(shard, &self.clock, tokio::time::sleep(self.patience), |mut c, hlc| {
                    let request = v1::OutcomeRequest { hlc, client_id: id.to_bytes() };
                    async move {
                        let r = c.outcome(with_deadline(request)).await?.into_inner();
                        Ok((r.outcome, r.hlc))
                    }
                })
                .await
                .map_err(read_error)?;
            if let Some(o) = found {
                return outcome_from_proto(o).map(Some).map_err(read_error);
            }
        }
        Ok(None)
    }

    /// Logs `request` and waits for its outcome (past commit-wait if committed).
    async fn run(&self, request: Request) -> Result<Outcome, TxnError> {
        self.run_as(self.new_id(), request).await
    }

    /// [`Client::run`] under client id `id`: the outcome pushed by the lowest participant's
    /// watch, asked for when it will not come, and also asked for when it has not come after
    /// `HEDGE` (a replica behind or paused), the first answer taken.
    async fn run_as(&self, id: ClientId, request: Request) -> Result<Outcome, TxnError> {
        let participants = participants(&self.map, &request)?;
        let shard = participants[0];
        let entry = Entry::new(id, participants, request.into_payload());
        // Before submitting: the outcome may come before the receipt. Only this client's
        // ids are pushed to its watch.
        let waiter = match (id.0 >> 64) as u64 == self.salt {
            true => self.watch(shard).wait(id.0 as u64),
            false => None,
        };
        let receipt = self.submit(entry).await?;
        let txn = receipt.txn;
        tracing::debug!(%txn, "logged; awaiting the outcome");
        // A duplicate's original may have been decided, and pushed, before this call
        // registered: ask.
        let Some(waiter) = waiter.filter(|_| !receipt.duplicate) else {
            return self.await_outcome(shard, txn, id).await;
        };
        let mut pushed = std::pin::pin!(waiter.outcome(txn));
        tokio::select! {
            pushed = &mut pushed => if let Some(outcome) = pushed {
                return Ok(outcome);
            },
            () = tokio::time::sleep(HEDGE) => {
                let asked = self.await_outcome(shard, txn, id);
                tokio::select! {
                    Some(outcome) = &mut pushed => return Ok(outcome),
                    asked = asked => {
                        self.watch(shard).outrun(self.shards.current(shard).0);
                        return asked;
                    }
                }
            }
        }
        self.await_outcome(shard, txn, id).await
    }

    /// The watch of `shard`'s outcomes of this client's ids.
    fn watch(&self, shard: ShardId) -> &OutcomeWatch {
        self.watches[shard.0 as usize].get_or_init(|| {
            OutcomeWatch::start(self.shards.clone(), shard, self.clock.clone(), self.salt)
        })
    }

    /// Starts an optimistic transaction reading at the current time (its first read waits
    /// for the shard's safe time to pass it). Most callers want [`Client::transact`].
    pub fn begin(&self) -> RemoteTransaction<'_> {
        RemoteTransaction { client: self, buffer: Buffer::new(self.clock.now()) }
    }

    /// Logs `entry`, resubmitting it after failures that leave its fate unknown.
    async fn submit(&self, mut entry: Entry) -> Result<Receipt, TxnError> {
        let deadline = tokio::time::Instant::now() + self.patience;
        let mut attempts = 0;
        loop {
            attempts += 1;
            let (back, submitted) = match self.submit_coalesced(entry).await {
                Some(answer) => answer,
                // Shutting down: an earlier attempt may have been logged.
                None => {
                    tracing::warn!(attempts, "giving up on the sequencer: submissions stopped");
                    return Err(TxnError::OutcomeUnknown);
                }
            };
            entry = back;
            match submitted {
                Ok(receipt) => return Ok(receipt),
                // Refused for what the entry is: every attempt of it was, so none is logged.
                Err(RemoteError::Refused { kind: RefusalKind::TooLarge, why }) => {
                    return Err(TxnError::TooLarge(why));
                }
                Err(RemoteError::Refused { kind, why }) if kind != RefusalKind::Busy => {
                    return Err(TxnError::Unavailable(format!("the sequencer refused: {why}")));
                }
                // Refused on the way in, and no earlier attempt may have been logged.
                Err(RemoteError::ClockSkew(why)) if attempts == 1 => {
                    return Err(TxnError::ClockSkew(why));
                }
                // Everything else may have logged it: resubmit (the log deduplicates it)
                // until the sequencer answers, or give up with the outcome unknown.
                Err(e) => {
                    if tokio::time::Instant::now() >= deadline {
                        tracing::warn!(error = %e, attempts, "giving up on the sequencer");
                        return Err(TxnError::OutcomeUnknown);
                    }
                    tracing::debug!(error = %e, attempts, "submitting again");
                    tokio::time::sleep(RETRY).await;
                }
            }
        }
    }

    /// Submits `entry` in a batch with the other calls' (one attempt): the entry back with
    /// its answer, or `None` if the client's submissions stopped (it is shutting down).
    async fn submit_coalesced(&self, entry: Entry) -> Option<Submitted> {
        let submissions = self.submissions.get_or_init(|| {
            let sequencer = self.sequencer.clone();
            Coalescer::start(SUBMISSIONS, Entry::size, move |entries: Vec<Entry>| {
                let sequencer = sequencer.clone();
                async move {
                    let results = match sequencer.submit_many(&entries).await {
                        Ok(results) => results,
                        Err(e) => vec![Err(e); entries.len()],
                    };
                    entries.into_iter().zip(results).collect()
                }
            })
        });
        submissions.call(entry).await
    }

    /// The outcome of logged entry `txn` (client id `id`), from its lowest participant, asked
    /// in a batch with the other calls' until it is known or the client's patience runs out.
    async fn await_outcome(
        &self,
        shard: ShardId,
        txn: TxnId,
        id: ClientId,
    ) -> Result<Outcome, TxnError> {
        let outcomes = self.outcomes[shard.0 as usize].get_or_init(|| {
            let (shards, clock, patience) =
                (self.shards.clone(), self.clock.clone(), self.patience);
            Coalescer::start(
                OUTCOME_REQUESTS,
                |_| 0,
                move |items: Vec<(TxnId, ClientId)>| {
                    let (shards, clock) = (shards.clone(), clock.clone());
                    async move { await_outcomes(&shards, &clock, patience, shard, &items).await }
                },
            )
        });
        let answer = tokio::time::timeout(self.patience, async {
            loop {
                match outcomes.call((txn, id)).await {
                    Some(Awaited::Pending) => continue,
                    Some(Awaited::Failing) => tokio::time::sleep(RETRY).await,
                    Some(Awaited::Known(known)) => return known,
                    None => return Err(RemoteError::Unavailable("the client is stopping".into())),
                }
            }
        })
        .await
        .unwrap_or_else(|_| Err(RemoteError::Unavailable("no outcome in time".into())));
        answer.map_err(|e| {
            tracing::warn!(error = %e, %txn, "giving up on the outcome");
            TxnError::OutcomeUnknown
        })
    }

    /// A read-only transaction at `at`, as `Database::snapshot` (embedded)
    /// gives: its reads wait for each shard's safe time to reach its timestamp.
    pub fn snapshot(&self, at: ReadAt) -> RemoteSnapshot<'_> {
        RemoteSnapshot { client: self, ts: self.read_ts(at) }
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
        let request =
            v1::GetRequest { hlc: 0, key: key.to_vec(), read_ts: ts.as_u64(), for_window: 0 };
        self.shards
            .call(shard, &self.clock, tokio::time::sleep(self.patience), |mut c, hlc| {
                let request = v1::GetRequest { hlc, ..request.clone() };
                async move {
                    let r = c.get(with_deadline(request)).await?.into_inner();
                    Ok((r.found.map(|kv| kv.value), r.hlc))
                }
            })
            .await
            .map_err(read_error)
    }

    /// Runs registered procedure `name` with `args` read-only at `ts` (see
    /// [`Client::read_ts`]) on the one shard holding every range it declares: one `ReadCall`,
    /// which waits as a read does (for that shard's safe time, and for its clock to pass `ts`
    /// plus the bound); no window, no validation. Its
    /// output, or why it aborted (a write aborts it, and nothing changes). A call whose ranges
    /// span shards is refused before anything is sent ([`AbortReason::Malformed`]): read its
    /// keys through a [`RemoteSnapshot`] instead.
    pub async fn read_call(
        &self,
        name: &str,
        args: &[u8],
        ts: Timestamp,
    ) -> Result<Vec<u8>, TxnError> {
        let (_, ranges) = declared_ranges(&self.procedures, name, args)?;
        let shards: std::collections::BTreeSet<ShardId> =
            ranges.iter().flat_map(|r| self.map.shards_in(r)).collect();
        let shard = match (shards.first(), shards.len()) {
            (Some(&shard), 1) => shard,
            (None, _) => {
                return Err(refused(AbortReason::Malformed(
                    "a procedure call declares no key".into(),
                )));
            }
            _ => {
                let on: Vec<String> = shards.iter().map(|s| s.0.to_string()).collect();
                return Err(refused(AbortReason::Malformed(format!(
                    "procedure {name} declares keys of shards {}: a read-only call runs on one \
                     shard (read them through a snapshot)",
                    on.join(", ")
                ))));
            }
        };
        let request = v1::ReadCallRequest {
            hlc: 0,
            name: name.to_string(),
            args: args.to_vec(),
            read_ts: ts.as_u64(),
        };
        let outcome = self
            .shards
            .call(shard, &self.clock, tokio::time::sleep(self.patience), |mut c, hlc| {
                let request = v1::ReadCallRequest { hlc, ..request.clone() };
                async move {
                    let r = c.read_call(with_deadline(request)).await?.into_inner();
                    Ok((r.outcome, r.hlc))
                }
            })
            .await
            .map_err(read_error)?;
        let bad = |why: &str| TxnError::Unavailable(format!("shard {}: {why}", shard.0));
        match outcome.and_then(outcome_result_from_proto) {
            Some(Outcome::Committed { output, .. }) => Ok(output),
            Some(Outcome::Aborted(reason)) => Err(refused(reason)),
            Some(Outcome::Conflict { .. }) => Err(bad("a read-only call answered a conflict")),
            None => Err(bad("a read-only call answered no outcome")),
        }
    }

    /// One `Scan` request: up to `n` rows of `range`, all on `shard`, and whether there may
    /// be more.
    async fn scan_page(
        &self,
        shard: ShardId,
        range: KeyRange,
        n: usize,
        ts: Timestamp,
    ) -> Result<(Rows, bool), TxnError> {
        let request = v1::ScanRequest {
            hlc: 0,
            range: Some(range_to_proto(&range)),
            read_ts: ts.as_u64(),
            limit: n as u32,
            for_window: 0,
        };
        self.shards
            .call(shard, &self.clock, tokio::time::sleep(self.patience), |mut c, hlc| {
                let request = v1::ScanRequest { hlc, ..request.clone() };
                async move {
                    let r = c.scan(with_deadline(request)).await?.into_inner();
                    Ok(((r.rows.into_iter().map(|kv| (kv.key, kv.value)).collect(), r.more), r.hlc))
                }
            })
            .await
            .map_err(read_error)
    }

    /// The values of `keys` at `ts`, in order: one `GetMany` request per shard that holds
    /// some of them (a few more if the values are large or the keys many), the shards asked
    /// concurrently. (It used to send a `Get` per key: TPC-C's Stock-Level, about 200 keys,
    /// made as many calls, and through a cluster the standard mix ran at a third of the
    /// new-order-payment mix's rate.)
    pub async fn get_many(
        &self,
        keys: &[Vec<u8>],
        ts: Timestamp,
    ) -> Result<Vec<Option<Vec<u8>>>, TxnError> {
        // Each shard's keys, with their places in `keys`.
        let mut by_shard: std::collections::BTreeMap<ShardId, (Vec<usize>, Vec<Vec<u8>>)> =
            std::collections::BTreeMap::new();
        for (i, key) in keys.iter().enumerate() {
            let (places, shard_keys) = by_shard.entry(self.map.shard_of(key)).or_default();
            places.push(i);
            shard_keys.push(key.clone());
        }
        type Values = Result<Vec<Option<Vec<u8>>>, TxnError>;
        type Read<'a> = Pin<Box<dyn Future<Output = Values> + Send + 'a>>;
        let (places, mut reads): (Vec<Vec<usize>>, Vec<Read<'_>>) = by_shard
            .into_iter()
            .map(|(shard, (places, keys))| {
                let read = async move { self.get_many_on(shard, &keys, ts).await };
                (places, Box::pin(read) as Read<'_>)
            })
            .unzip();
        let mut results: Vec<Option<Values>> = reads.iter().map(|_| None).collect();
        std::future::poll_fn(|cx| {
            let mut done = true;
            for (read, result) in reads.iter_mut().zip(results.iter_mut()) {
                if result.is_none() {
                    match read.as_mut().poll(cx) {
                        Poll::Ready(r) => *result = Some(r),
                        Poll::Pending => done = false,
                    }
                }
            }
            if done { Poll::Ready(()) } else { Poll::Pending }
        })
        .await;
        let mut values = vec![None; keys.len()];
        for (places, result) in places.into_iter().zip(results) {
            let got = result.expect("every read finished")?;
            for (i, value) in places.into_iter().zip(got) {
                values[i] = value;
            }
        }
        Ok(values)
    }

    /// The values of `keys`, all on `shard`, at `ts`, in order.
    async fn get_many_on(
        &self,
        shard: ShardId,
        keys: &[Vec<u8>],
        ts: Timestamp,
    ) -> Result<Vec<Option<Vec<u8>>>, TxnError> {
        let ask = |rest: Vec<Vec<u8>>| {
            let request =
                v1::GetManyRequest { hlc: 0, keys: rest, read_ts: ts.as_u64(), for_window: 0 };
            let patience = tokio::time::sleep(self.patience);
            let answer = self.shards.call(shard, &self.clock, patience, move |mut c, hlc| {
                let request = v1::GetManyRequest { hlc, ..request.clone() };
                async move {
                    let r = c.get_many(with_deadline(request)).await?.into_inner();
                    Ok((r.values.into_iter().map(|v| v.value).collect(), r.hlc))
                }
            });
            async move { answer.await.map_err(read_error) }
        };
        let bad = |why| TxnError::Unavailable(format!("shard {}: {why}", shard.0));
        got_many(keys, ask, bad).await
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
            let part = self.map.clip(range, shard);
            let left = limit - rows.len();
            rows.extend(paged(part, left, |r, n| self.scan_page(shard, r, n, ts)).await?);
            if rows.len() >= limit {
                break;
            }
        }
        Ok(rows)
    }
}

/// The status report of the cluster whose sequencer is at `addr`; for a sequencer group
/// (`addr` lists its members, comma-separated), the first member's that answers.
pub async fn cluster_status(
    addr: &str,
    clock: &Clock,
    tls: Option<&Tls>,
) -> Result<v1::ClusterStatusResponse, TxnError> {
    let mut last = Err(TxnError::Unavailable(format!("no sequencer address in {addr:?}")));
    for member in addr.split(',').map(str::trim).filter(|a| !a.is_empty()) {
        last = member_status(member, clock, tls).await;
        if last.is_ok() {
            break;
        }
    }
    last
}

/// Which member of the sequencer group `addrs` (comma-separated) leads it now, asking each
/// once: its position in the list and its view of the group. `None` if no member that answers
/// (each within `MEMBER_PATIENCE`: a paused one accepts connections and answers nothing)
/// names itself leader.
pub async fn group_leader(
    addrs: &str,
    clock: &Clock,
    tls: Option<&Tls>,
) -> Option<(usize, v1::GroupStatus)> {
    for (i, addr) in addrs.split(',').map(str::trim).enumerate() {
        let asked = tokio::time::timeout(MEMBER_PATIENCE, member_status(addr, clock, tls));
        if let Ok(Ok(status)) = asked.await
            && let Some(g) = status.group
            && g.leader == g.member
        {
            return Some((i, g));
        }
    }
    None
}

/// Waits until every replica of every shard of the cluster whose sequencer is at `addr` has
/// applied the same last window (the cluster must be idle: nothing submitted meanwhile), then
/// compares their digests of it. `Ok` lists, per shard, that window and the digest all its
/// replicas agree on; `Err` says which replicas differ, or what was still unsettled after
/// `patience`.
pub async fn replicas_converged(
    addr: &str,
    clock: &Clock,
    tls: Option<&Tls>,
    patience: Duration,
) -> Result<Vec<(u32, u64, Vec<u8>)>, String> {
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        let unsettled = match cluster_status(addr, clock, tls).await {
            Err(e) => e.to_string(),
            Ok(status) => {
                let mut by_shard: std::collections::BTreeMap<u32, Vec<&v1::ShardStatus>> =
                    Default::default();
                for s in &status.shards {
                    by_shard.entry(s.shard).or_default().push(s);
                }
                let expected: Vec<usize> =
                    status.shard_addrs.iter().map(|a| crate::replica_addrs(a).len()).collect();
                let mut agreed = Vec::new();
                let mut why = None;
                for (shard, n) in expected.iter().enumerate() {
                    let replicas = by_shard.get(&(shard as u32)).map_or(&[][..], Vec::as_slice);
                    let first = replicas.first();
                    let same_window = replicas
                        .iter()
                        .all(|r| Some(r.applied_epoch) == first.map(|f| f.applied_epoch));
                    match first {
                        Some(f) if replicas.len() == *n && same_window => {
                            if let Some(r) = replicas.iter().find(|r| r.digest != f.digest) {
                                return Err(format!(
                                    "shard {shard}: replicas {} and {} differ after window {}",
                                    f.replica, r.replica, f.applied_epoch
                                ));
                            }
                            agreed.push((shard as u32, f.applied_epoch, f.digest.clone()));
                        }
                        _ => {
                            why = Some(format!(
                                "shard {shard}: {} of {n} replicas answered, at windows {:?}",
                                replicas.len(),
                                replicas.iter().map(|r| r.applied_epoch).collect::<Vec<_>>()
                            ));
                        }
                    }
                }
                match why {
                    None => return Ok(agreed),
                    Some(why) => why,
                }
            }
        };
        if tokio::time::Instant::now() >= deadline {
            return Err(format!("replicas did not settle in {patience:?}: {unsettled}"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// How long [`group_leader`] waits for one member's status.
const MEMBER_PATIENCE: Duration = Duration::from_millis(300);

/// One sequencer node's status report.
async fn member_status(
    addr: &str,
    clock: &Clock,
    tls: Option<&Tls>,
) -> Result<v1::ClusterStatusResponse, TxnError> {
    let unavailable = |e: String| TxnError::Unavailable(format!("sequencer at {addr}: {e}"));
    let endpoint = endpoint(addr, tls).map_err(|e| unavailable(e.to_string()))?;
    let channel = endpoint.connect().await.map_err(|e| unavailable(e.to_string()))?;
    let request = v1::ClusterStatusRequest { hlc: stamp(clock) };
    let status = sized!(AdminClient::new(channel))
        .cluster_status(request)
        .await
        .map_err(|s| read_error(s.into()))?
        .into_inner();
    observe_response(clock, status.hlc).map_err(read_error)?;
    Ok(status)
}

/// A consistent read-only view of the cluster at one timestamp ([`Client::snapshot`]).
pub struct RemoteSnapshot<'a> {
    client: &'a Client,
    ts: Timestamp,
}

impl RemoteSnapshot<'_> {
    /// The timestamp read at.
    pub fn ts(&self) -> Timestamp {
        self.ts
    }

    /// The value of `key`.
    pub async fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, TxnError> {
        self.client.get(key, self.ts).await
    }

    /// Up to `limit` keys of `range` with values, in key order.
    pub async fn scan(&self, range: &KeyRange, limit: usize) -> Result<Rows, TxnError> {
        self.client.scan(range, self.ts, limit).await
    }

    /// Runs registered procedure `name` with `args` read-only at the snapshot's timestamp,
    /// on the one shard holding its keys ([`Client::read_call`]).
    pub async fn call(&self, name: &str, args: &[u8]) -> Result<Vec<u8>, TxnError> {
        self.client.read_call(name, args, self.ts).await
    }
}

/// An optimistic read-write transaction through a [`Client`]: reads at a timestamp, buffers
/// writes, and is validated in the window its commit lands in, as the embedded
/// the embedded database's `Transaction` is. Dropping it without commit discards it.
pub struct RemoteTransaction<'a> {
    client: &'a Client,
    buffer: Buffer,
}

impl RemoteTransaction<'_> {
    /// The timestamp reads use.
    pub fn read_ts(&self) -> Timestamp {
        self.buffer.read_ts
    }

    /// The value of `key`: this transaction's own write if any, else the one at `read_ts`.
    pub async fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, TxnError> {
        match self.buffer.read(key) {
            Some(own) => Ok(own),
            None => self.client.get(key, self.buffer.read_ts).await,
        }
    }

    /// Up to `limit` keys of `range` with values, own writes included.
    pub async fn scan(&mut self, range: &KeyRange, limit: usize) -> Result<Rows, TxnError> {
        let pending = self.buffer.scan(range);
        let needed = rows_needed(limit, &pending);
        let rows = self.client.scan(range, self.buffer.read_ts, needed).await?;
        Ok(overlay(rows, pending, limit))
    }

    /// Sets `key` to `value` when the transaction commits.
    pub fn put(&mut self, key: &[u8], value: &[u8]) {
        self.buffer.write(key, Some(value));
    }

    /// Deletes `key` when the transaction commits.
    pub fn delete(&mut self, key: &[u8]) {
        self.buffer.write(key, None);
    }

    /// Submits the transaction and waits for its outcome: the commit timestamp, or the read
    /// timestamp for a transaction that wrote nothing (it commits there without a window: it
    /// began at this client's `now`, above every commit returned before, by commit-wait, and
    /// its reads waited for the shards' safe time to reach it). Sizes are checked by the
    /// shards (an oversize write aborts it with `TooLarge`).
    pub async fn commit(self) -> Result<Timestamp, TxnError> {
        let read_ts = self.buffer.read_ts;
        match self.buffer.into_request(true) {
            None => Ok(read_ts),
            Some(request) => commit_ts(self.client.run(request).await?),
        }
    }
}

/// Asks `shard` (any replica) for the outcomes of `items` in one `AwaitOutcomes`: one answer
/// per item, in order. A failure another replica may not have (a storage error) is asked
/// again after a pause.
async fn await_outcomes(
    shards: &Replicas,
    clock: &Clock,
    patience: Duration,
    shard: ShardId,
    items: &[(TxnId, ClientId)],
) -> Vec<Awaited> {
    let answer = shards
        .call(shard, clock, tokio::time::sleep(patience), |mut c, hlc| {
            let request = v1::AwaitOutcomesRequest {
                hlc,
                items: items
                    .iter()
                    .map(|(txn, id)| v1::AwaitOutcomeRequest {
                        hlc: 0,
                        txn: Some(v1::TxnId { epoch: txn.epoch.0, index: txn.index }),
                        client_id: id.to_bytes(),
                    })
                    .collect(),
            };
            async move {
                let r = c.await_outcomes(with_deadline(request)).await?.into_inner();
                Ok((r.results, r.hlc))
            }
        })
        .await;
    let failed = |e: RemoteError| items.iter().map(|_| Awaited::Known(Err(e.clone()))).collect();
    match answer {
        Ok(results) if results.len() == items.len() => results
            .into_iter()
            .map(|r| match r.result {
                None => Awaited::Pending,
                Some(v1::outcome_result::Result::Outcome(o)) => {
                    Awaited::Known(outcome_from_proto(o))
                }
                Some(v1::outcome_result::Result::Failed(status)) => {
                    let status = item_failure(status);
                    match fails_over(&status) {
                        true => Awaited::Failing,
                        false => Awaited::Known(Err(status.into())),
                    }
                }
            })
            .collect(),
        Ok(results) => failed(RemoteError::BadResponse(format!(
            "{} outcomes for {} transactions",
            results.len(),
            items.len()
        ))),
        Err(e) => failed(e),
    }
}

/// A read waits for the shard's safe time; a replica that cannot catch up (cut off from the
/// sequencer, its clock refused) would keep it waiting. After [`ATTEMPT`] the next replica is
/// asked (the server stops waiting too), and after [`PATIENCE`] it is an error.
fn with_deadline<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(ATTEMPT);
    request
}

fn read_error(e: RemoteError) -> TxnError {
    match e {
        RemoteError::ClockSkew(why) => TxnError::ClockSkew(why),
        RemoteError::Unavailable(why) => TxnError::Unavailable(why),
        other => TxnError::Unavailable(other.to_string()),
    }
}

/// The cluster side of [`Store`]: the inherent methods, and [`Store::transact`] with the
/// same retry policy as the embedded database's:
///
/// ```ignore
/// use txn::Store;
/// let v = client.transact(|mut tx| async move {
///     let v = tx.get(b"k").await?;
///     tx.put(b"k", b"new")?;
///     Ok((tx, v))
/// }).await?;
/// ```
impl Store for Client {
    type Snapshot<'a> = RemoteSnapshot<'a>;
    type Transaction<'a> = RemoteTransaction<'a>;

    async fn call(&self, name: &str, args: &[u8]) -> Result<Vec<u8>, TxnError> {
        Client::call(self, name, args).await
    }

    async fn snapshot(&self, at: ReadAt) -> Result<RemoteSnapshot<'_>, TxnError> {
        Ok(Client::snapshot(self, at))
    }

    fn begin(&self) -> Result<RemoteTransaction<'_>, TxnError> {
        Ok(Client::begin(self))
    }
}

impl StoreSnapshot for RemoteSnapshot<'_> {
    fn ts(&self) -> Timestamp {
        self.ts
    }

    async fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, TxnError> {
        RemoteSnapshot::get(self, key).await
    }

    async fn scan(&self, range: &KeyRange, limit: usize) -> Result<Rows, TxnError> {
        RemoteSnapshot::scan(self, range, limit).await
    }
}

impl StoreTransaction for RemoteTransaction<'_> {
    fn read_ts(&self) -> Timestamp {
        self.buffer.read_ts
    }

    async fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, TxnError> {
        RemoteTransaction::get(self, key).await
    }

    async fn scan(&mut self, range: &KeyRange, limit: usize) -> Result<Rows, TxnError> {
        RemoteTransaction::scan(self, range, limit).await
    }

    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), TxnError> {
        RemoteTransaction::put(self, key, value);
        Ok(())
    }

    fn delete(&mut self, key: &[u8]) -> Result<(), TxnError> {
        RemoteTransaction::delete(self, key);
        Ok(())
    }

    async fn commit(self) -> Result<Timestamp, TxnError> {
        RemoteTransaction::commit(self).await
    }
}
