//! [`OutcomeWatch`]: one shard's outcomes of this client's transactions, pushed on a
//! `WatchOutcomes` stream, so that a call learns its outcome without asking for it.
//!
//! A call registers its client id with the watch before it submits its entry ([`Waiter`]):
//! the outcome may be pushed before the sequencer's receipt comes back. The shard pushes
//! every window after the `since` its stream began with; a call whose entry was logged in
//! that window or before, or whose stream is not open, asks with `AwaitOutcomes` as before
//! (so does one whose receipt is a duplicate: its original may have been decided before the
//! call registered), and one whose outcome is slow to come asks as well
//! (the caller's choice: [`Client`](crate::Client) asks after `HEDGE`, as it hedges a
//! replica's answer). An answer to asking that wins because the shard's calls moved to
//! another replica (the watched one is paused, failed or behind) moves the watch there too
//! ([`OutcomeWatch::outrun`]). A stream that ends (the replica stops, fails or drops a
//! watcher that fell behind) wakes its waiters to ask, and is opened again, on the shard's
//! current replica, after a pause.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use ::sequencer::{ShardId, TxnId};
use clock::{Clock, Epoch};
use proto::v1;
use tokio::sync::{Notify, oneshot};
use tonic::Status;
use txn::Outcome;

use crate::replicas::{ATTEMPT, Replicas, fails_over};
use crate::wire::{observe_response, outcome_from_proto, stamp};

/// The first pause before opening a stream again; it doubles up to [`MAX_PAUSE`].
const PAUSE: Duration = Duration::from_millis(20);
const MAX_PAUSE: Duration = Duration::from_secs(1);

/// The watch of one shard's outcomes; dropping it ends its stream.
pub(crate) struct OutcomeWatch {
    shared: Arc<Shared>,
    _stop: oneshot::Sender<()>,
}

#[derive(Default)]
struct Shared {
    /// The open stream's waiters; `None` while no stream is open.
    live: Mutex<Option<Live>>,
    /// The shard's calls moved to another replica than the one watched: the stream is opened
    /// again there. Wakes only a stream waiting for its next message (no permit is kept for a
    /// later stream).
    moved: Notify,
}

struct Live {
    /// The replica watched.
    replica: usize,
    since: Epoch,
    /// By the lower 64 bits of the client id.
    waiters: HashMap<u64, oneshot::Sender<Outcome>>,
}

impl Shared {
    fn live(&self) -> MutexGuard<'_, Option<Live>> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A call waiting for its outcome to be pushed. Dropping it unregisters it.
pub(crate) struct Waiter<'a> {
    shared: &'a Shared,
    id: u64,
    since: Epoch,
    pushed: oneshot::Receiver<Outcome>,
}

impl Waiter<'_> {
    /// The outcome of `txn` (logged under this waiter's id) once pushed; `None` at once if
    /// it will not be (logged before the watch began), or when the stream ends: ask for it.
    /// Waits as long as the stream lasts: the caller bounds the wait.
    pub(crate) async fn outcome(mut self, txn: TxnId) -> Option<Outcome> {
        if txn.epoch <= self.since {
            return None;
        }
        (&mut self.pushed).await.ok()
    }
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        if let Some(live) = self.shared.live().as_mut() {
            live.waiters.remove(&self.id);
        }
    }
}

impl OutcomeWatch {
    /// Watches `shard`'s outcomes of the client ids whose upper 64 bits are `salt`, on a
    /// stream kept open by a task on the current runtime.
    pub(crate) fn start(
        shards: Arc<Replicas>,
        shard: ShardId,
        clock: Arc<Clock>,
        salt: u64,
    ) -> OutcomeWatch {
        let shared = Arc::new(Shared::default());
        let (stop, stopped) = oneshot::channel();
        tokio::spawn(keep_watching(shards, shard, clock, salt, shared.clone(), stopped));
        OutcomeWatch { shared, _stop: stop }
    }

    /// Registers the call with client id lower bits `id`, if a stream is open.
    pub(crate) fn wait(&self, id: u64) -> Option<Waiter<'_>> {
        let mut live = self.shared.live();
        let live = live.as_mut()?;
        let (to, pushed) = oneshot::channel();
        live.waiters.insert(id, to);
        Some(Waiter { shared: &self.shared, id, since: live.since, pushed })
    }

    /// An outcome came sooner by asking `shard`'s replica `current` (where the shard's calls
    /// go now): if the watch is on another, it moves there.
    pub(crate) fn outrun(&self, current: usize) {
        if self.shared.live().as_ref().is_some_and(|l| l.replica != current) {
            self.shared.moved.notify_waiters();
        }
    }
}

/// Opens the stream, hands its outcomes to their waiters, and opens it again when it ends,
/// until `stop` resolves (the watch was dropped).
async fn keep_watching(
    shards: Arc<Replicas>,
    shard: ShardId,
    clock: Arc<Clock>,
    salt: u64,
    shared: Arc<Shared>,
    mut stop: oneshot::Receiver<()>,
) {
    let _closing = Closing(shared.clone());
    let mut pause = PAUSE;
    loop {
        let (replica, mut c) = shards.current(shard);
        let request = v1::WatchOutcomesRequest { hlc: stamp(&clock), salt };
        let open = async {
            let mut stream = c.watch_outcomes(request).await?.into_inner();
            let first = stream
                .message()
                .await?
                .ok_or_else(|| Status::unavailable("the outcome stream ended at once"))?;
            Ok::<_, Status>((first, stream))
        };
        let opened = tokio::select! {
            opened = tokio::time::timeout(ATTEMPT, open) => opened,
            _ = &mut stop => return,
        };
        match opened {
            Ok(Ok((first, mut stream))) if observe_response(&clock, first.hlc).is_ok() => {
                let since = Epoch(first.since);
                *shared.live() = Some(Live { replica, since, waiters: HashMap::new() });
                pause = PAUSE;
                loop {
                    let message = tokio::select! {
                        m = stream.message() => m,
                        () = shared.moved.notified() => break,
                        _ = &mut stop => return,
                    };
                    match message {
                        Ok(Some(m)) if observe_response(&clock, m.hlc).is_ok() => {
                            deliver(&shared, m.outcomes);
                        }
                        Ok(_) => break,
                        Err(status) => {
                            tracing::debug!(shard = shard.0, %status, "outcome stream ended");
                            if fails_over(&status) {
                                shards.move_on(shard, replica);
                            }
                            break;
                        }
                    }
                }
                // Its waiters find their senders dropped, and ask.
                *shared.live() = None;
            }
            Ok(Err(status)) => {
                tracing::debug!(shard = shard.0, %status, "no outcome stream");
                if fails_over(&status) {
                    shards.move_on(shard, replica);
                }
            }
            _ => shards.move_on(shard, replica),
        }
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            _ = &mut stop => return,
        }
        pause = (pause * 2).min(MAX_PAUSE);
    }
}

/// Closes the watch when its task ends, however it ends (the watch dropped, or the runtime
/// shutting down): calls registered then ask, and later ones do not register.
struct Closing(Arc<Shared>);

impl Drop for Closing {
    fn drop(&mut self) {
        *self.0.live() = None;
    }
}

/// Hands each pushed outcome to its waiter, if any still waits. A waiter whose outcome is
/// malformed is dropped, and asks.
fn deliver(shared: &Shared, outcomes: Vec<v1::WatchedOutcome>) {
    let mut live = shared.live();
    let Some(live) = live.as_mut() else { return };
    for o in outcomes {
        if let Some(waiter) = live.waiters.remove(&o.id)
            && let Some(Ok(outcome)) = o.outcome.map(outcome_from_proto)
        {
            let _ = waiter.send(outcome);
        }
    }
}
