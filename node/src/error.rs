//! [`NodeError`]: why a node could not start, or stopped. Each variant says where to look;
//! none is a transaction's outcome (those travel as [`txn::Outcome`]s and typed refusals).

/// Why a node could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The configuration is invalid: fix it and start again.
    #[error("configuration: {0}")]
    Config(String),
    /// A file, directory or socket could not be used.
    #[error("{what}: {source}")]
    Io {
        /// What was being done, with the path or address.
        what: String,
        /// Why.
        source: std::io::Error,
    },
    /// The shard's storage failed.
    #[error("storage: {0}")]
    Storage(#[from] storage::StorageError),
    /// The shard stopped applying windows (I/O, a peer that refused what it must answer, a
    /// diverged log, a panic): it serves nothing more, and the process exits.
    #[error("the shard stopped: {0}")]
    Shard(#[from] txn::StepError),
    /// The sequencer's log failed.
    #[error("the log: {0}")]
    Log(#[from] sequencer::SequencerError),
    /// The clock's high-water file failed.
    #[error("the clock: {0}")]
    Clock(#[from] clock::ClockError),
    /// An address or TLS material cannot be used.
    #[error(transparent)]
    Setup(#[from] client::SetupError),
    /// Certificates could not be made or written.
    #[error("certificates: {0}")]
    Certificates(String),
    /// A process of a local cluster could not be started, stopped or waited for.
    #[error("process {name}: {why}")]
    Process {
        /// Which node.
        name: String,
        /// Why.
        why: String,
    },
    /// The node stopped on its own (a failure it cannot go on from), with why.
    #[error("{0}")]
    Stopped(String),
}

impl NodeError {
    /// An I/O failure while doing `what`.
    pub fn io(what: impl Into<String>, source: std::io::Error) -> NodeError {
        NodeError::Io { what: what.into(), source }
    }

    /// An I/O failure on `path`.
    pub fn at(path: &std::path::Path, source: std::io::Error) -> NodeError {
        NodeError::Io { what: path.display().to_string(), source }
    }
}
