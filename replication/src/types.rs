//! What the sequencer group's raft log carries.

use std::io::Cursor;
use std::sync::Arc;
use std::time::Duration;

use clock::{Epoch, Timestamp};
use sequencer::{ClientId, Entry, ShardId};
use serde::{Deserialize, Serialize};

/// A sequencer node's id in the group.
pub type NodeId = u64;

openraft::declare_raft_types!(
    /// The sequencer group's raft types: proposals of sealed windows in, their epochs out.
    pub TypeConfig:
        D = Proposal,
        R = Sealed,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = crate::runtime::Runtime,
);

/// A raft node of the sequencer group.
pub type Raft = openraft::Raft<TypeConfig>;

/// The group's raft settings: heartbeats every `heartbeat`, elections after `election_timeout`
/// (to 1.2 times that) without one.
pub fn raft_config(
    heartbeat: Duration,
    election_timeout: Duration,
) -> Result<Arc<openraft::Config>, Box<openraft::ConfigError>> {
    let config = openraft::Config {
        cluster_name: "sealdb-sequencers".into(),
        heartbeat_interval: heartbeat.as_millis() as u64,
        // A narrow range: openraft's leader lease is `election_timeout_max`, so a follower
        // refuses votes until that long after the leader's last heartbeat. The first
        // candidate, standing after `min`..`max`, is always refused; the election is won in
        // the second round. Failover therefore takes about two timeouts, and a wide range (it
        // was 1x-2x) only makes both rounds longer.
        election_timeout_min: election_timeout.as_millis() as u64,
        election_timeout_max: election_timeout.as_millis() as u64 * 6 / 5,
        ..openraft::Config::default()
    };
    Ok(Arc::new(config.validate().map_err(Box::new)?))
}

/// A window the leader sealed, proposed to the group: its entries in log order and the
/// leader's timestamp for it. The epoch is assigned when it is applied. A tick proposes no
/// window: it only promises that every later window is stamped above `ts` (safe time that the
/// group agreed on, so a deposed leader can never grant it). A truncation proposes no window
/// either: every member drops the committed windows below its epoch (every shard replica has
/// them in a checkpoint).
///
/// Each proposal carries its proposer's base: the last window of the backup its group was
/// restored from (0 for a group that started empty). A member whose own base differs was
/// restored from other windows (or not at all) and refuses it rather than number windows
/// differently from the others.
///
/// The raft log and snapshots store proposals with postcard: the `truncate_below` and `base`
/// fields changed that format, and a group's data written before them does not open.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    /// The proposer's base (above).
    pub base: u64,
    /// The leader's HLC timestamp for the window (raised on apply if not above the last).
    pub ts: u64,
    /// The entries.
    pub entries: Vec<ProposedEntry>,
    /// An idle tick, not a window.
    pub tick: bool,
    /// A truncation of the committed windows below this epoch, not a window.
    pub truncate_below: Option<u64>,
}

/// One entry of a [`Proposal`], in a form that serializes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProposedEntry {
    /// The client's deduplication id.
    pub client_id: u128,
    /// The participant shards.
    pub participants: Vec<u32>,
    /// The opaque payload.
    pub payload: Vec<u8>,
}

impl From<&Entry> for ProposedEntry {
    fn from(e: &Entry) -> ProposedEntry {
        ProposedEntry {
            client_id: e.client_id.0,
            participants: e.participants.iter().map(|s| s.0).collect(),
            payload: e.payload.to_vec(),
        }
    }
}

impl From<&ProposedEntry> for Entry {
    fn from(e: &ProposedEntry) -> Entry {
        Entry::new(
            ClientId(e.client_id),
            e.participants.iter().copied().map(ShardId).collect(),
            Arc::from(e.payload.as_slice()),
        )
    }
}

impl Proposal {
    /// A proposal of `entries` at `ts`, by a member of base `base`.
    pub fn new(base: u64, ts: Timestamp, entries: &[Entry]) -> Proposal {
        let entries = entries.iter().map(ProposedEntry::from).collect();
        Proposal { base, ts: ts.as_u64(), entries, tick: false, truncate_below: None }
    }

    /// An idle tick at `ts`.
    pub fn tick(base: u64, ts: Timestamp) -> Proposal {
        Proposal { base, ts: ts.as_u64(), entries: Vec::new(), tick: true, truncate_below: None }
    }

    /// A truncation of the committed windows below `epoch`.
    pub fn truncate_below(base: u64, epoch: Epoch) -> Proposal {
        Proposal { base, ts: 0, entries: Vec::new(), tick: false, truncate_below: Some(epoch.0) }
    }
}

/// What applying a [`Proposal`] did: the window it became, and each proposed entry's id
/// (for a client id already logged, the id it was logged with the first time).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sealed {
    /// The window's epoch (`None` when every entry was a duplicate and no window was made).
    pub epoch: Option<u64>,
    /// The window's timestamp.
    pub ts: u64,
    /// Per proposed entry, in order: where it is logged.
    pub receipts: Vec<Receipt>,
}

/// Where one proposed entry is logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    /// Its window.
    pub epoch: u64,
    /// Its index in the window.
    pub index: u32,
    /// Its window's timestamp.
    pub ts: u64,
    /// True if its client id was logged before (this is that first entry's place).
    pub duplicate: bool,
}
