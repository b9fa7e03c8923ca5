//! [`RemoteSequencer`]: a client of a sequencer node: submit an entry and get its receipt once
//! its window is durable; subscribe to one shard's slices of the sealed windows from an epoch
//! on ([`SliceDelivery`]); ask for a window when idle.

use std::sync::{Arc, Mutex};

use clock::{Clock, Epoch, Timestamp};
use proto::v1;
use proto::v1::sequencer_client::SequencerClient;
use sequencer::{ClientId, Entry, Receipt, ShardId, TxnId};
use tokio::sync::mpsc;
use tonic::transport::Channel;

use crate::sized;
use crate::tls::Tls;
use crate::wire::{
    RefusalKind, RemoteError, SetupError, endpoint, item_failure, observe_response, stamp,
};

/// What a subscriber receives, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SliceDelivery {
    /// A durable window: its entries that touch the subscriber's shard, in log order.
    Window {
        /// The window's epoch; consecutive.
        epoch: Epoch,
        /// The window's timestamp.
        ts: Timestamp,
        /// Its entries for this shard, with their ids.
        entries: Vec<(TxnId, Entry)>,
    },
    /// No window will be stamped at or below this timestamp.
    Tick(Timestamp),
}

/// How long a submission waits for its receipt.
const SUBMIT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// How long a submission to a group's node waits for its receipt before the next node is
/// tried: a leader cut off from the others (or paused) accepts it and can never commit it.
/// (The caller submits it again under the same client id; the log deduplicates it.)
const GROUP_SUBMIT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// A subscription that brings nothing, neither window nor tick, for this long is given up
/// and the next node tried: idle ticks come every window interval (a group's every 50 ms),
/// so the node is cut off, paused or no longer learns what commits. (A sequencer configured
/// with `window.interval_ms` above this only makes shards resubscribe, harmlessly.)
pub const SUBSCRIPTION_SILENCE: std::time::Duration = std::time::Duration::from_secs(1);

/// A client of a sequencer node, or of a sequencer group's nodes, stamping its requests with
/// `clock`. With a group (`addr` lists its nodes, comma-separated) it follows the leader: a
/// node that does not lead answers `NOT_LEADER` with the leader's address (nothing logged),
/// and the submission goes there at once; a node that cannot be reached makes the next call
/// try the next node.
#[derive(Clone)]
pub struct RemoteSequencer {
    target: Arc<Mutex<Target>>,
    tls: Option<Tls>,
    clock: Arc<Clock>,
}

/// The node called now, and the ones to try next.
struct Target {
    addrs: Vec<String>,
    at: usize,
    client: SequencerClient<Channel>,
}

/// How many times a submission follows `NOT_LEADER` answers before it reports one.
const LEADER_HOPS: usize = 3;

/// What a submission does after a node failed it.
enum Steer {
    /// Call again now (at the leader a `NOT_LEADER` answer named).
    Again,
    /// Give the caller this.
    Fail(RemoteError),
}

/// The request submitting `entry`, stamped `hlc`.
fn submission(entry: &Entry, hlc: u64) -> v1::SubmitRequest {
    v1::SubmitRequest {
        hlc,
        participants: entry.participants.iter().map(|p| p.0).collect(),
        payload: entry.payload.to_vec(),
        client_id: entry.client_id.to_bytes(),
    }
}

/// `message` with a timeout header of `limit`.
fn timed<T>(message: T, limit: std::time::Duration) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(limit);
    request
}

/// A receipt from the wire.
fn receipt(r: v1::SubmitResponse) -> Result<Receipt, RemoteError> {
    let txn = r.txn.ok_or_else(|| RemoteError::BadResponse("a receipt without an id".into()))?;
    Ok(Receipt {
        txn: TxnId { epoch: Epoch(txn.epoch), index: txn.index },
        ts: Timestamp::from_u64(r.window_ts),
        duplicate: r.duplicate,
    })
}

impl RemoteSequencer {
    /// Connects to the sequencer at `addr` (`host:port`).
    pub async fn connect(addr: &str, clock: Arc<Clock>) -> Result<RemoteSequencer, RemoteError> {
        RemoteSequencer::connect_tls(addr, clock, None).await
    }

    /// [`RemoteSequencer::connect`], over TLS with `tls`.
    pub async fn connect_tls(
        addr: &str,
        clock: Arc<Clock>,
        tls: Option<&Tls>,
    ) -> Result<RemoteSequencer, RemoteError> {
        let sequencer = RemoteSequencer::lazy(addr, clock, tls).map_err(|why| {
            RemoteError::Refused { kind: RefusalKind::Malformed, why: why.to_string() }
        })?;
        // Connect now, so that a wrong address shows at once.
        let first = sequencer.addrs()[0].clone();
        let channel = endpoint(&first, tls)
            .map_err(|why| RemoteError::Refused {
                kind: RefusalKind::Malformed,
                why: why.to_string(),
            })?
            .connect()
            .await
            .map_err(|e| RemoteError::Unavailable(format!("connecting to {first}: {e}")))?;
        sequencer.lock().client = sized!(SequencerClient::new(channel));
        Ok(sequencer)
    }

    /// A client of the sequencer at `addr` that connects on first use (and reconnects after
    /// failures), for nodes that start before the sequencer does.
    pub fn lazy(
        addr: &str,
        clock: Arc<Clock>,
        tls: Option<&Tls>,
    ) -> Result<RemoteSequencer, SetupError> {
        let addrs: Vec<String> =
            addr.split(',').map(str::trim).filter(|a| !a.is_empty()).map(String::from).collect();
        let first = addrs.first().ok_or_else(|| SetupError::Address {
            addr: addr.into(),
            why: "no sequencer address".into(),
        })?;
        for a in &addrs {
            endpoint(a, tls)?; // every address is checked now, not at its first use
        }
        let client = sized!(SequencerClient::new(endpoint(first, tls)?.connect_lazy()));
        let target = Target { addrs, at: 0, client };
        Ok(RemoteSequencer { target: Arc::new(Mutex::new(target)), tls: tls.cloned(), clock })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Target> {
        self.target.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The sequencer nodes this client knows.
    pub fn addrs(&self) -> Vec<String> {
        self.lock().addrs.clone()
    }

    /// The node called now (its position), and a client of it.
    fn client(&self) -> (usize, SequencerClient<Channel>) {
        let target = self.lock();
        (target.at, target.client.clone())
    }

    /// Calls `addr` from now on (a leader named by a `NOT_LEADER` answer, or the next node).
    fn switch_to(&self, addr: &str) {
        let Ok(endpoint) = endpoint(addr, self.tls.as_ref()) else { return };
        let mut target = self.lock();
        if let Some(i) = target.addrs.iter().position(|a| a == addr) {
            target.at = i;
        } else {
            target.addrs.push(addr.to_string());
            target.at = target.addrs.len() - 1;
        }
        target.client = sized!(SequencerClient::new(endpoint.connect_lazy()));
    }

    /// After a failure of the node at position `failed`: the next node, if there are several
    /// and no other caller has moved on already (concurrent failures of one node must move
    /// past it once, not go round the group back to it).
    fn rotate(&self, failed: usize) {
        let next = {
            let target = self.lock();
            if target.addrs.len() < 2 || target.at != failed {
                return;
            }
            target.addrs[(target.at + 1) % target.addrs.len()].clone()
        };
        self.switch_to(&next);
    }

    /// Submits `entry` and returns its receipt once its window is durable. After
    /// [`RemoteError::Unavailable`] or [`RemoteError::BadResponse`] the entry may or may not
    /// be logged: submitting it again (same client id) returns the original receipt, marked
    /// duplicate, if it was. [`RemoteError::ClockSkew`] and [`RemoteError::Refused`] mean the
    /// sequencer refused this request: nothing of it was logged. (A receipt whose clock is too
    /// far ahead is a bad response, not a refusal: the entry is logged.)
    pub async fn submit(&self, entry: &Entry) -> Result<Receipt, RemoteError> {
        let mut hops = 0;
        loop {
            let (at, client) = self.client();
            match self.submit_once(client, entry).await {
                Ok(receipt) => return Ok(receipt),
                Err(e) => match self.steer(at, e, &mut hops) {
                    Steer::Again => {}
                    Steer::Fail(e) => return Err(e),
                },
            }
        }
    }

    /// Submits up to [`MAX_BATCH`](crate::MAX_BATCH) entries in one request, each answered as
    /// [`RemoteSequencer::submit`] would answer it alone; or the request's own failure, which
    /// leaves every entry's fate unknown.
    pub async fn submit_many(
        &self,
        entries: &[Entry],
    ) -> Result<Vec<Result<Receipt, RemoteError>>, RemoteError> {
        let mut hops = 0;
        loop {
            let (at, client) = self.client();
            let results = match self.submit_many_once(client, entries).await {
                Ok(results) => results,
                Err(e) => match self.steer(at, e, &mut hops) {
                    Steer::Again => continue,
                    Steer::Fail(e) => return Err(e),
                },
            };
            // A node that does not lead logged none of them: follow it to the leader once for
            // them all, and each is submitted again by its caller.
            let steered = results.iter().find_map(|r| match r {
                Err(e @ RemoteError::NotLeader { .. }) => Some(e.clone()),
                _ => None,
            });
            if let Some(e) = steered {
                let again = match self.steer(at, e, &mut hops) {
                    Steer::Again => RemoteError::Unavailable("not the leader; submit again".into()),
                    Steer::Fail(e) => e,
                };
                let results = results.into_iter().map(|r| match r {
                    Err(RemoteError::NotLeader { .. }) => Err(again.clone()),
                    r => r,
                });
                return Ok(results.collect());
            }
            return Ok(results);
        }
    }

    /// After the node at position `at` failed a submission with `e`: call again at once (at
    /// the leader it named), or fail the call, having moved on to the next node if that may
    /// help the next one.
    fn steer(&self, at: usize, e: RemoteError, hops: &mut usize) -> Steer {
        let group = self.lock().addrs.len() > 1;
        match e {
            RemoteError::NotLeader { leader: Some(leader) } if *hops < LEADER_HOPS => {
                *hops += 1;
                self.switch_to(&leader);
                Steer::Again
            }
            RemoteError::NotLeader { leader: None } | RemoteError::Unavailable(_) if group => {
                self.rotate(at);
                Steer::Fail(RemoteError::Unavailable("no leader reached; try again".into()))
            }
            // One member's clock out of bounds (or ours against it): nothing was logged
            // there; another member may take it.
            RemoteError::ClockSkew(why) if group => {
                self.rotate(at);
                Steer::Fail(RemoteError::Unavailable(format!("a member refused: {why}")))
            }
            e => Steer::Fail(e),
        }
    }

    async fn submit_once(
        &self,
        mut client: SequencerClient<Channel>,
        entry: &Entry,
    ) -> Result<Receipt, RemoteError> {
        let request = submission(entry, stamp(&self.clock));
        let r = self.bounded(|limit| client.submit(timed(request, limit))).await?;
        observe_response(&self.clock, r.hlc)
            .map_err(|e| RemoteError::BadResponse(format!("a receipt refused: {e}")))?;
        receipt(r)
    }

    async fn submit_many_once(
        &self,
        mut client: SequencerClient<Channel>,
        entries: &[Entry],
    ) -> Result<Vec<Result<Receipt, RemoteError>>, RemoteError> {
        let request = v1::SubmitManyRequest {
            hlc: stamp(&self.clock),
            items: entries.iter().map(|e| submission(e, 0)).collect(),
        };
        let r = self.bounded(|limit| client.submit_many(timed(request, limit))).await?;
        observe_response(&self.clock, r.hlc)
            .map_err(|e| RemoteError::BadResponse(format!("receipts refused: {e}")))?;
        if r.results.len() != entries.len() {
            return Err(RemoteError::BadResponse(format!(
                "{} results for {} entries",
                r.results.len(),
                entries.len()
            )));
        }
        let results = r.results.into_iter().map(|r| match r.result {
            Some(v1::submit_result::Result::Receipt(r)) => receipt(r),
            Some(v1::submit_result::Result::Failed(status)) => Err(item_failure(status).into()),
            None => Err(RemoteError::BadResponse("a result without a receipt or failure".into())),
        });
        Ok(results.collect())
    }

    /// A submission's answer, waited for at most [`SUBMIT_TIMEOUT`] (a group's node,
    /// [`GROUP_SUBMIT_TIMEOUT`]): the sequencer answers once the window is durable, and a
    /// wedged one must not keep the caller forever (the entry's fate is then unknown, as after
    /// any failure). `call` gets the limit for the request's header; the limit is kept here
    /// too, since the header bounds the server's wait, not a connection whose packets vanish
    /// (a partition), where the call would wait until it heals.
    async fn bounded<T, Fut>(
        &self,
        call: impl FnOnce(std::time::Duration) -> Fut,
    ) -> Result<T, RemoteError>
    where
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let group = self.lock().addrs.len() > 1;
        let limit = if group { GROUP_SUBMIT_TIMEOUT } else { SUBMIT_TIMEOUT };
        let answer = tokio::time::timeout(limit, call(limit)).await.map_err(|_| {
            RemoteError::Unavailable(format!("no receipt in {} s", limit.as_secs()))
        })??;
        Ok(answer.into_inner())
    }

    /// One unary call to the node this client follows, answered within
    /// [`GROUP_SUBMIT_TIMEOUT`]: a `NOT_LEADER` answer naming the leader is followed there, one
    /// without a leader or no answer moves to the next node, for the next call.
    async fn unary<T, F, Fut>(&self, call: F) -> Result<T, RemoteError>
    where
        F: FnOnce(SequencerClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let (at, client) = self.client();
        let answer = tokio::time::timeout(GROUP_SUBMIT_TIMEOUT, call(client))
            .await
            .unwrap_or_else(|_| Err(tonic::Status::unavailable("no answer in 2 s")));
        answer.map(tonic::Response::into_inner).map_err(|status| {
            let e = RemoteError::from(status);
            match &e {
                RemoteError::NotLeader { leader: Some(leader) } => self.switch_to(leader),
                RemoteError::NotLeader { .. } | RemoteError::Unavailable(_) => self.rotate(at),
                _ => {}
            }
            e
        })
    }

    /// Asks for a window after `after` (the last one the caller has) to be logged even if
    /// empty, unless there is one already.
    pub async fn request_window(&self, after: Epoch) -> Result<(), RemoteError> {
        let request = v1::RequestWindowRequest { hlc: stamp(&self.clock), after_epoch: after.0 };
        let r = self.unary(|mut c| async move { c.request_window(request).await }).await?;
        observe_response(&self.clock, r.hlc)
    }

    /// Reports that replica `replica` of `shard` has flushed every window up to `epoch`, so
    /// the log may drop what every replica has. Returns the log's first window.
    pub async fn flushed(
        &self,
        shard: ShardId,
        replica: u32,
        epoch: Epoch,
    ) -> Result<Epoch, RemoteError> {
        let request =
            v1::FlushedRequest { hlc: stamp(&self.clock), shard: shard.0, replica, epoch: epoch.0 };
        let r = self.unary(|mut c| async move { c.flushed(request).await }).await?;
        observe_response(&self.clock, r.hlc)?;
        Ok(Epoch(r.log_first))
    }

    /// Tells the sequencer that replica `replica` of `shard` has applied every window up to
    /// `epoch`, so that it may seal the next one early.
    pub async fn applied(
        &self,
        shard: ShardId,
        replica: u32,
        epoch: Epoch,
    ) -> Result<(), RemoteError> {
        let request =
            v1::AppliedRequest { hlc: stamp(&self.clock), shard: shard.0, replica, epoch: epoch.0 };
        let r = self.unary(|mut c| async move { c.applied(request).await }).await?;
        observe_response(&self.clock, r.hlc)
    }

    /// Streams `reports` (each: a replica applied every window up to its epoch, stamped when
    /// made) to the node this client follows, until `reports` ends or the call fails.
    pub async fn report_applied(
        &self,
        reports: impl tokio_stream::Stream<Item = v1::AppliedRequest> + Send + 'static,
    ) -> Result<(), RemoteError> {
        let (at, mut client) = self.client();
        match client.report_applied(reports).await {
            Ok(r) => observe_response(&self.clock, r.into_inner().hlc),
            Err(status) => {
                // The next stream goes to the next node (any takes reports; a group ignores them).
                self.rotate(at);
                Err(status.into())
            }
        }
    }

    /// `shard`'s slices of every window from `from` on, then the live ones and ticks.
    pub async fn subscribe(
        &self,
        shard: ShardId,
        from: Epoch,
    ) -> Result<mpsc::Receiver<Result<SliceDelivery, RemoteError>>, RemoteError> {
        let request =
            v1::SubscribeRequest { hlc: stamp(&self.clock), shard: shard.0, from_epoch: from.0 };
        let (at, mut client) = self.client();
        let opened = tokio::time::timeout(SUBSCRIPTION_SILENCE, client.subscribe(request))
            .await
            .unwrap_or_else(|_| Err(tonic::Status::unavailable("no answer in 1 s")));
        let mut stream = match opened {
            Ok(stream) => stream.into_inner(),
            Err(status) => {
                // Any node serves committed windows: the next call tries another.
                self.rotate(at);
                return Err(status.into());
            }
        };
        let (tx, rx) = mpsc::channel(256);
        let clock = self.clock.clone();
        let sequencer = self.clone();
        tokio::spawn(async move {
            loop {
                let item = match tokio::time::timeout(SUBSCRIPTION_SILENCE, stream.message()).await
                {
                    Ok(Ok(Some(slice))) => slice_delivery(&clock, slice),
                    Ok(Ok(None)) => {
                        Err(RemoteError::Unavailable("the sequencer ended the stream".into()))
                    }
                    Ok(Err(status)) => Err(status.into()),
                    Err(_) => {
                        // Cut off or paused: nothing from it for too long.
                        Err(RemoteError::Unavailable(format!(
                            "nothing from the sequencer in {} s",
                            SUBSCRIPTION_SILENCE.as_secs()
                        )))
                    }
                };
                let last = item.is_err();
                if last {
                    // A member whose stream failed (or whose clock is refused): the next
                    // subscription goes to another.
                    sequencer.rotate(at);
                }
                if tx.send(item).await.is_err() || last {
                    return;
                }
            }
        });
        Ok(rx)
    }
}

fn slice_delivery(clock: &Clock, s: v1::WindowSlice) -> Result<SliceDelivery, RemoteError> {
    observe_response(clock, s.hlc)?;
    let ts = Timestamp::from_u64(s.window_ts);
    if s.tick {
        return Ok(SliceDelivery::Tick(ts));
    }
    let epoch = Epoch(s.epoch);
    let entries = s
        .entries
        .into_iter()
        .map(|e| {
            let txn = TxnId { epoch, index: e.index };
            let id = ClientId::from_bytes(&e.client_id).ok_or_else(|| {
                RemoteError::BadResponse(format!(
                    "entry {txn}: a client id of {} bytes",
                    e.client_id.len()
                ))
            })?;
            let participants = e.participants.into_iter().map(ShardId).collect();
            Ok((txn, Entry::new(id, participants, e.payload.into())))
        })
        .collect::<Result<_, RemoteError>>()?;
    Ok(SliceDelivery::Window { epoch, ts, entries })
}
