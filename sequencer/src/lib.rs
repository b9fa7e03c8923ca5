//! The sequencer: orders read-write transactions into sealed, durable windows (DESIGN.md
//! sections 2 and 6).
//!
//! Clients submit [`Entry`]s: an opaque payload, the shards it touches, and a client id. The
//! sequencer collects them into the open window and seals it when `window_interval` has passed
//! since its first entry or it reaches `max_window_entries` / `max_window_bytes`, or earlier,
//! as soon as consumers report all but `seal_ahead` sealed windows applied (group commit that
//! adapts to load: windows grow while shards are busy, and an idle system pays one fsync, not
//! an interval). Sealing
//! assigns the next [`Epoch`] and a window timestamp from the HLC, strictly above the last
//! window's, and appends the window to the [`WindowLog`] with one fsync. Only then is the
//! window delivered to shards and are the submitters answered with a [`Receipt`].
//!
//! ```text
//!   submit ─┐                          ┌─> shard 0: its slice of window e
//!   submit ─┼─> open window ─seal─> log (fsync) ─┼─> shard 1: ...
//!   submit ─┘   (epoch e, ts_e)        └─> receipts: (e, index), ts_e
//! ```
//!
//! Guarantees:
//!
//! - Nothing is acknowledged before it is durable, nor delivered as durable; the log is the
//!   source of truth and shards recover by replaying it ([`Sequencer::subscribe`] from their
//!   watermark). A consumer in the same process may take windows as they are sealed
//!   ([`Sequencer::subscribe_ahead`]) to execute them during the fsync, and writes nothing of
//!   a window before its [`Delivery::Durable`].
//! - Epochs are consecutive; window timestamps strictly increase, across restarts too (the
//!   log's last timestamp is observed by the clock on start).
//! - A client id resubmitted while its entry is open or in one of the last `dedup_windows`
//!   windows gets the original's receipt, marked duplicate: a retry never commits twice
//!   (`dedup_windows` 0 turns this off, for a submitter that never retries).
//! - When idle, a [`Delivery::Tick`] every `window_interval` moves shards' safe time. A
//!   [`Feedback`] handle asks for a logged (possibly empty) window instead, for entries that
//!   were deferred to the next window, and reports applied windows.
//!
//! The sealing decisions are a plain state machine ([`Sealer`]); [`Sequencer`] is the thread
//! that runs it against the clock and the log. Not here: what entries mean (`txn`), and
//! replication of the log (a later step, with `openraft`).

mod error;
mod ids;
mod log;
mod runner;
mod sealer;
mod window;

pub use crate::error::{SequencerError, panic_message};
pub use crate::ids::{ClientId, ShardId, TxnId};
pub use crate::log::{LogReader, WindowLog, lock_dir};
pub use crate::runner::{
    Delivery, Feedback, OnReceipt, Receipt, Sequencer, SequencerStats, WINDOW_SIZE_BOUNDS,
};
pub use crate::sealer::{Admission, Sealer, SealerConfig};
pub use crate::window::{Entry, Window};
pub use clock::Epoch;
