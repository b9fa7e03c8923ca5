//! [`Watchers`]: clients watching this replica's outcomes (`WatchOutcomes`), by the salt of
//! their client ids (a client's ids share their upper 64 bits).
//!
//! The apply thread hands each window's outcomes to the watchers whose salt they carry
//! ([`Publishing`]), without waiting: a watcher whose queue is full is dropped, its stream
//! ends, and its client asks for what it missed with `AwaitOutcomes`. A watch registers under
//! the same lock the apply thread holds from before a window's outcomes are published until
//! after its progress is, so the `since` a watch begins with is exact: every window after it
//! reaches the watcher, whenever it registered.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use ::sequencer::{ClientId, TxnId};
use client::{RefusalKind, refuse};
use clock::Epoch;
use tokio::sync::mpsc;
use tonic::{Code, Status};
use txn::{Decided, Outcome};

/// Most watches one replica serves at once (a client process holds one per shard).
pub(super) const MAX_WATCHERS: usize = 4096;

/// Windows of outcomes queued for one watcher before it is dropped as not keeping up.
const QUEUE: usize = 256;

/// One window's outcomes for one watcher: the lower 64 bits of each client id, the
/// transaction and its outcome.
pub(super) type Batch = Vec<(u64, TxnId, Outcome)>;

/// The watches of one replica.
#[derive(Default)]
pub(super) struct Watchers {
    by_salt: Mutex<HashMap<u64, Watcher>>,
    /// Tells one watch of a salt from the one that replaced it.
    next: AtomicU64,
    /// Outcomes queued for watchers.
    pub(super) pushed: AtomicU64,
    /// Watchers dropped for falling behind.
    pub(super) dropped: AtomicU64,
}

struct Watcher {
    id: u64,
    queue: mpsc::Sender<Batch>,
    /// This window's outcomes for it, while the apply thread publishes them.
    pending: Batch,
}

/// A registered watch: its outcomes come on `batches`; dropping it unregisters the watch (if
/// it is still the salt's).
pub(super) struct Registration {
    watchers: Arc<Watchers>,
    salt: u64,
    id: u64,
    pub(super) since: Epoch,
    pub(super) batches: mpsc::Receiver<Batch>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut by_salt = self.watchers.lock();
        if let Entry::Occupied(w) = by_salt.entry(self.salt)
            && w.get().id == self.id
        {
            w.remove();
        }
    }
}

impl Watchers {
    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Watcher>> {
        self.by_salt.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a watch of `salt`, ending the salt's earlier one. `applied` is read under
    /// the lock the apply thread publishes under: the window every later one is pushed after.
    pub(super) fn add(
        self: &Arc<Self>,
        salt: u64,
        applied: impl FnOnce() -> Epoch,
    ) -> Result<Registration, Status> {
        let mut by_salt = self.lock();
        if by_salt.len() >= MAX_WATCHERS && !by_salt.contains_key(&salt) {
            return Err(refuse(
                Code::ResourceExhausted,
                RefusalKind::Busy,
                format!("{MAX_WATCHERS} outcome watches already; await outcomes instead"),
            ));
        }
        let (queue, batches) = mpsc::channel(QUEUE);
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        by_salt.insert(salt, Watcher { id, queue, pending: Vec::new() });
        let since = applied();
        Ok(Registration { watchers: self.clone(), salt, id, since, batches })
    }

    /// How many watches are registered.
    pub(super) fn len(&self) -> usize {
        self.lock().len()
    }

    /// Starts publishing a window: no watch registers until [`Publishing::send`].
    pub(super) fn publishing(&self) -> Publishing<'_> {
        Publishing { watchers: self, by_salt: self.lock(), touched: Vec::new() }
    }
}

/// A window's outcomes on their way to the watchers; see [`Watchers`].
pub(super) struct Publishing<'a> {
    watchers: &'a Watchers,
    by_salt: MutexGuard<'a, HashMap<u64, Watcher>>,
    /// The salts given outcomes so far.
    touched: Vec<u64>,
}

impl Publishing<'_> {
    /// Takes a copy of each of `decided` whose client is watched.
    pub(super) fn collect(&mut self, decided: &[(Decided, ClientId)]) {
        if self.by_salt.is_empty() {
            return;
        }
        for (d, client) in decided {
            let salt = (client.0 >> 64) as u64;
            if let Some(w) = self.by_salt.get_mut(&salt) {
                if w.pending.is_empty() {
                    self.touched.push(salt);
                }
                w.pending.push((client.0 as u64, d.txn, d.outcome.clone()));
            }
        }
    }

    /// Queues each watcher its outcomes, dropping those whose queue is full or gone.
    pub(super) fn send(mut self) {
        for salt in std::mem::take(&mut self.touched) {
            let Entry::Occupied(mut w) = self.by_salt.entry(salt) else { continue };
            let batch = std::mem::take(&mut w.get_mut().pending);
            let outcomes = batch.len() as u64;
            match w.get().queue.try_send(batch) {
                Ok(()) => {
                    self.watchers.pushed.fetch_add(outcomes, Ordering::Relaxed);
                }
                Err(e) => {
                    if matches!(e, mpsc::error::TrySendError::Full(_)) {
                        tracing::debug!(salt, "an outcome watcher fell behind; dropped");
                        self.watchers.dropped.fetch_add(1, Ordering::Relaxed);
                    }
                    w.remove();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clock::Timestamp;

    fn decided(salt: u64, low: u64, index: u32) -> (Decided, ClientId) {
        let txn = TxnId { epoch: Epoch(1), index };
        let outcome = Outcome::Committed { ts: Timestamp::from_u64(7), output: vec![index as u8] };
        let id = ClientId((u128::from(salt) << 64) | u128::from(low));
        (Decided { txn, outcome, position: None }, id)
    }

    fn publish(watchers: &Watchers, window: &[(Decided, ClientId)]) {
        let mut p = watchers.publishing();
        p.collect(window);
        p.send();
    }

    /// Each watcher gets its own salt's outcomes, a window at a time; others none.
    #[test]
    fn a_window_reaches_the_watchers_of_its_salts() {
        let watchers = Arc::new(Watchers::default());
        let mut a = watchers.add(1, || Epoch(4)).unwrap();
        let mut b = watchers.add(2, || Epoch(5)).unwrap();
        assert_eq!((a.since, b.since), (Epoch(4), Epoch(5)));
        publish(&watchers, &[decided(1, 10, 0), decided(3, 11, 1), decided(1, 12, 2)]);
        let got: Vec<(u64, u32)> =
            a.batches.try_recv().unwrap().iter().map(|(low, t, _)| (*low, t.index)).collect();
        assert_eq!(got, [(10, 0), (12, 2)]);
        assert!(a.batches.try_recv().is_err(), "one batch for the window");
        assert!(b.batches.try_recv().is_err(), "nothing for salt 2");
    }

    /// A second watch of a salt ends the first; the first's drop leaves the second's.
    #[test]
    fn a_new_watch_of_a_salt_replaces_the_old() {
        let watchers = Arc::new(Watchers::default());
        let mut old = watchers.add(1, || Epoch(1)).unwrap();
        let mut new = watchers.add(1, || Epoch(2)).unwrap();
        assert_eq!(
            old.batches.try_recv().unwrap_err(),
            mpsc::error::TryRecvError::Disconnected,
            "the old watch's queue is closed"
        );
        drop(old);
        assert_eq!(watchers.len(), 1);
        publish(&watchers, &[decided(1, 5, 0)]);
        assert_eq!(new.batches.try_recv().unwrap().len(), 1);
        drop(new);
        assert_eq!(watchers.len(), 0);
    }

    /// A watcher that does not take its windows is dropped once its queue is full.
    #[test]
    fn a_watcher_that_falls_behind_is_dropped() {
        let watchers = Arc::new(Watchers::default());
        let mut slow = watchers.add(1, || Epoch(0)).unwrap();
        for _ in 0..QUEUE {
            publish(&watchers, &[decided(1, 5, 0)]);
        }
        assert_eq!(watchers.len(), 1);
        publish(&watchers, &[decided(1, 5, 0)]);
        assert_eq!(watchers.len(), 0);
        assert_eq!(watchers.dropped.load(Ordering::Relaxed), 1);
        assert_eq!(watchers.pushed.load(Ordering::Relaxed), QUEUE as u64);
        for _ in 0..QUEUE {
            slow.batches.try_recv().unwrap();
        }
        assert_eq!(
            slow.batches.try_recv().unwrap_err(),
            mpsc::error::TryRecvError::Disconnected,
            "its stream ends after what was queued"
        );
    }

    /// Watches registered while windows are published, in the apply thread's order (collect,
    /// progress, send): each gets every window after its `since`, in order, and none before.
    #[test]
    fn a_watch_registered_during_publication_misses_no_window_after_its_since() {
        const WINDOWS: u64 = 200;
        const SALTS: u64 = 64;
        let watchers = Arc::new(Watchers::default());
        let progress = Arc::new(AtomicU64::new(0));
        let publisher = {
            let (watchers, progress) = (watchers.clone(), progress.clone());
            std::thread::spawn(move || {
                for e in 1..=WINDOWS {
                    let window: Vec<_> = (0..SALTS)
                        .map(|salt| {
                            let (mut d, id) = decided(salt, e, 0);
                            d.txn.epoch = Epoch(e);
                            (d, id)
                        })
                        .collect();
                    let mut publishing = watchers.publishing();
                    publishing.collect(&window);
                    progress.store(e, Ordering::SeqCst);
                    publishing.send();
                    std::thread::yield_now();
                }
            })
        };
        // Salt `s` registers once about 3s windows are out, racing the next ones.
        let mut registrations = Vec::new();
        for salt in 0..SALTS {
            while progress.load(Ordering::SeqCst) < 3 * salt {
                std::thread::yield_now();
            }
            let p = progress.clone();
            registrations.push(watchers.add(salt, || Epoch(p.load(Ordering::SeqCst))).unwrap());
        }
        publisher.join().unwrap();
        for mut r in registrations {
            let mut got = Vec::new();
            while let Ok(batch) = r.batches.try_recv() {
                got.extend(batch.iter().map(|(low, txn, _)| (*low, txn.epoch.0)));
            }
            let want: Vec<(u64, u64)> = (r.since.0 + 1..=WINDOWS).map(|e| (e, e)).collect();
            assert_eq!(got, want, "salt {}, since {}", r.salt, r.since.0);
        }
    }

    /// Past the limit a new salt is refused, busy; a known salt still replaces its watch.
    #[test]
    fn watches_are_limited() {
        let watchers = Arc::new(Watchers::default());
        let held: Vec<_> =
            (0..MAX_WATCHERS as u64).map(|s| watchers.add(s, || Epoch(0)).unwrap()).collect();
        let refused = watchers.add(u64::MAX, || Epoch(0)).err().unwrap();
        assert_eq!(refused.code(), Code::ResourceExhausted);
        assert!(watchers.add(7, || Epoch(0)).is_ok());
        drop(held);
    }
}
