//! A node's configuration file (TOML), as `sealdb start --config FILE` reads it, validated
//! before anything starts:
//!
//! ```toml
//! role = "shard"                    # or "sequencer"
//! listen = "127.0.0.1:7101"         # where this node serves
//! data_dir = "/var/lib/sealdb/s0"   # its log or its RocksDB, and its clock's high-water mark
//! shard = 0                         # which shard (shard role only)
//! replica = 0                       # which of the shard's replicas (optional, from 0)
//! max_offset_ms = 5                 # bound on clock offsets; commit-wait lasts about this long
//! metrics_listen = "127.0.0.1:9101" # optional: Prometheus metrics at GET /metrics
//! flush_interval_ms = 30000         # optional (shard role): how often it checkpoints and tells
//!                                   # the sequencer, which truncates the log below every
//!                                   # replica's checkpoint
//! retention_ms = 60000              # optional (shard role): how far back reads at a timestamp
//!                                   # may go; older versions are collected
//! replay_allowance_ms = 3600000     # optional (shard role): versions kept this much longer, so
//!                                   # that a replica replaying windows this far behind its peers
//!                                   # can read theirs; one further behind catches up from a
//!                                   # fellow replica's checkpoint
//! row_cache_mib = 128               # optional (shard role): each key's newest version in memory
//!                                   # for recently read keys (0: none)
//! block_cache_mib = 256             # optional (shard role): RocksDB's cache of table blocks
//! table_file_mib = 64               # optional (shard role): RocksDB's table file size (1-1024)
//! checkpoint_transfer_mib_per_s = 0 # optional (shard role): at most this many MiB/s sent to
//!                                   # each fellow catching up from this replica's checkpoint,
//!                                   # so that a transfer leaves the disk and network to the
//!                                   # shard's own work (0: as fast as they go)
//! write_behind = 2                  # optional (shard role): windows applied and not yet in
//!                                   # RocksDB, written by a thread of their own (0-64; 0: none)
//! held_run_mib = 64                 # optional (shard role): MiB of writes to RocksDB's main
//!                                   # column family held as sorted runs and ingested as one
//!                                   # table file, not inserted into its memtable (0-1024,
//!                                   # default 64; 0: inserted; with write_behind = 0 nothing
//!                                   # is held). A process killed replays what was held from
//!                                   # the log before its storage is current again
//! apart_hex = ["0000000104"]        # optional (shard role): key prefixes, in hex, whose rows
//!                                   # RocksDB keeps in a column family of their own (tables
//!                                   # that grow by appends); a shard and its replicas must
//!                                   # always start with the same list (at most 4096, none
//!                                   # empty; another is refused at open)
//! apart_hint_bytes = 16             # optional (shard role): inserts into that column family
//!                                   # start from the last insert under the same first this
//!                                   # many bytes of the engine key (0-256; 0, the default: off)
//! absent_replica_ms = 600000        # optional (sequencer role): a replica silent this long no
//!                                   # longer holds the log while a fellow of its shard reports;
//!                                   # it catches up from the fellow's checkpoint
//!
//! [cluster]                         # the same on every node
//! sequencer = "127.0.0.1:7100"      # or a sequencer group (raft): its members, in id order,
//! # sequencers = ["127.0.0.1:7100", "127.0.0.1:7200", "127.0.0.1:7300"]
//! shards = ["127.0.0.1:7101", "127.0.0.1:7102", "127.0.0.1:7103"]
//! # or replicas of each shard, each applying the log on its own (any answers):
//! # shards = [["127.0.0.1:7101", "127.0.0.1:7201"], ["127.0.0.1:7102", "127.0.0.1:7202"]]
//! split_keys = ["g", "p"]           # optional: shard i owns [split i-1, split i); the default
//!                                   # splits the first key byte evenly
//! # split_keys_hex = ["00000002"]   # or binary split keys, in hex
//!
//! [group]                           # a sequencer's place in a group (with `sequencers`)
//! id = 1                            # its position in `sequencers`, from 1
//! heartbeat_ms = 75                 # optional: the leader's heartbeat
//! election_timeout_ms = 300         # optional: a follower's wait before it stands (up to 1.2x)
//!
//! [window]                          # optional (sequencer role)
//! interval_ms = 5                   # the most a window waits: a single sequencer seals sooner
//!                                   # once every shard reports the last window applied
//! max_entries = 10000
//! max_bytes = 16777216
//! log_segment_bytes = 67108864      # the log's segment files (the unit of truncation)
//! dedup_retention_ms = 60000        # how long client ids are deduplicated (the log keeps at
//!                                   # least this long of windows, to rebuild them on restart)
//!
//! [tls]                             # optional: TLS with client certificates on every hop
//! ca = "certs/ca.pem"               # the cluster's CA
//! cert = "certs/node.pem"           # this node's certificate (valid for "node.sealdb")
//! key = "certs/node.key"
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ::sequencer::{SealerConfig, ShardId};
use serde::Deserialize;

use storage::Limits;

use super::{Layout, NodeError};
use client::{MAX_WINDOW_BYTES, Tls};
use txn::ShardMap;

/// What a node does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Orders entries into durable windows; serves the admin service.
    Sequencer,
    /// Applies one shard's windows and serves its reads.
    Shard,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    role: Role,
    listen: String,
    data_dir: PathBuf,
    shard: Option<u32>,
    replica: Option<usize>,
    #[serde(default = "default_max_offset_ms")]
    max_offset_ms: u64,
    metrics_listen: Option<String>,
    flush_interval_ms: Option<u64>,
    retention_ms: Option<u64>,
    replay_allowance_ms: Option<u64>,
    row_cache_mib: Option<u64>,
    block_cache_mib: Option<u64>,
    table_file_mib: Option<u64>,
    write_behind: Option<usize>,
    held_run_mib: Option<usize>,
    checkpoint_transfer_mib_per_s: Option<u64>,
    apart_hex: Option<Vec<String>>,
    apart_hint_bytes: Option<usize>,
    absent_replica_ms: Option<u64>,
    cluster: ClusterFile,
    #[serde(default)]
    window: WindowFile,
    group: Option<GroupFile>,
    tls: Option<TlsFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupFile {
    id: u64,
    heartbeat_ms: Option<u64>,
    election_timeout_ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsFile {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

fn default_max_offset_ms() -> u64 {
    5
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClusterFile {
    sequencer: Option<String>,
    sequencers: Option<Vec<String>>,
    shards: Vec<ShardFile>,
    split_keys: Option<Vec<String>>,
    split_keys_hex: Option<Vec<String>>,
}

/// A shard in `cluster.shards`: its address, or its replicas' addresses.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum ShardFile {
    One(String),
    Replicas(Vec<String>),
}

impl ShardFile {
    fn addrs(&self) -> Vec<String> {
        match self {
            ShardFile::One(a) => vec![a.clone()],
            ShardFile::Replicas(r) => r.clone(),
        }
    }
}

/// The bytes hex digits `s` stand for (two per byte), if they are that.
pub(crate) fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct WindowFile {
    interval_ms: Option<u64>,
    max_entries: Option<usize>,
    max_bytes: Option<usize>,
    log_segment_bytes: Option<u64>,
    dedup_retention_ms: Option<u64>,
}

/// A validated node configuration.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// What the node does.
    pub role: Role,
    /// Where it serves.
    pub listen: SocketAddr,
    /// Its data directory.
    pub data_dir: PathBuf,
    /// Its shard (shard role).
    pub shard: Option<ShardId>,
    /// Which of its shard's replicas it is (shard role; 0 for a shard of one).
    pub replica: usize,
    /// The bound on clock offsets.
    pub max_offset: Duration,
    /// Where to serve Prometheus metrics, if anywhere.
    pub metrics_listen: Option<SocketAddr>,
    /// The sequencer's address, or a sequencer group's members' (comma-separated, in id
    /// order).
    pub sequencer: String,
    /// This sequencer's place in its group (sequencer role, with `cluster.sequencers`).
    pub group: Option<crate::GroupSpec>,
    /// The shards and their keys.
    pub layout: Layout,
    /// When windows are sealed (sequencer role).
    pub sealer: SealerConfig,
    /// How often a shard flushes its storage and tells the sequencer (shard role).
    pub flush_interval: Duration,
    /// How far back reads at a timestamp may go (shard role).
    pub retention: Duration,
    /// How much longer than `retention` versions are kept for replicas replaying behind
    /// their peers (shard role).
    pub replay_allowance: Duration,
    /// Bytes of the row cache (shard role; 0: none).
    pub row_cache_bytes: usize,
    /// Bytes of RocksDB's block cache (shard role).
    pub block_cache_bytes: usize,
    /// Bytes of each RocksDB table file that compactions write (shard role).
    pub table_file_bytes: u64,
    /// Windows applied and not yet written into RocksDB (shard role; 0: written on the apply
    /// thread).
    pub write_behind: usize,
    /// Bytes of writes held as sorted runs and ingested as table files (shard role; 0: none).
    pub held_run_bytes: usize,
    /// Bytes a second sent to each fellow catching up from this replica's checkpoint (shard
    /// role; 0: unlimited).
    pub checkpoint_transfer_bytes_per_s: u64,
    /// Key prefixes whose rows RocksDB keeps in a column family of their own (shard role;
    /// [`storage::RocksOptions::apart`]).
    pub apart: Vec<Vec<u8>>,
    /// Inserts into that column family start from the last under the same first this many
    /// engine-key bytes (shard role; [`storage::RocksOptions::apart_hint_bytes`]; 0: off).
    pub apart_hint_bytes: usize,
    /// The node's certificate and key and the cluster's CA (`[tls]`); `None` runs without
    /// TLS.
    pub tls: Option<Tls>,
}

impl NodeConfig {
    /// Parses and validates a configuration file's text. The error says what is wrong, in
    /// terms of the file.
    pub fn parse(text: &str) -> Result<NodeConfig, NodeError> {
        NodeConfig::check(text).map_err(NodeError::Config)
    }

    /// [`NodeConfig::parse`], saying what is wrong in the file's terms.
    fn check(text: &str) -> Result<NodeConfig, String> {
        let file: File = toml::from_str(text).map_err(|e| e.to_string())?;
        let listen = resolve("listen", &file.listen)?;
        let metrics_listen = match &file.metrics_listen {
            None => None,
            Some(m) => Some(resolve("metrics_listen", m)?),
        };
        if file.max_offset_ms > MAX_OFFSET_MS {
            return Err(format!(
                "max_offset_ms = {}: at most {MAX_OFFSET_MS} (commit-wait lasts about this long)",
                file.max_offset_ms
            ));
        }
        let cluster = &file.cluster;
        if cluster.shards.is_empty() {
            return Err("cluster.shards: a cluster needs at least one shard".into());
        }
        let sequencers: Vec<String> = match (&cluster.sequencer, &cluster.sequencers) {
            (Some(one), None) => vec![one.clone()],
            (None, Some(group)) if !group.is_empty() => group.clone(),
            (None, Some(_)) => return Err("cluster.sequencers: a group needs members".into()),
            _ => return Err("cluster: give sequencer (one node) or sequencers (a group)".into()),
        };
        let shards: Vec<Vec<String>> = cluster.shards.iter().map(ShardFile::addrs).collect();
        let named = sequencers
            .iter()
            .enumerate()
            .map(|(i, a)| (format!("cluster.sequencers[{i}]"), a))
            .chain(shards.iter().enumerate().flat_map(|(i, replicas)| {
                replicas.iter().enumerate().map(move |(r, a)| {
                    let what = match replicas.len() {
                        1 => format!("cluster.shards[{i}]"),
                        _ => format!("cluster.shards[{i}][{r}]"),
                    };
                    (what, a)
                })
            }));
        let mut seen = std::collections::BTreeSet::new();
        for (what, addr) in named {
            if addr.parse::<SocketAddr>().is_err() && !addr.contains(':') || addr.contains(',') {
                return Err(format!("{what} = {addr:?}: expected host:port"));
            }
            if !seen.insert(addr.as_str()) {
                return Err(format!("{what} = {addr:?}: listed twice (each node has its own)"));
            }
        }
        if let Some(i) = shards.iter().position(Vec::is_empty) {
            return Err(format!("cluster.shards[{i}]: a shard needs at least one replica"));
        }
        let group = match (&file.group, file.role, cluster.sequencers.is_some()) {
            (None, Role::Sequencer, true) => {
                return Err(
                    "group: a sequencer of a group must say which it is ([group] id)".into()
                );
            }
            (Some(_), Role::Shard, _) | (Some(_), _, false) => {
                return Err(
                    "group: only a sequencer of a group (cluster.sequencers) has one".into()
                );
            }
            (Some(g), Role::Sequencer, true) => {
                if !(1..=sequencers.len() as u64).contains(&g.id) {
                    return Err(format!(
                        "group.id = {}: from 1 to {} (a position in cluster.sequencers)",
                        g.id,
                        sequencers.len()
                    ));
                }
                let heartbeat = Duration::from_millis(g.heartbeat_ms.unwrap_or(75));
                let election = Duration::from_millis(g.election_timeout_ms.unwrap_or(300));
                if heartbeat.is_zero() || election < 3 * heartbeat {
                    return Err("group: election_timeout_ms must be at least 3 heartbeats".into());
                }
                let members = (1..).zip(sequencers.iter().cloned()).collect();
                Some(crate::GroupSpec { id: g.id, members, heartbeat, election_timeout: election })
            }
            (None, _, _) => None,
        };
        let n = cluster.shards.len() as u32;
        let splits: Option<Vec<Vec<u8>>> = match (&cluster.split_keys, &cluster.split_keys_hex) {
            (Some(_), Some(_)) => {
                return Err("cluster: split_keys and split_keys_hex: give one of them".into());
            }
            (Some(keys), None) => Some(keys.iter().map(|s| s.as_bytes().to_vec()).collect()),
            (None, Some(keys)) => Some(
                keys.iter()
                    .map(|k| {
                        unhex(k).ok_or_else(|| format!("cluster.split_keys_hex: {k:?} is not hex"))
                    })
                    .collect::<Result<_, _>>()?,
            ),
            (None, None) => None,
        };
        let map = match splits {
            None => ShardMap::uniform(n),
            Some(splits) => {
                if splits.len() + 1 != cluster.shards.len() {
                    return Err(format!(
                        "cluster.split_keys: {} split keys for {} shards (need one fewer \
                         than shards)",
                        splits.len(),
                        n
                    ));
                }
                ShardMap::new(splits).map_err(|e| {
                    format!("cluster.split_keys: shard ranges overlap or are empty: {e}")
                })?
            }
        };
        if n > 256 && cluster.split_keys.is_none() && cluster.split_keys_hex.is_none() {
            return Err("cluster.split_keys: more than 256 shards need explicit split keys".into());
        }
        let shard = match (file.role, file.shard) {
            (Role::Shard, None) => return Err("shard: a shard node must say which shard".into()),
            (Role::Shard, Some(s)) if s >= n => {
                return Err(format!("shard = {s}: the cluster has shards 0 to {}", n - 1));
            }
            (Role::Sequencer, Some(_)) => {
                return Err("shard: only shard nodes have one (role = \"sequencer\")".into());
            }
            (_, s) => s.map(ShardId),
        };
        let replica = match (shard, file.replica) {
            (_, None) => 0,
            (None, Some(_)) => return Err("replica: only shard nodes have one".into()),
            (Some(s), Some(r)) => {
                let n = shards[s.0 as usize].len();
                if r >= n {
                    return Err(format!(
                        "replica = {r}: shard {} has replicas 0 to {}",
                        s.0,
                        n - 1
                    ));
                }
                r
            }
        };
        let defaults = SealerConfig::default();
        let window = &file.window;
        let sealer = SealerConfig {
            window_interval: window
                .interval_ms
                .map_or(defaults.window_interval, Duration::from_millis),
            max_window_entries: window.max_entries.unwrap_or(defaults.max_window_entries),
            max_window_bytes: window.max_bytes.unwrap_or(defaults.max_window_bytes),
            log_segment_bytes: window.log_segment_bytes.unwrap_or(defaults.log_segment_bytes),
            dedup_retention: window
                .dedup_retention_ms
                .map_or(defaults.dedup_retention, Duration::from_millis),
            absent_replica: file
                .absent_replica_ms
                .map_or(defaults.absent_replica, Duration::from_millis),
            // Shards report what they applied (`Applied`), so a single sequencer seals ahead
            // as an embedded database does; without reports, on the interval.
            ..defaults
        };
        let interval_ms = sealer.window_interval.as_millis();
        if !(1..=MAX_INTERVAL_MS).contains(&interval_ms) {
            return Err(format!("window.interval_ms = {interval_ms}: from 1 to {MAX_INTERVAL_MS}"));
        }
        if !(1..=MAX_WINDOW_ENTRIES).contains(&sealer.max_window_entries) {
            return Err(format!(
                "window.max_entries = {}: from 1 to {MAX_WINDOW_ENTRIES}",
                sealer.max_window_entries
            ));
        }
        // A window must hold the largest transaction (10 MiB of writes, and a margin for its
        // reads and ranges), and a shard must accept it.
        let min_bytes = Limits::default().max_batch_bytes + (1 << 20);
        if !(min_bytes..=MAX_WINDOW_BYTES).contains(&sealer.max_window_bytes) {
            return Err(format!(
                "window.max_bytes = {}: from {min_bytes} to {MAX_WINDOW_BYTES}",
                sealer.max_window_bytes
            ));
        }
        if !(4096..=1 << 30).contains(&sealer.log_segment_bytes) {
            return Err(format!(
                "window.log_segment_bytes = {}: from 4096 to {}",
                sealer.log_segment_bytes,
                1u64 << 30
            ));
        }
        let dedup_ms = sealer.dedup_retention.as_millis();
        if !(100..=24 * 3_600_000).contains(&dedup_ms) {
            return Err(format!("window.dedup_retention_ms = {dedup_ms}: from 100 to 86400000"));
        }
        let absent_ms = sealer.absent_replica.as_millis();
        if !(100..=u128::from(WEEK_MS)).contains(&absent_ms) {
            return Err(format!("absent_replica_ms = {absent_ms}: from 100 to 604800000 (a week)"));
        }
        let flush_interval_ms = file.flush_interval_ms.unwrap_or(DEFAULT_FLUSH_INTERVAL_MS);
        if !(10..=3_600_000).contains(&flush_interval_ms) {
            return Err(format!("flush_interval_ms = {flush_interval_ms}: from 10 to 3600000"));
        }
        let retention_ms = file.retention_ms.unwrap_or(DEFAULT_RETENTION_MS);
        if !(1_000..=WEEK_MS).contains(&retention_ms) {
            return Err(format!("retention_ms = {retention_ms}: from 1000 to {WEEK_MS} (a week)"));
        }
        let allowance_ms = file.replay_allowance_ms.unwrap_or(DEFAULT_REPLAY_ALLOWANCE_MS);
        if allowance_ms > WEEK_MS {
            return Err(format!(
                "replay_allowance_ms = {allowance_ms}: at most {WEEK_MS} (a week)"
            ));
        }
        let row_cache_mib = file.row_cache_mib.unwrap_or(DEFAULT_ROW_CACHE_MIB);
        if row_cache_mib > MAX_CACHE_MIB {
            return Err(format!("row_cache_mib = {row_cache_mib}: at most {MAX_CACHE_MIB}"));
        }
        let block_cache_mib = file.block_cache_mib.unwrap_or(DEFAULT_BLOCK_CACHE_MIB);
        if !(1..=MAX_CACHE_MIB).contains(&block_cache_mib) {
            return Err(format!("block_cache_mib = {block_cache_mib}: from 1 to {MAX_CACHE_MIB}"));
        }
        let table_file_mib = file.table_file_mib.unwrap_or(DEFAULT_TABLE_FILE_MIB);
        if !(1..=MAX_TABLE_FILE_MIB).contains(&table_file_mib) {
            return Err(format!(
                "table_file_mib = {table_file_mib}: from 1 to {MAX_TABLE_FILE_MIB}"
            ));
        }
        let write_behind = file.write_behind.unwrap_or(storage::DEFAULT_WRITE_BEHIND);
        if write_behind > MAX_WRITE_BEHIND {
            return Err(format!("write_behind = {write_behind}: at most {MAX_WRITE_BEHIND}"));
        }
        let held_run_mib = file.held_run_mib.unwrap_or(DEFAULT_HELD_RUN_MIB);
        if held_run_mib > MAX_HELD_RUN_MIB {
            return Err(format!("held_run_mib = {held_run_mib}: at most {MAX_HELD_RUN_MIB}"));
        }
        let transfer_mib = file.checkpoint_transfer_mib_per_s.unwrap_or(0);
        if transfer_mib > MAX_TRANSFER_MIB_PER_S {
            return Err(format!(
                "checkpoint_transfer_mib_per_s = {transfer_mib}: at most {MAX_TRANSFER_MIB_PER_S}"
            ));
        }
        let apart_hex = file.apart_hex.as_deref().unwrap_or_default();
        if apart_hex.len() > MAX_APART {
            return Err(format!("apart_hex: {} prefixes, at most {MAX_APART}", apart_hex.len()));
        }
        let apart = apart_hex
            .iter()
            .map(|p| match unhex(p) {
                Some(prefix) if !prefix.is_empty() => Ok(prefix),
                _ => Err(format!("apart_hex: {p:?} is not a non-empty hex key prefix")),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let apart_hint_bytes = file.apart_hint_bytes.unwrap_or(0);
        if apart_hint_bytes > storage::MAX_APART_HINT_BYTES {
            return Err(format!(
                "apart_hint_bytes = {apart_hint_bytes}: at most {}",
                storage::MAX_APART_HINT_BYTES
            ));
        }
        let tls = match &file.tls {
            None => None,
            Some(t) => Some(Tls::load(&t.ca, &t.cert, &t.key).map_err(|e| format!("tls: {e}"))?),
        };
        Ok(NodeConfig {
            tls,
            role: file.role,
            listen,
            data_dir: file.data_dir,
            shard,
            replica,
            max_offset: Duration::from_millis(file.max_offset_ms),
            metrics_listen,
            sequencer: sequencers.join(","),
            group,
            layout: Layout { shards: shards.iter().map(|r| r.join(",")).collect(), map },
            sealer,
            flush_interval: Duration::from_millis(flush_interval_ms),
            retention: Duration::from_millis(retention_ms),
            replay_allowance: Duration::from_millis(allowance_ms),
            row_cache_bytes: (row_cache_mib << 20) as usize,
            block_cache_bytes: (block_cache_mib << 20) as usize,
            table_file_bytes: table_file_mib << 20,
            write_behind,
            held_run_bytes: held_run_mib << 20,
            checkpoint_transfer_bytes_per_s: transfer_mib << 20,
            apart,
            apart_hint_bytes,
        })
    }
}

/// A shard's default `row_cache_mib`: the storage's default row cache.
const DEFAULT_ROW_CACHE_MIB: u64 = (storage::DEFAULT_ROW_CACHE_BYTES >> 20) as u64;

/// A shard's default `block_cache_mib`: the storage's default block cache.
const DEFAULT_BLOCK_CACHE_MIB: u64 = (storage::DEFAULT_BLOCK_CACHE_BYTES >> 20) as u64;

/// A shard's default `table_file_mib`: the storage's default, RocksDB's 64 MiB.
const DEFAULT_TABLE_FILE_MIB: u64 = storage::DEFAULT_TABLE_FILE_BYTES >> 20;

/// The largest `table_file_mib`: 1 GiB, as the storage allows.
const MAX_TABLE_FILE_MIB: u64 = 1 << 10;

/// The most windows a shard may hold unwritten (`write_behind`): each is a window's batch in
/// memory.
const MAX_WRITE_BEHIND: usize = 64;

/// A shard's default `held_run_mib`, as the embedded database's. A shard server killed with
/// runs held reopens up to a flush interval behind and replays the rest from the log; its
/// reads wait for the windows they ask about, and its `Outcome` answers for those stamped
/// before it started.
const DEFAULT_HELD_RUN_MIB: usize = 64;

/// The most MiB a shard holds as runs (`held_run_mib`): up to three times this is in memory
/// (held, handed over, being ingested).
const MAX_HELD_RUN_MIB: usize = 1 << 10;

/// The most key prefixes a shard keeps apart (`apart_hex`): each write looks its key up
/// among them.
const MAX_APART: usize = 4096;

/// The most either cache may be given: 1 TiB.
const MAX_CACHE_MIB: u64 = 1 << 20;

/// The largest `checkpoint_transfer_mib_per_s` (1 TiB/s: no limit any disk reaches; the bound
/// keeps the bytes a second from overflowing).
const MAX_TRANSFER_MIB_PER_S: u64 = 1 << 20;

/// A shard's default `flush_interval_ms`.
pub(crate) const DEFAULT_FLUSH_INTERVAL_MS: u64 = 30_000;

/// A shard's default `retention_ms`.
pub(crate) const DEFAULT_RETENTION_MS: u64 = 60_000;

/// A shard's default `replay_allowance_ms`: a replica restarted after up to an hour's absence
/// replays the windows it missed (the log holds them while it counts, `absent_replica_ms`).
pub(crate) const DEFAULT_REPLAY_ALLOWANCE_MS: u64 = 3_600_000;

const WEEK_MS: u64 = 7 * 24 * 3_600_000;

/// The largest `max_offset_ms`: beyond it commit-wait would stall every write for seconds.
const MAX_OFFSET_MS: u64 = 10_000;
/// The longest window interval (an idle cluster's safe time moves once per interval).
const MAX_INTERVAL_MS: u128 = 10_000;
/// The most entries a window may be configured to hold.
const MAX_WINDOW_ENTRIES: usize = 1_000_000;

/// The address `value` (`host:port`, a name or an IP) of setting `what`: its first address.
fn resolve(what: &str, value: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = value.parse() {
        return Ok(addr);
    }
    let mut addrs = std::net::ToSocketAddrs::to_socket_addrs(value)
        .map_err(|e| format!("{what} = {value:?}: {e} (expected host:port)"))?;
    addrs.next().ok_or_else(|| format!("{what} = {value:?}: the name has no address"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
role = "shard"
listen = "127.0.0.1:7101"
data_dir = "/tmp/s1"
shard = 1

[cluster]
sequencer = "127.0.0.1:7100"
shards = ["127.0.0.1:7101", "127.0.0.1:7102", "127.0.0.1:7103"]
split_keys = ["g", "p"]
"#;

    fn error(text: &str) -> String {
        NodeConfig::check(text).unwrap_err()
    }

    #[test]
    fn a_good_file_is_read_with_defaults_for_what_it_leaves_out() {
        let c = NodeConfig::parse(GOOD).unwrap();
        assert_eq!(c.role, Role::Shard);
        assert_eq!(c.shard, Some(ShardId(1)));
        assert_eq!(c.max_offset, Duration::from_millis(5));
        assert_eq!(c.layout.map.shard_of(b"h"), ShardId(1));
        assert_eq!(c.sealer.window_interval, Duration::from_millis(5));
        assert_eq!(c.retention, Duration::from_secs(60));
        assert_eq!(c.replay_allowance, Duration::from_secs(3600));
        assert_eq!((c.row_cache_bytes, c.block_cache_bytes), (128 << 20, 256 << 20));
        assert_eq!(c.table_file_bytes, 64 << 20);
        assert_eq!(c.write_behind, storage::DEFAULT_WRITE_BEHIND);
        assert_eq!(c.held_run_bytes, 64 << 20);
        assert_eq!(c.checkpoint_transfer_bytes_per_s, 0, "unlimited unless set");
    }

    #[test]
    fn mistakes_are_named() {
        assert!(
            error(&GOOD.replace("split_keys = [\"g\", \"p\"]", "split_keys = [\"p\", \"g\"]"))
                .contains("overlap")
        );
        assert!(error(&GOOD.replace("[\"g\", \"p\"]", "[\"g\"]")).contains("1 split keys for 3"));
        assert!(error(&GOOD.replace("shard = 1", "shard = 3")).contains("shards 0 to 2"));
        assert!(error(&GOOD.replace("shard = 1\n", "")).contains("which shard"));
        assert!(error(&GOOD.replace("127.0.0.1:7101\"\n", "nowhere\"\n")).contains("listen"));
        assert!(error(&GOOD.replace("role = \"shard\"", "role = \"leader\"")).contains("role"));
        assert!(error(&format!("{GOOD}\ncolour = 3")).contains("colour"));
        // Regression: these were accepted, and submits hung or every request panicked.
        let window = |w: &str| format!("{GOOD}\n[window]\n{w}\n");
        assert!(error(&window("interval_ms = 18446744073709551615")).contains("interval_ms"));
        assert!(error(&window("interval_ms = 0")).contains("interval_ms"));
        assert!(error(&window("max_bytes = 1000")).contains("max_bytes"));
        assert!(error(&window("max_bytes = 1000000000")).contains("max_bytes"));
        assert!(error(&window("max_entries = 0")).contains("max_entries"));
        let offset = GOOD.replace("shard = 1\n", "shard = 1\nmax_offset_ms = 10000000000000\n");
        assert!(error(&offset).contains("max_offset_ms"));
        let shard = |line: &str| GOOD.replace("shard = 1\n", &format!("shard = 1\n{line}\n"));
        assert!(error(&shard("retention_ms = 10")).contains("retention_ms = 10: from 1000"));
        let allowance = shard("replay_allowance_ms = 18446744073709551615");
        assert!(error(&allowance).contains("replay_allowance_ms"));
        let c = NodeConfig::parse(&shard("retention_ms = 5000\nreplay_allowance_ms = 0")).unwrap();
        assert_eq!((c.retention, c.replay_allowance), (Duration::from_secs(5), Duration::ZERO));
        let c = NodeConfig::parse(&shard("row_cache_mib = 0\nblock_cache_mib = 1024")).unwrap();
        assert_eq!((c.row_cache_bytes, c.block_cache_bytes), (0, 1 << 30));
        assert!(error(&shard("block_cache_mib = 0")).contains("block_cache_mib = 0: from 1"));
        let c = NodeConfig::parse(&shard("table_file_mib = 8")).unwrap();
        assert_eq!(c.table_file_bytes, 8 << 20);
        assert!(error(&shard("table_file_mib = 0")).contains("table_file_mib = 0: from 1"));
        assert!(error(&shard("table_file_mib = 1025")).contains("to 1024"));
        assert_eq!(NodeConfig::parse(&shard("write_behind = 0")).unwrap().write_behind, 0);
        assert!(error(&shard("write_behind = 65")).contains("write_behind = 65: at most 64"));
        assert!(error(&shard("write_behind = -1")).contains("write_behind"));
        assert_eq!(
            NodeConfig::parse(&shard("held_run_mib = 64")).unwrap().held_run_bytes,
            64 << 20
        );
        assert!(error(&shard("held_run_mib = 1025")).contains("held_run_mib = 1025: at most 1024"));
        let c = NodeConfig::parse(&shard("checkpoint_transfer_mib_per_s = 16")).unwrap();
        assert_eq!(c.checkpoint_transfer_bytes_per_s, 16 << 20);
        let rate = shard("checkpoint_transfer_mib_per_s = 18446744073709551615");
        assert!(error(&rate).contains("checkpoint_transfer_mib_per_s = 18446744073709551615: at"));
        let c = NodeConfig::parse(&shard("apart_hex = [\"0000000104\", \"ff\"]")).unwrap();
        assert_eq!(c.apart, [vec![0, 0, 0, 1, 4], vec![0xff]]);
        assert!(NodeConfig::parse(&shard("")).unwrap().apart.is_empty());
        assert_eq!(NodeConfig::parse(&shard("")).unwrap().apart_hint_bytes, 0);
        assert_eq!(
            NodeConfig::parse(&shard("apart_hint_bytes = 16")).unwrap().apart_hint_bytes,
            16
        );
        assert!(
            error(&shard("apart_hint_bytes = 257")).contains("apart_hint_bytes = 257: at most 256")
        );
        assert!(error(&shard("apart_hex = [\"\"]")).contains("apart_hex: \"\" is not"));
        assert!(error(&shard("apart_hex = [\"0g\"]")).contains("apart_hex: \"0g\" is not"));
        let many = format!("apart_hex = [{}]", vec!["\"01\""; 4097].join(", "));
        assert!(error(&shard(&many)).contains("apart_hex: 4097 prefixes, at most 4096"));
        let huge = shard("row_cache_mib = 18446744073709551615");
        assert!(error(&huge).contains("row_cache_mib"));
        let hex = GOOD.replace("split_keys = [\"g\", \"p\"]", "split_keys_hex = [\"67\", \"7x\"]");
        assert!(error(&hex).contains("\"7x\" is not hex"));
        let hex = GOOD.replace("split_keys = [\"g\", \"p\"]", "split_keys_hex = [\"67\", \"70\"]");
        let c = NodeConfig::parse(&hex).unwrap();
        assert_eq!(c.layout.map.splits(), &[b"g".to_vec(), b"p".to_vec()]);
    }

    #[test]
    fn shards_may_list_replicas_and_a_shard_node_says_which_it_is() {
        let replicated = GOOD.replace(
            "shards = [\"127.0.0.1:7101\", \"127.0.0.1:7102\", \"127.0.0.1:7103\"]",
            "shards = [[\"127.0.0.1:7101\", \"127.0.0.1:7201\"], [\"127.0.0.1:7102\"], \
             [\"127.0.0.1:7103\", \"127.0.0.1:7203\"]]",
        );
        let c = NodeConfig::parse(&replicated).unwrap();
        assert_eq!(c.replica, 0);
        assert_eq!(c.layout.shards[0], "127.0.0.1:7101,127.0.0.1:7201");
        assert_eq!(c.layout.shards[1], "127.0.0.1:7102");
        let second = replicated.replace("shard = 1\n", "shard = 0\nreplica = 1\n");
        assert_eq!(NodeConfig::parse(&second).unwrap().replica, 1);
        let wrong = replicated.replace("shard = 1\n", "shard = 1\nreplica = 1\n");
        assert!(error(&wrong).contains("replica = 1: shard 1 has replicas 0 to 0"));
        let twice = replicated.replace("7201", "7101");
        assert!(error(&twice).contains("cluster.shards[0][1] = \"127.0.0.1:7101\": listed twice"));
        let empty = replicated.replace("[\"127.0.0.1:7102\"]", "[]");
        assert!(error(&empty).contains("cluster.shards[1]: a shard needs at least one replica"));
    }

    #[test]
    fn a_member_of_a_sequencer_group_knows_its_place_and_the_members() {
        let group = GOOD
            .replace("role = \"shard\"", "role = \"sequencer\"")
            .replace("shard = 1\n", "")
            .replace(
                "sequencer = \"127.0.0.1:7100\"",
                "sequencers = [\"127.0.0.1:7100\", \"127.0.0.1:7200\", \"127.0.0.1:7300\"]",
            );
        let c = NodeConfig::parse(&format!("{group}\n[group]\nid = 2\n")).unwrap();
        let spec = c.group.unwrap();
        assert_eq!(spec.id, 2);
        assert_eq!(spec.members[&3], "127.0.0.1:7300");
        assert_eq!(c.sequencer, "127.0.0.1:7100,127.0.0.1:7200,127.0.0.1:7300");
        assert!(error(&group).contains("[group] id"), "a member must say which it is");
        assert!(error(&format!("{group}\n[group]\nid = 4\n")).contains("from 1 to 3"));
        let fast =
            format!("{group}\n[group]\nid = 1\nheartbeat_ms = 100\nelection_timeout_ms = 200\n");
        assert!(error(&fast).contains("3 heartbeats"));
        assert!(error(&format!("{GOOD}\n[group]\nid = 1\n")).contains("only a sequencer"));
        let both = GOOD.replace("[cluster]\n", "[cluster]\nsequencers = [\"127.0.0.1:7200\"]\n");
        assert!(error(&both).contains("give sequencer (one node) or sequencers"));
    }

    /// Regression: `listen = "localhost:7221"` was refused as not an address.
    #[test]
    fn host_names_are_accepted_where_addresses_are() {
        let c = NodeConfig::parse(&GOOD.replace("\"127.0.0.1:7101\"\nd", "\"localhost:7101\"\nd"))
            .unwrap();
        assert!(c.listen.ip().is_loopback(), "{}", c.listen);
        assert_eq!(c.listen.port(), 7101);
    }
}
