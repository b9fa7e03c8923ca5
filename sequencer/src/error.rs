//! [`SequencerError`]: what the sequencer can report.

use std::path::PathBuf;

use clock::Epoch;
use clock::Timestamp;

/// Sequencer failures. `Io` and `Corrupt` are infrastructure failures: the sequencer stops
/// rather than acknowledge anything it could not make durable.
#[derive(Debug, thiserror::Error)]
pub enum SequencerError {
    /// The log could not be read or written.
    #[error("window log {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Another process (or another log in this one) holds the directory's lock: two writers
    /// would lose each other's acknowledged windows.
    #[error("{path} is locked: another sequencer or node is using this directory")]
    Locked {
        /// The lock file.
        path: PathBuf,
    },
    /// The log holds bytes that are not a valid window before its end.
    #[error("window log {path} is corrupt at byte {offset}: {what}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Where the bad record starts.
        offset: u64,
        /// What is wrong.
        what: String,
    },
    /// A window does not follow the last one in the log (a bug in the caller).
    #[error("window {epoch} at {ts} does not follow window {last_epoch} at {last_ts}")]
    OutOfOrder {
        /// The window.
        epoch: Epoch,
        /// Its timestamp.
        ts: Timestamp,
        /// The last window in the log.
        last_epoch: Epoch,
        /// Its timestamp.
        last_ts: Timestamp,
    },
    /// The windows asked for are no longer in the log: it was truncated below `first`
    /// (every consumer had made them durable). A consumer that far behind starts from a
    /// checkpoint instead.
    #[error("window {from} is truncated from the log (the first kept is {first})")]
    Truncated {
        /// The first window asked for.
        from: Epoch,
        /// The first window the log holds.
        first: Epoch,
    },
    /// The entry is larger than a window may hold.
    #[error("entry of {bytes} bytes exceeds the window size cap of {max} bytes")]
    EntryTooLarge {
        /// The entry's size.
        bytes: usize,
        /// The cap.
        max: usize,
    },
    /// The sequencer has stopped.
    #[error("the sequencer is shutting down")]
    ShuttingDown,
    /// This node of a sequencer group is not its leader: nothing was logged. Submit to the
    /// leader (its address when known) under the same client id.
    #[error("not the leader of the sequencer group{}", .leader.as_ref().map(|l| format!("; the leader is at {l}")).unwrap_or_default())]
    NotLeader {
        /// The leader's address, if this node knows it.
        leader: Option<String>,
    },
    /// The sequencer group could not log the entry (no quorum, or the group stopped): it may
    /// or may not be logged; submit it again under the same client id.
    #[error("the sequencer group could not log it: {0}")]
    Unavailable(String),
    /// The sequencer's thread panicked (its clock could not persist its high-water mark, or a
    /// bug): it stopped as after a log failure.
    #[error("the sequencer thread panicked: {0}")]
    Panicked(String),
    /// The sequencer stopped after a failure (this one): the entry was not logged, and
    /// nothing more will be.
    #[error("the sequencer failed: {0}")]
    Failed(String),
}

/// What a caught panic said (its `&str` or `String` payload).
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}
