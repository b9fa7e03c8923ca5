//! [`Sequencer`]: the thread that runs a [`Sealer`] against a real clock and the durable
//! [`WindowLog`], and hands out receipts and windows.
//!
//! One thread owns the sealer and the log. Submissions arrive on a channel; whatever arrives
//! while a window is being fsynced goes into the next one (group commit). For each sealed
//! window, in order: hand it to subscribers that execute ahead, append and fsync, then
//! deliver it to every other subscriber (and its durability to those ahead), then answer the
//! submitters. If the log cannot be written, the sequencer stops: every waiting and later
//! submission gets an error, and nothing unlogged is ever delivered.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::Instant;

use clock::Epoch;
use clock::{Clock, Timestamp};

use crate::error::{SequencerError, panic_message};
use crate::ids::TxnId;
use crate::log::{LogReader, WindowLog};
use crate::sealer::{Admission, Sealer, SealerConfig};
use crate::window::{Entry, Window};

/// Proof that an entry is in a durable window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Receipt {
    /// The entry's transaction id.
    pub txn: TxnId,
    /// The window's timestamp.
    pub ts: Timestamp,
    /// True if the client id was already logged: `txn` is the earlier entry's id.
    pub duplicate: bool,
}

/// What subscribers receive, in order.
#[derive(Debug, Clone)]
pub enum Delivery {
    /// A sealed window. Epochs arrive consecutively. Through [`Sequencer::subscribe`] it is
    /// durable already; through [`Sequencer::subscribe_ahead`] it is durable once the
    /// [`Delivery::Durable`] that follows it arrives.
    Window(Arc<Window>),
    /// The window just delivered is durable (only through [`Sequencer::subscribe_ahead`]).
    Durable(Epoch),
    /// An idle tick: no window will ever be stamped at or below this timestamp, so a shard
    /// that has applied every window so far may serve reads up to it. Not logged: it holds no
    /// entries, and the clock's persisted high-water mark keeps it a promise across restarts.
    Tick(Timestamp),
}

/// Receives an entry's receipt (or why it was not logged), once, on the sequencer's thread:
/// it must be quick and must not block.
pub type OnReceipt = Box<dyn FnOnce(Result<Receipt, SequencerError>) + Send>;

enum Command {
    Submit(Entry, OnReceipt),
    /// Entries submitted together: one message, and one wake-up of the thread.
    SubmitMany(Vec<(Entry, OnReceipt)>),
    Subscribe(Epoch, Subscriber),
    /// Seal the next window and log it even if it is empty.
    RequestWindow,
    /// Consumers have applied every window up to this epoch.
    Applied(Epoch),
    /// Consumers have made every window up to this epoch durable in their own storage.
    Durable(Epoch),
    Shutdown,
}

/// What consumers tell a running sequencer. Cloneable; harmless after the sequencer stopped.
#[derive(Clone)]
pub struct Feedback(Sender<Command>);

impl Feedback {
    /// Requests a window: the next seal is logged even if it holds no entry. Entries deferred
    /// to "the next window" need one to exist.
    pub fn request_window(&self) {
        let _ = self.0.send(Command::RequestWindow);
    }

    /// Reports every window up to `epoch` applied, so the next one may be sealed early (see
    /// [`SealerConfig::seal_ahead`](crate::SealerConfig::seal_ahead)).
    pub fn applied(&self, epoch: Epoch) {
        let _ = self.0.send(Command::Applied(epoch));
    }

    /// Reports every window up to `epoch` durable in every consumer's own storage (a restart
    /// replays only later ones): the log may delete the segments below it, keeping the
    /// windows whose client ids it still deduplicates ([`SealerConfig::dedup_retention`]).
    ///
    /// [`SealerConfig::dedup_retention`]: crate::SealerConfig::dedup_retention
    pub fn durable(&self, epoch: Epoch) {
        let _ = self.0.send(Command::Durable(epoch));
    }
}

/// A running sequencer. Dropping it (or [`Sequencer::shutdown`]) seals what is open, answers
/// every submitter and stops the thread.
pub struct Sequencer {
    commands: Option<Sender<Command>>,
    /// What the log has taken, for status reports and metrics.
    logged: Arc<LogCounters>,
    /// Reads durable windows for subscribers catching up, off the sequencer's thread.
    reader: LogReader,
    thread: std::sync::Mutex<Option<JoinHandle<Result<(), SequencerError>>>>,
}

impl Command {
    /// The submissions a command carries, if it is one.
    fn into_submissions(self) -> Vec<(Entry, OnReceipt)> {
        match self {
            Command::Submit(entry, on_receipt) => vec![(entry, on_receipt)],
            Command::SubmitMany(entries) => entries,
            _ => Vec::new(),
        }
    }
}

impl Sequencer {
    /// Opens the log in `dir`, and starts sealing after the windows it holds, which it returns
    /// for recovery. `clock` stamps windows; it should be persisted so timestamps keep rising
    /// across restarts.
    pub fn start(
        dir: impl AsRef<std::path::Path>,
        clock: Arc<Clock>,
        config: SealerConfig,
    ) -> Result<(Sequencer, Option<(Epoch, Timestamp)>), SequencerError> {
        let dir_path = dir.as_ref().to_path_buf();
        let (log, history) = WindowLog::open_with(dir, config.log_segment_bytes)?;
        let reader = log.reader();
        let last = log.last();
        if last.is_none() && log.first() > Epoch(1) {
            // Windows were logged (and truncated) here: without the last one, neither the
            // next epoch nor a timestamp past the last is known.
            return Err(SequencerError::Corrupt {
                path: dir_path,
                offset: 0,
                what: format!(
                    "it starts at window {} but holds none: restore it from a backup",
                    log.first()
                ),
            });
        }
        if let Some((_, ts)) = last {
            // Window timestamps keep rising even if the clock's own high-water mark is gone.
            let _ = clock.observe(ts);
        }
        let origin = Instant::now();
        let sealer = Sealer::new(config, &history, origin.elapsed());
        drop(history);
        let (tx, rx) = mpsc::channel();
        let logged = Arc::new(LogCounters {
            epoch: AtomicU64::new(last.map_or(0, |(e, _)| e.0)),
            ts: AtomicU64::new(last.map_or(0, |(_, ts)| ts.as_u64())),
            first: AtomicU64::new(log.first().0),
            bytes: AtomicU64::new(log.bytes()),
            ..LogCounters::default()
        });
        let loop_logged = logged.clone();
        let thread = std::thread::Builder::new()
            .name("sealdb-sequencer".into())
            .spawn(move || {
                Loop {
                    sealer,
                    log,
                    clock,
                    origin,
                    subscribers: Vec::new(),
                    waiters: Vec::new(),
                    window_requested: false,
                    stopping: false,
                    logged: loop_logged,
                }
                .run(rx)
            })
            .map_err(|e| SequencerError::Io { path: "sequencer thread".into(), source: e })?;
        let thread = std::sync::Mutex::new(Some(thread));
        Ok((Sequencer { commands: Some(tx), logged, reader, thread }, last))
    }

    /// Submits `entry`; the receiver yields its receipt once its window is durable.
    pub fn submit(&self, entry: Entry) -> Receiver<Result<Receipt, SequencerError>> {
        let (tx, rx) = mpsc::channel();
        self.submit_then(
            entry,
            Box::new(move |receipt| {
                let _ = tx.send(receipt);
            }),
        );
        rx
    }

    /// Submits `entry`; `on_receipt` is called with its receipt once its window is durable,
    /// or with the reason it will never be. Saves a caller that waits for something else
    /// (the entry's outcome) a second wake-up.
    pub fn submit_then(&self, entry: Entry, on_receipt: OnReceipt) {
        self.send_submissions(Command::Submit(entry, on_receipt));
    }

    /// [`Sequencer::submit_then`] for each of `entries`, in order, handed to the sequencer's
    /// thread at once: a batch of submissions wakes it once, not once per entry.
    pub fn submit_many_then(&self, entries: Vec<(Entry, OnReceipt)>) {
        self.send_submissions(Command::SubmitMany(entries));
    }

    /// Hands a command carrying submissions to the thread; if the thread is gone (it failed,
    /// or it is shutting down), answers each of them with why.
    fn send_submissions(&self, command: Command) {
        let refused = match &self.commands {
            Some(commands) => match commands.send(command) {
                Ok(()) => return,
                Err(mpsc::SendError(command)) => command,
            },
            None => command,
        };
        let failure = self.failure();
        for (_, on_receipt) in refused.into_submissions() {
            on_receipt(Err(match &failure {
                Some(why) => SequencerError::Failed(why.clone()),
                None => SequencerError::ShuttingDown,
            }));
        }
    }

    /// Every window from `from` on (read back from the log first), then live windows and
    /// ticks, in order; each window once it is durable.
    pub fn subscribe(&self, from: Epoch) -> Receiver<Delivery> {
        self.subscribe_with(from, false)
    }

    /// [`Sequencer::subscribe`], but each live window is delivered as soon as it is sealed,
    /// before its fsync, followed by [`Delivery::Durable`] once it is durable. A consumer may
    /// work on the window meanwhile (execute it), but must not write or acknowledge anything
    /// of it before `Durable`: if the log fails, `Durable` never comes and the channel closes.
    pub fn subscribe_ahead(&self, from: Epoch) -> Receiver<Delivery> {
        self.subscribe_with(from, true)
    }

    /// [`Sequencer::subscribe`] for a consumer that may fall behind (one across the network),
    /// into a channel of its own (an async one, so that no thread waits for the deliveries):
    /// `send` hands it each delivery, on the sequencer's thread, and must not block. It returns
    /// false once the consumer has gone, or has fallen too far behind to keep: then it is
    /// dropped rather than hold memory or the sequencer up, and catches up from the log
    /// ([`Sequencer::log_reader`]) before it subscribes again. The windows before the live ones
    /// are read on the sequencer's thread: subscribe from near the end of the log.
    pub fn subscribe_to(&self, from: Epoch, send: impl Fn(Delivery) -> bool + Send + 'static) {
        self.add_subscriber(
            from,
            Subscriber { sink: Sink::Consumer(Box::new(send)), ahead: false },
        );
    }

    /// Reads durable windows from the log on the caller's thread.
    pub fn log_reader(&self) -> LogReader {
        self.reader.clone()
    }

    fn subscribe_with(&self, from: Epoch, ahead: bool) -> Receiver<Delivery> {
        let (sink, rx) = mpsc::channel();
        self.add_subscriber(from, Subscriber { sink: Sink::Unbounded(sink), ahead });
        rx
    }

    fn add_subscriber(&self, from: Epoch, subscriber: Subscriber) {
        if let Some(commands) = &self.commands {
            let _ = commands.send(Command::Subscribe(from, subscriber));
        }
    }

    /// The last window made durable: its epoch and timestamp (epoch 0 before the first).
    pub fn last_logged(&self) -> (Epoch, Timestamp) {
        let c = &*self.logged;
        (Epoch(c.epoch.load(Ordering::SeqCst)), Timestamp::from_u64(c.ts.load(Ordering::SeqCst)))
    }

    /// Why the sequencer stopped taking entries early (its log failed), if it has: a node
    /// should then exit rather than linger.
    pub fn failure(&self) -> Option<String> {
        self.logged.failure.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// What this sequencer has logged since it started.
    pub fn stats(&self) -> SequencerStats {
        let c = &*self.logged;
        SequencerStats {
            windows: c.windows.load(Ordering::Relaxed),
            entries: c.entries.load(Ordering::Relaxed),
            append_seconds: c.append_nanos.load(Ordering::Relaxed) as f64 / 1e9,
            window_sizes: std::array::from_fn(|i| c.window_sizes[i].load(Ordering::Relaxed)),
            log_first: Epoch(c.first.load(Ordering::Relaxed)),
            log_bytes: c.bytes.load(Ordering::Relaxed),
        }
    }

    /// A handle for consumers' feedback (see [`Feedback`]).
    pub fn feedback(&self) -> Option<Feedback> {
        self.commands.clone().map(Feedback)
    }

    /// Seals what is open, answers its submitters and stops; later submissions are refused
    /// ([`SequencerError::ShuttingDown`]) and subscriptions end. Returns the error that
    /// stopped the sequencer early, if any. Callers may still hold it (it may be shared):
    /// only the first call does anything.
    pub fn shutdown(&self) -> Result<(), SequencerError> {
        let thread = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        let Some(thread) = thread else { return Ok(()) };
        if let Some(commands) = &self.commands {
            let _ = commands.send(Command::Shutdown);
        }
        thread.join().unwrap_or(Err(SequencerError::ShuttingDown))
    }
}

impl Drop for Sequencer {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            tracing::error!(error = %e, "sequencer stopped with an error");
        }
    }
}

struct Loop {
    sealer: Sealer,
    log: WindowLog,
    clock: Arc<Clock>,
    origin: Instant,
    subscribers: Vec<Subscriber>,
    /// For each index of the open window, who waits for its receipt (duplicates included).
    waiters: Vec<Vec<(OnReceipt, bool)>>,
    /// Log the next window even if it is empty.
    window_requested: bool,
    stopping: bool,
    logged: Arc<LogCounters>,
}

/// Where a subscription's deliveries go.
struct Subscriber {
    sink: Sink,
    /// Gets windows before their fsync, then [`Delivery::Durable`].
    ahead: bool,
}

/// A subscriber's channel: unbounded for consumers in this process, which keep up or stop
/// it; the consumer's own for the others ([`Sequencer::subscribe_to`]).
enum Sink {
    Unbounded(Sender<Delivery>),
    Consumer(Box<dyn Fn(Delivery) -> bool + Send>),
}

impl Subscriber {
    /// Sends `delivery`. False if the subscriber has gone, or is too far behind to keep.
    fn send(&self, delivery: Delivery) -> bool {
        match &self.sink {
            Sink::Unbounded(sink) => sink.send(delivery).is_ok(),
            Sink::Consumer(send) => send(delivery),
        }
    }

    /// Sends a durable window: followed by `Durable` for a subscriber ahead. False if the
    /// subscriber has gone.
    fn send_durable(&self, window: &Arc<Window>) -> bool {
        self.send(Delivery::Window(window.clone()))
            && (!self.ahead || self.send(Delivery::Durable(window.epoch)))
    }
}

/// Counters the sequencer thread keeps for readers on other threads.
#[derive(Default)]
struct LogCounters {
    /// The last logged window's epoch and timestamp (raw).
    epoch: AtomicU64,
    ts: AtomicU64,
    /// Since start: windows and entries logged, and time spent appending (write + fsync).
    windows: AtomicU64,
    entries: AtomicU64,
    append_nanos: AtomicU64,
    /// Windows logged by size: per bucket of [`WINDOW_SIZE_BOUNDS`], then above them all.
    window_sizes: [AtomicU64; WINDOW_SIZE_BOUNDS.len() + 1],
    /// Why the sequencer stopped early (the log failed), once it has.
    failure: std::sync::Mutex<Option<String>>,
    /// The log's first window kept, and the bytes of its files.
    first: AtomicU64,
    bytes: AtomicU64,
}

/// Upper bounds of the window-size buckets in [`SequencerStats::window_sizes`]: entries per
/// logged window, in powers of two.
pub const WINDOW_SIZE_BOUNDS: [u64; 14] =
    [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192];

/// What a sequencer has logged since it started ([`Sequencer::stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SequencerStats {
    /// Windows made durable.
    pub windows: u64,
    /// Entries in them.
    pub entries: u64,
    /// Seconds spent appending them (write and fsync).
    pub append_seconds: f64,
    /// How many windows had how many entries: `window_sizes[i]` had at most
    /// `WINDOW_SIZE_BOUNDS[i]` and more than the bound before; the last counts the rest.
    pub window_sizes: [u64; WINDOW_SIZE_BOUNDS.len() + 1],
    /// The first window the log still holds (older ones were truncated).
    pub log_first: Epoch,
    /// Bytes of the log's files.
    pub log_bytes: u64,
}

impl Loop {
    fn run(mut self, commands: Receiver<Command>) -> Result<(), SequencerError> {
        // A panic stops the sequencer as a log failure does, answering every submitter (and
        // ending every subscription): otherwise they would wait forever.
        let result =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.serve(&commands)))
                .unwrap_or_else(|panic| Err(SequencerError::Panicked(panic_message(&*panic))));
        if let Err(e) = &result {
            tracing::error!(error = %e, "sequencer stopping: the window log failed");
            *self.logged.failure.lock().unwrap_or_else(|e| e.into_inner()) = Some(e.to_string());
            for (on_receipt, _) in self.waiters.drain(..).flatten() {
                on_receipt(Err(SequencerError::Failed(e.to_string())));
            }
            // Refuse whatever is still queued.
            for (_, on_receipt) in commands.try_iter().flat_map(Command::into_submissions) {
                on_receipt(Err(SequencerError::Failed(e.to_string())));
            }
        }
        result
    }

    fn serve(&mut self, commands: &Receiver<Command>) -> Result<(), SequencerError> {
        loop {
            let wait = self.sealer.time_to_seal(self.origin.elapsed());
            match commands.recv_timeout(wait) {
                Ok(command) => self.handle(command)?,
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => self.stopping = true,
            }
            // Take whatever else has arrived, up to a window's worth, before sealing. (A
            // shutdown among it stops the thread now, not after the next wait.)
            while !self.stopping && self.sealer.open_len() < self.sealer.config().max_window_entries
            {
                match commands.try_recv() {
                    Ok(command) => self.handle(command)?,
                    Err(_) => break,
                }
            }
            if self.stopping {
                if self.sealer.open_len() > 0 {
                    self.seal()?;
                }
                return Ok(());
            }
            if self.sealer.should_seal(self.origin.elapsed()) {
                self.seal()?;
            }
        }
    }

    fn handle(&mut self, command: Command) -> Result<(), SequencerError> {
        match command {
            Command::Submit(entry, on_receipt) => self.submit(entry, on_receipt),
            Command::SubmitMany(entries) => {
                let mut entries = entries.into_iter();
                while let Some((entry, on_receipt)) = entries.next() {
                    if let Err(e) = self.submit(entry, on_receipt) {
                        // The log failed: the rest of the batch is answered with it too.
                        for (_, on_receipt) in entries {
                            on_receipt(Err(SequencerError::Failed(e.to_string())));
                        }
                        return Err(e);
                    }
                }
                Ok(())
            }
            Command::RequestWindow => {
                self.window_requested = true;
                Ok(())
            }
            Command::Applied(epoch) => {
                self.sealer.applied(epoch, self.origin.elapsed());
                Ok(())
            }
            Command::Durable(epoch) => {
                // Windows after `epoch` are replayed on a restart; those whose ids are still
                // deduplicated seed the sealer then.
                let keep = self.sealer.oldest_remembered().unwrap_or(epoch.next());
                self.log.truncate_below(epoch.next().min(keep))?;
                let c = &*self.logged;
                c.first.store(self.log.first().0, Ordering::Relaxed);
                c.bytes.store(self.log.bytes(), Ordering::Relaxed);
                Ok(())
            }
            Command::Shutdown => {
                self.stopping = true;
                Ok(())
            }
            Command::Subscribe(from, subscriber) => {
                let windows = match self.log.read_from(from) {
                    Ok(windows) => windows,
                    // Dropped: its channel closes, and the consumer learns from the log
                    // (through `log_reader`) that it must start from a checkpoint.
                    Err(e @ SequencerError::Truncated { .. }) => {
                        tracing::warn!(error = %e, "a subscriber from before the log's start");
                        return Ok(());
                    }
                    Err(e) => return Err(e),
                };
                for window in windows {
                    if !subscriber.send_durable(&Arc::new(window)) {
                        return Ok(());
                    }
                }
                self.subscribers.push(subscriber);
                Ok(())
            }
        }
    }

    fn submit(&mut self, entry: Entry, on_receipt: OnReceipt) -> Result<(), SequencerError> {
        // A window is full at its byte cap, or at its entry cap (entries of one batch may
        // fill it: `serve` takes commands only while it is below the cap).
        if (!self.sealer.fits(&entry)
            || self.sealer.open_len() >= self.sealer.config().max_window_entries)
            && let Err(e) = self.seal()
        {
            on_receipt(Err(SequencerError::Failed(e.to_string())));
            return Err(e);
        }
        match self.sealer.submit(entry, self.origin.elapsed()) {
            Ok(Admission::Queued { index }) => {
                debug_assert_eq!(index as usize, self.waiters.len());
                self.waiters.push(vec![(on_receipt, false)]);
            }
            Ok(Admission::DuplicateOpen { index }) => {
                self.waiters[index as usize].push((on_receipt, true));
            }
            Ok(Admission::DuplicateSealed(txn, ts)) => {
                on_receipt(Ok(Receipt { txn, ts, duplicate: true }));
            }
            Err(bytes) => {
                let max = self.sealer.config().max_window_bytes;
                on_receipt(Err(SequencerError::EntryTooLarge { bytes, max }));
            }
        }
        Ok(())
    }

    fn seal(&mut self) -> Result<(), SequencerError> {
        let now = self.origin.elapsed();
        if self.sealer.open_len() == 0 && !std::mem::take(&mut self.window_requested) {
            let ts = self.clock.now().max(self.sealer.last_ts().next());
            self.sealer.tick(ts, now);
            self.subscribers.retain(|s| s.send(Delivery::Tick(ts)));
            return Ok(());
        }
        self.window_requested = false;
        let window = Arc::new(self.sealer.seal(self.clock.now(), now));
        // Subscribers ahead work on the window during its fsync.
        self.subscribers.retain(|s| !s.ahead || s.send(Delivery::Window(window.clone())));
        let started = Instant::now();
        self.log.append(&window)?;
        let c = &*self.logged;
        c.append_nanos.fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        c.windows.fetch_add(1, Ordering::Relaxed);
        c.entries.fetch_add(window.entries.len() as u64, Ordering::Relaxed);
        let size = window.entries.len() as u64;
        let bucket = WINDOW_SIZE_BOUNDS.iter().position(|b| size <= *b);
        c.window_sizes[bucket.unwrap_or(WINDOW_SIZE_BOUNDS.len())].fetch_add(1, Ordering::Relaxed);
        c.ts.store(window.ts.as_u64(), Ordering::SeqCst);
        c.epoch.store(window.epoch.0, Ordering::SeqCst);
        c.bytes.store(self.log.bytes(), Ordering::Relaxed);
        self.subscribers.retain(|s| match s.ahead {
            true => s.send(Delivery::Durable(window.epoch)),
            false => s.send(Delivery::Window(window.clone())),
        });
        for (i, waiters) in self.waiters.drain(..).enumerate() {
            for (on_receipt, duplicate) in waiters {
                on_receipt(Ok(Receipt { txn: window.txn_id(i), ts: window.ts, duplicate }));
            }
        }
        Ok(())
    }
}
