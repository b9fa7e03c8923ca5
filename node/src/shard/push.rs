//! Pushing to peers what their window step would ask this replica for, and answering this
//! replica's asks from what its peers pushed ([`txn::Command::PushReads`]).
//!
//! ```text
//!   shard P, window e                              shard S, window e
//!   PushReads(S, points)  ──Push stream──> Inbox ──> ReadRemote(P, pushed): the pushed values,
//!   PushRunReads(S, ...)  ──(one per peer)─>  │       a GetMany for any key that did not come
//!   PublishVerdicts(to S) ──────────────────> │ ───> ReadRemote(P, ran), after S's first run:
//!                                             │       what P's first run read, the rest asked
//!                                             └────> PullVerdicts(P): the pushed verdicts,
//!                                                    else the Verdicts call
//! ```
//!
//! Asking costs a request and an answer per peer per window, each a message through HTTP/2 on
//! both sides; pushing costs one message on a stream that stays open. A push is only ever a
//! shortcut for the answer the ask would get (the same values at the same timestamp, or the
//! same verdicts: every replica of a shard computes them alike), so the ask is the fallback
//! whenever one does not come:
//!
//! - **Lanes.** Replica `r` of shard P pushes to the replicas `r'` of each other shard with
//!   `r' % replicas(P) == r`, so each replica hears one replica of every peer shard. Its
//!   messages come in window order: reads for a window, then verdicts, then the next window.
//! - **Waiting.** An ask the step marks `pushed` waits for the push for at most
//!   [`PUSH_PATIENCE`], and not at all once the peer's lane has gone past the window without
//!   it (dropped or lost in a reconnect), or has been silent for [`LANE_LIVE`] (its replica is
//!   down: asks go round the replicas as before). An ask marked `ran` waits for the peer's
//!   run reads until its verdicts of the window come (a run that read nothing more pushes
//!   nothing), and takes every key they hold, not only those asked: the run after next needs
//!   them too.
//! - **Bounds.** The inbox keeps pushes for the next [`PUSH_AHEAD`] windows only, one of each
//!   kind per peer and window; a push of reads holds at most what one `GetMany` answers, a
//!   push of run reads as many keys and rows together. Each peer's queue holds
//!   [`STREAM_QUEUE`] messages; a full one drops (the receiver asks).
//! - **Trust.** A push is checked before it is kept: keys, ranges and rows on the sender's
//!   shard only, so what it says is only ever about the keys the sender answers for.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ::sequencer::{ShardId, TxnId};
use clock::{Epoch, Timestamp};
use proto::v1;
use proto::v1::shard_client::ShardClient;
use tokio::runtime::Handle;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;
use tonic::transport::Channel;

use storage::KeyRange;
use txn::{Rows, range_from_proto, range_to_proto};

use super::{PEER_RETRY, State, lock};
use client::{MAX_SCAN_ROWS, SCAN_RESPONSE_BYTES, malformed, stamp};

/// How long an ask waits for a push its peer's lane should bring.
pub(super) const PUSH_PATIENCE: Duration = Duration::from_millis(100);

/// A lane silent this long counts as down: asks do not wait for it.
pub(super) const LANE_LIVE: Duration = Duration::from_secs(1);

/// Pushes are kept for this many windows past the last one applied; later ones are dropped.
pub(super) const PUSH_AHEAD: u64 = 4;

/// Messages queued for one stream, to a peer replica or the sequencer (a few windows' worth).
const STREAM_QUEUE: usize = 64;

/// Values a peer pushed: its values of keys at a timestamp.
type Values = HashMap<Vec<u8>, Option<Vec<u8>>>;

/// What a peer's first run of a window read of its keys ([`txn::Command::PushRunReads`]):
/// values, and ranges with their first rows and whether those are all.
#[derive(Default)]
pub(super) struct RunReads {
    pub(super) points: Values,
    pub(super) scans: Vec<(KeyRange, Rows, bool)>,
}

/// Pushes of reads by window and sender, with the timestamp they were read at.
type Kept<T> = BTreeMap<(Epoch, ShardId), (Timestamp, T)>;

/// The kinds of push, in the order a lane sends them for a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Reads,
    RunReads,
    Verdicts,
}

/// What peers pushed for the windows this replica has not applied yet.
#[derive(Default)]
pub(super) struct Inbox {
    /// By peer shard: the last push its lane sent (window and kind), and when.
    heard: BTreeMap<ShardId, ((Epoch, Kind), Instant)>,
    reads: Kept<Values>,
    run_reads: Kept<RunReads>,
    verdicts: BTreeMap<(Epoch, ShardId), Vec<(TxnId, bool)>>,
}

impl Inbox {
    /// Forgets the pushes of windows up to `applied`.
    pub(super) fn applied(&mut self, applied: Epoch) {
        self.reads.retain(|(e, _), _| *e > applied);
        self.run_reads.retain(|(e, _), _| *e > applied);
        self.verdicts.retain(|(e, _), _| *e > applied);
    }
}

/// What a push is for, as the receiver checks it.
enum Pushed {
    Reads(Timestamp, Values),
    RunReads(Timestamp, RunReads),
    Verdicts(Vec<(TxnId, bool)>),
}

impl Pushed {
    fn kind(&self) -> Kind {
        match self {
            Pushed::Reads(..) => Kind::Reads,
            Pushed::RunReads(..) => Kind::RunReads,
            Pushed::Verdicts(_) => Kind::Verdicts,
        }
    }
}

impl State {
    /// Takes a message of a peer's push stream: checked, then kept if it is for one of the
    /// next [`PUSH_AHEAD`] windows. A malformed one is refused (the stream ends); one of a
    /// kind this version does not know is skipped.
    pub(super) fn take_push(&self, m: v1::PushMessage) -> Result<(), Status> {
        let from = ShardId(m.from_shard);
        if from.0 >= self.map.len() || from == self.shard {
            return Err(malformed(format!(
                "a push from shard {} to shard {}",
                from.0, self.shard.0
            )));
        }
        let window = Epoch(m.window);
        let pushed = match m.kind {
            Some(v1::push_message::Kind::Reads(r)) => {
                if r.keys.len() != r.values.len() || r.keys.len() > MAX_SCAN_ROWS as usize {
                    return Err(malformed(format!(
                        "pushed reads: {} keys and {} values (at most {MAX_SCAN_ROWS})",
                        r.keys.len(),
                        r.values.len()
                    )));
                }
                self.check_pushed_keys(from, &r.keys)?;
                let values = r.keys.into_iter().zip(r.values.into_iter().map(|v| v.value));
                Pushed::Reads(Timestamp::from_u64(r.read_ts), values.collect())
            }
            Some(v1::push_message::Kind::RunReads(r)) => {
                let rows: usize = r.scans.iter().map(|s| s.rows.len()).sum();
                let items = r.keys.len() + r.scans.len() + rows;
                if r.keys.len() != r.values.len() || items > MAX_SCAN_ROWS as usize {
                    return Err(malformed(format!(
                        "pushed run reads: {} keys, {} values, {} scans and {rows} rows (at \
                         most {MAX_SCAN_ROWS} keys, scans and rows)",
                        r.keys.len(),
                        r.values.len(),
                        r.scans.len(),
                    )));
                }
                self.check_pushed_keys(from, &r.keys)?;
                let mut scans = Vec::with_capacity(r.scans.len());
                for scan in r.scans {
                    let range = range_from_proto(scan.range.unwrap_or_default());
                    if range.is_empty() || self.map.clip(&range, from) != range {
                        return Err(malformed(format!(
                            "a pushed scan of {range:?}, not a range of shard {}",
                            from.0
                        )));
                    }
                    if scan.rows.iter().any(|row| !range.contains(&row.key)) {
                        return Err(malformed(format!("a pushed row outside {range:?}")));
                    }
                    let rows = scan.rows.into_iter().map(|kv| (kv.key, kv.value)).collect();
                    scans.push((range, rows, scan.complete));
                }
                let points = r.keys.into_iter().zip(r.values.into_iter().map(|v| v.value));
                let reads = RunReads { points: points.collect(), scans };
                Pushed::RunReads(Timestamp::from_u64(r.read_ts), reads)
            }
            Some(v1::push_message::Kind::Verdicts(v)) => Pushed::Verdicts(
                v.verdicts
                    .into_iter()
                    .map(|v| (TxnId { epoch: Epoch(v.epoch), index: v.index }, v.commit))
                    .collect(),
            ),
            // A kind this version does not know (a newer peer's, during a rolling upgrade):
            // skipped, not refused. A push only ever saves an ask, which is still made.
            None => return Ok(()),
        };
        let applied = self.progress().applied;
        let mut inbox = lock(&self.inbox);
        let at = (window, pushed.kind());
        let heard = inbox.heard.entry(from).or_insert((at, Instant::now()));
        *heard = (heard.0.max(at), Instant::now());
        if window > applied && window.0 <= applied.0.saturating_add(PUSH_AHEAD) {
            match pushed {
                Pushed::Reads(at, values) => {
                    inbox.reads.entry((window, from)).or_insert((at, values));
                }
                Pushed::RunReads(at, reads) => {
                    inbox.run_reads.entry((window, from)).or_insert((at, reads));
                }
                Pushed::Verdicts(verdicts) => {
                    inbox.verdicts.entry((window, from)).or_insert(verdicts);
                }
            }
        }
        drop(inbox);
        self.pushed.send_modify(|n| *n += 1);
        Ok(())
    }

    /// The values `shard` pushed for `window` at `at`, once they come; `None` if they will not
    /// (see the module's doc).
    pub(super) async fn pushed_reads(
        &self,
        window: Epoch,
        shard: ShardId,
        at: Timestamp,
    ) -> Option<Values> {
        // Reads are the first thing a lane pushes for a window.
        self.pushed_at(shard, (window, Kind::Reads), at, |inbox| &mut inbox.reads).await
    }

    /// What `shard`'s first run of `window` read, pushed at `at`, once it comes; `None` if it
    /// will not (the lane pushed the window's verdicts without it, or see the module's doc).
    pub(super) async fn pushed_run_reads(
        &self,
        window: Epoch,
        shard: ShardId,
        at: Timestamp,
    ) -> Option<RunReads> {
        self.pushed_at(shard, (window, Kind::RunReads), at, |inbox| &mut inbox.run_reads).await
    }

    /// The push of `shard`'s for `(window, kind)` that `kept` holds, if read at `at`.
    async fn pushed_at<T>(
        &self,
        shard: ShardId,
        (window, kind): (Epoch, Kind),
        at: Timestamp,
        kept: fn(&mut Inbox) -> &mut Kept<T>,
    ) -> Option<T> {
        self.await_push(shard, (window, kind), |inbox| {
            let (pushed_at, values) = kept(inbox).remove(&(window, shard))?;
            // Another timestamp would be another window's: not these reads.
            (pushed_at == at).then_some(values)
        })
        .await
    }

    /// Refuses pushed keys that are not the sender's.
    fn check_pushed_keys(&self, from: ShardId, keys: &[Vec<u8>]) -> Result<(), Status> {
        match keys.iter().find(|k| self.map.shard_of(k) != from) {
            Some(key) => Err(malformed(format!(
                "a pushed key {key:?} not on shard {} that pushed it",
                from.0
            ))),
            None => Ok(()),
        }
    }

    /// The local verdicts `shard` pushed for `window`, once they come; `None` if they will
    /// not.
    pub(super) async fn pushed_verdicts(
        &self,
        window: Epoch,
        shard: ShardId,
    ) -> Option<Vec<(TxnId, bool)>> {
        // Verdicts come after the window's reads, before anything of the next window.
        self.await_push(shard, (window, Kind::Verdicts), |inbox| {
            inbox.verdicts.remove(&(window, shard))
        })
        .await
    }

    /// Waits for `take` to find a push of `shard`'s, while its lane is live, has pushed
    /// nothing at `until` (a window and a kind) or later, and for at most [`PUSH_PATIENCE`].
    async fn await_push<T>(
        &self,
        shard: ShardId,
        until: (Epoch, Kind),
        mut take: impl FnMut(&mut Inbox) -> Option<T>,
    ) -> Option<T> {
        let mut changes = self.pushed.subscribe();
        let deadline = tokio::time::Instant::now() + PUSH_PATIENCE;
        loop {
            {
                let mut inbox = lock(&self.inbox);
                if let Some(found) = take(&mut inbox) {
                    return Some(found);
                }
                match inbox.heard.get(&shard) {
                    Some((latest, when)) if *latest < until && when.elapsed() < LANE_LIVE => {}
                    _ => return None,
                }
            }
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => {}
                _ => return None,
            }
        }
    }
}

/// The sending side: one stream per peer replica this replica's lane reaches, each kept open
/// by a task of its own ([`keep_streaming`]: opened again after a failure; what was in flight
/// on the failed stream is lost, and the receiver asks for it).
pub(super) struct Pusher {
    lanes: BTreeMap<ShardId, Vec<mpsc::Sender<v1::PushMessage>>>,
    state: Arc<State>,
}

impl Pusher {
    /// Streams to `targets` (peer shards' replicas in this replica's lane), on `handle`.
    pub(super) fn start(
        targets: Vec<(ShardId, ShardClient<Channel>)>,
        state: Arc<State>,
        handle: &Handle,
    ) -> Pusher {
        let mut lanes: BTreeMap<ShardId, Vec<_>> = BTreeMap::new();
        for (shard, client) in targets {
            let (queue, queued) = mpsc::channel(STREAM_QUEUE);
            handle.spawn(stream_to(client, queued, state.clone()));
            lanes.entry(shard).or_default().push(queue);
        }
        Pusher { lanes, state }
    }

    /// Pushes `points` (this shard's keys) at `at` to `to`'s replicas in this lane: read here,
    /// on the apply thread, up to what one `GetMany` answers (the peer asks for the rest).
    pub(super) fn reads(
        &self,
        window: Epoch,
        to: ShardId,
        at: Timestamp,
        points: Vec<Vec<u8>>,
    ) -> Result<(), storage::StorageError> {
        if !self.lanes.contains_key(&to) {
            return Ok(());
        }
        let (keys, values) = self.values(points, at, &mut 0)?;
        let reads = v1::PushedReads { read_ts: at.as_u64(), keys, values };
        self.send(window, to, v1::push_message::Kind::Reads(reads));
        Ok(())
    }

    /// Pushes what this shard's first run of `window` read of `points` and `scans` at `at` to
    /// `to`'s replicas in this lane: read here, on the apply thread, up to [`MAX_SCAN_ROWS`]
    /// keys, scans and rows and about [`SCAN_RESPONSE_BYTES`] (a scan cut short says so).
    pub(super) fn run_reads(
        &self,
        window: Epoch,
        to: ShardId,
        at: Timestamp,
        points: Vec<Vec<u8>>,
        scans: Vec<KeyRange>,
    ) -> Result<(), storage::StorageError> {
        if !self.lanes.contains_key(&to) {
            return Ok(());
        }
        let mvcc = &self.state.mvcc;
        let mut bytes = 0;
        let (keys, values) = self.values(points, at, &mut bytes)?;
        let mut room = MAX_SCAN_ROWS as usize - keys.len();
        let mut scanned = Vec::new();
        for range in scans {
            if room <= 1 || bytes >= SCAN_RESPONSE_BYTES {
                break;
            }
            room -= 1; // the scan itself
            let (found, stopped) =
                mvcc.scan_bounded(&range, at, room, SCAN_RESPONSE_BYTES - bytes)?;
            room -= found.len();
            let rows = found
                .into_iter()
                .map(|(key, v)| {
                    bytes += key.len() + v.value.len();
                    v1::KeyValue { key, value: v.value, version_ts: v.ts.as_u64() }
                })
                .collect();
            let range = Some(range_to_proto(&range));
            scanned.push(v1::ScannedRange { range, rows, complete: !stopped });
        }
        let reads = v1::RunReads { read_ts: at.as_u64(), keys, values, scans: scanned };
        self.send(window, to, v1::push_message::Kind::RunReads(reads));
        Ok(())
    }

    /// The values of `points` at `at`: up to [`MAX_SCAN_ROWS`] of them, while `bytes` (counting
    /// keys and values) is below [`SCAN_RESPONSE_BYTES`].
    fn values(
        &self,
        points: Vec<Vec<u8>>,
        at: Timestamp,
        bytes: &mut usize,
    ) -> Result<(Vec<Vec<u8>>, Vec<v1::MaybeValue>), storage::StorageError> {
        let (mut keys, mut values) = (Vec::new(), Vec::new());
        for key in points.into_iter().take(MAX_SCAN_ROWS as usize) {
            if *bytes >= SCAN_RESPONSE_BYTES {
                break;
            }
            let value = self.state.mvcc.get(&key, at)?.map(|v| v.value);
            *bytes += key.len() + value.as_ref().map_or(0, Vec::len);
            keys.push(key);
            values.push(v1::MaybeValue { value });
        }
        Ok((keys, values))
    }

    /// Pushes this shard's local `verdicts` of `window` to each of `to`.
    pub(super) fn verdicts(&self, window: Epoch, to: &[ShardId], verdicts: &[(TxnId, bool)]) {
        let batch = v1::VerdictBatch {
            hlc: 0,
            epoch: window.0,
            from_shard: self.state.shard.0,
            verdicts: verdicts
                .iter()
                .map(|(t, commit)| v1::Verdict {
                    index: t.index,
                    commit: *commit,
                    epoch: t.epoch.0,
                })
                .collect(),
        };
        for shard in to {
            self.send(window, *shard, v1::push_message::Kind::Verdicts(batch.clone()));
        }
    }

    fn send(&self, window: Epoch, to: ShardId, kind: v1::push_message::Kind) {
        let Some(queues) = self.lanes.get(&to) else { return };
        let message = v1::PushMessage {
            hlc: stamp(&self.state.clock),
            from_shard: self.state.shard.0,
            window: window.0,
            kind: Some(kind),
        };
        for queue in queues {
            // A full queue (the peer is not taking them): this one is dropped; it asks.
            let _ = queue.try_send(message.clone());
        }
    }
}

/// Keeps a push stream to `client` open and feeds it `queued`, until this replica stops.
async fn stream_to(
    client: ShardClient<Channel>,
    queued: mpsc::Receiver<v1::PushMessage>,
    state: Arc<State>,
) {
    let open = |messages| {
        let mut client = client.clone();
        async move { client.push(messages).await.map(drop).map_err(|e| e.to_string()) }
    };
    let source = ReceiverStream::new(queued);
    keep_streaming(source, open, state.stopped(), state.shard, "push").await;
}

/// Keeps a client-streaming call open and feeds it what `source` gives, until `source` ends
/// or `stopped` resolves: the call is opened with the first message, and again (after
/// [`PEER_RETRY`]) with the next message once it ends. A call that stops taking messages holds
/// back the source, with up to [`STREAM_QUEUE`] of them queued.
pub(super) async fn keep_streaming<M, F>(
    source: impl tokio_stream::Stream<Item = M>,
    mut open: impl FnMut(ReceiverStream<M>) -> F,
    stopped: impl Future<Output = ()>,
    shard: ShardId,
    what: &'static str,
) where
    F: Future<Output = Result<(), String>>,
{
    use tokio_stream::StreamExt;
    tokio::pin!(source, stopped);
    loop {
        let first = tokio::select! {
            m = source.next() => m,
            () = &mut stopped => None,
        };
        let Some(first) = first else { return };
        let (stream, messages) = mpsc::channel(STREAM_QUEUE);
        let _ = stream.try_send(first);
        let call = open(ReceiverStream::new(messages));
        tokio::pin!(call);
        loop {
            tokio::select! {
                ended = &mut call => {
                    if let Err(e) = ended {
                        tracing::debug!(shard = shard.0, error = %e, what, "stream ended");
                    }
                    break;
                }
                m = source.next() => match m {
                    Some(m) => {
                        if stream.send(m).await.is_err() {
                            break;
                        }
                    }
                    None => return,
                },
                () = &mut stopped => return,
            }
        }
        tokio::select! {
            () = tokio::time::sleep(PEER_RETRY) => {}
            () = &mut stopped => return,
        }
    }
}
