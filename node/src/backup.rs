//! `sealdb backup` and `sealdb restore`: a copy of a running cluster, and a new cluster started
//! from it.
//!
//! ```text
//!   DIR/shard-<i>/   the newest checkpoint of a replica of shard i (FetchCheckpoint), with its
//!                    marker: the window it holds and its digest, checked when it is opened
//!   DIR/log/         the sequencer's windows from the oldest checkpoint's next window on, up to
//!                    at least the last window logged when the backup began (ReadLog)
//!   DIR/BACKUP       the manifest, written last: a backup without it is incomplete
//! ```
//!
//! The checkpoints hold different windows; restored, each shard replays the copied log from
//! its own, so the cluster comes back at the copy's last window, with every transaction
//! acknowledged before the backup began. A backup whose log read finds the log truncated
//! past a checkpoint (every replica checkpointed again meanwhile) starts over, up to three
//! times. Taking one needs a node's certificate under TLS (both calls are node-only).
//!
//! Restoring writes one node's data from the backup, before the node first starts: a shard's
//! storage (every replica of shard i gets shard i's checkpoint), the sequencer's log, or a
//! sequencer group member's raft state, seeded from the log copy (every member must be
//! restored from the same backup: a member with other windows refuses the others' proposals
//! and stops). The cluster must have the same shards and key ranges.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use clock::{Clock, Epoch, Timestamp};
use proto::v1;
use proto::v1::sequencer_client::SequencerClient;
use proto::v1::shard_client::ShardClient;
use sequencer::{ClientId, Entry, ShardId, Window, WindowLog};

use crate::config::unhex;
use crate::node::hex;
use crate::shard::{CheckpointMark, fetch_into};
use crate::{NodeConfig, NodeError, Role};
use client::{
    RefusalKind, RemoteError, Tls, cluster_status, endpoint, replica_addrs, sized, stamp,
};

/// The manifest's file name.
pub const MANIFEST: &str = "BACKUP";

/// How many times a backup starts over when the log was truncated under it.
const ATTEMPTS: u32 = 3;

/// What a backup holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// Each shard's checkpoint (its window and digest) and its key range (start, and end if
    /// bounded).
    pub shards: Vec<(CheckpointMark, Vec<u8>, Option<Vec<u8>>)>,
    /// The log's copied windows, first and last.
    pub log: (Epoch, Epoch),
    /// The last window logged when the backup began: every transaction acknowledged before
    /// then is in the copy.
    pub began_at: Epoch,
}

impl Manifest {
    fn encode(&self) -> String {
        let mut text = format!(
            "sealdb backup 1\nlog {} {}\nbegan {}\n",
            self.log.0.0, self.log.1.0, self.began_at.0
        );
        for (i, (e, start, end)) in self.shards.iter().enumerate() {
            let _ = writeln!(
                text,
                "shard {i} {} {:032x} {} {}",
                e.epoch.0,
                e.digest,
                hex(start),
                end.as_deref().map_or_else(|| "-".into(), hex)
            );
        }
        text
    }

    fn decode(text: &str) -> Option<Manifest> {
        let mut lines = text.lines();
        (lines.next()? == "sealdb backup 1").then_some(())?;
        let log: Vec<u64> = lines
            .next()?
            .strip_prefix("log ")?
            .split(' ')
            .map(|n| n.parse().ok())
            .collect::<Option<_>>()?;
        let began_at = Epoch(lines.next()?.strip_prefix("began ")?.parse().ok()?);
        let mut shards = Vec::new();
        for (i, line) in lines.enumerate() {
            let f: Vec<&str> = line.split(' ').collect();
            if f.len() != 6 || f[0] != "shard" || f[1] != i.to_string() {
                return None;
            }
            let expected = CheckpointMark {
                epoch: Epoch(f[2].parse().ok()?),
                digest: u128::from_str_radix(f[3], 16).ok()?,
            };
            let end = if f[5] == "-" { None } else { Some(unhex(f[5])?) };
            shards.push((expected, unhex(f[4])?, end));
        }
        Some(Manifest { shards, log: (Epoch(*log.first()?), Epoch(*log.get(1)?)), began_at })
    }

    /// Reads the manifest of the backup in `dir`.
    pub fn read(dir: &Path) -> Result<Manifest, NodeError> {
        let path = dir.join(MANIFEST);
        let text = std::fs::read_to_string(&path).map_err(|e| {
            NodeError::Config(format!(
                "{}: {e} (a backup cut short has no manifest: take another)",
                path.display()
            ))
        })?;
        Manifest::decode(&text)
            .ok_or_else(|| NodeError::Config(format!("{}: not a backup manifest", path.display())))
    }
}

fn sync_dir(dir: &Path) -> Result<(), NodeError> {
    crate::shard::sync_dir(dir).map_err(|e| NodeError::at(dir, e))
}

/// Backs the cluster whose sequencer (or a member of whose group) is at `addr` up into `to`,
/// which must not exist or be empty. Prints progress to stderr.
pub async fn backup(
    addr: &str,
    to: &Path,
    clock: &Clock,
    tls: Option<&Tls>,
) -> Result<Manifest, NodeError> {
    let empty = std::fs::read_dir(to).map(|mut d| d.next().is_none()).unwrap_or(true);
    if !empty {
        return Err(NodeError::Config(format!("{}: not empty", to.display())));
    }
    std::fs::create_dir_all(to).map_err(|e| NodeError::at(to, e))?;
    let mut attempt = 1;
    loop {
        match backup_once(addr, to, clock, tls).await {
            Err(Retry::Truncated(why)) if attempt < ATTEMPTS => {
                eprintln!("the log was truncated under the backup ({why}); starting over");
                attempt += 1;
            }
            Err(Retry::Truncated(why)) => {
                return Err(NodeError::Stopped(format!(
                    "the log was truncated under the backup {ATTEMPTS} times: {why}"
                )));
            }
            Err(Retry::Failed(e)) => return Err(e),
            Ok(manifest) => return Ok(manifest),
        }
    }
}

enum Retry {
    Truncated(String),
    Failed(NodeError),
}

impl From<NodeError> for Retry {
    fn from(e: NodeError) -> Retry {
        Retry::Failed(e)
    }
}

async fn backup_once(
    addr: &str,
    to: &Path,
    clock: &Clock,
    tls: Option<&Tls>,
) -> Result<Manifest, Retry> {
    let started = Instant::now();
    let unavailable = |e: String| Retry::Failed(NodeError::Stopped(e));
    let status = cluster_status(addr, clock, tls).await.map_err(|e| unavailable(e.to_string()))?;
    // A group's followers may not have applied the leader's last windows yet: the newest any
    // member has is where the backup begins (the log is read from a member that has it).
    let mut began_at = Epoch(status.sealed_epoch);
    for member in addr.split(',').map(str::trim).filter(|a| !a.is_empty()) {
        if let Ok(s) = cluster_status(member, clock, tls).await {
            began_at = began_at.max(Epoch(s.sealed_epoch));
        }
    }
    let map = txn::ShardMap::new(status.splits.clone())
        .map_err(|e| unavailable(format!("the cluster's split keys: {e}")))?;
    let mut shards = Vec::new();
    for (i, addrs) in status.shard_addrs.iter().enumerate() {
        let dir = to.join(format!("shard-{i}"));
        let mut fetched = None;
        let mut failures = Vec::new();
        for replica in replica_addrs(addrs) {
            let channel = endpoint(&replica, tls)
                .map_err(|e| unavailable(format!("{replica}: {e}")))?
                .connect_lazy();
            match fetch_into(&dir, sized!(ShardClient::new(channel)), clock, Epoch(0), |_| {}).await
            {
                Ok(got) => {
                    fetched = Some(got);
                    break;
                }
                Err(why) => failures.push(format!("{replica}: {why}")),
            }
        }
        let (expected, bytes) = fetched.ok_or_else(|| {
            unavailable(format!(
                "no replica of shard {i} gave a checkpoint: {}",
                failures.join("; ")
            ))
        })?;
        eprintln!(
            "shard {i}: checkpoint at window {} ({:.1} MiB)",
            expected.epoch.0,
            bytes as f64 / f64::from(1 << 20)
        );
        let range = map.range_of(ShardId(i as u32));
        shards.push((expected, range.start.clone(), range.end.clone()));
    }
    let oldest = shards.iter().map(|(e, _, _)| e.epoch).min().unwrap_or(Epoch(0));
    let newest = shards.iter().map(|(e, _, _)| e.epoch).max().unwrap_or(Epoch(0));
    // The copy holds at least the last window, even when every checkpoint has it: the
    // restored sequencer goes on from there (the next epoch, a later timestamp).
    let last = began_at.max(newest);
    let from = oldest.next().min(last);
    let log_dir = to.join("log");
    let _ = std::fs::remove_dir_all(&log_dir);
    let copied = copy_log(addr, &log_dir, from, last, clock, tls).await?;
    eprintln!("log: windows {from} to {last} ({copied} windows)");
    let manifest = Manifest { shards, log: (from, last), began_at };
    let path = to.join(MANIFEST);
    std::fs::write(&path, manifest.encode()).map_err(|e| NodeError::at(&path, e))?;
    std::fs::File::open(&path).and_then(|f| f.sync_all()).map_err(|e| NodeError::at(&path, e))?;
    sync_dir(to)?;
    eprintln!("backup complete in {:.1} s", started.elapsed().as_secs_f64());
    Ok(manifest)
}

/// Copies windows `from..=last` from a sequencer (any member of a group) into a new log at
/// `dir`.
async fn copy_log(
    addr: &str,
    dir: &Path,
    from: Epoch,
    last: Epoch,
    clock: &Clock,
    tls: Option<&Tls>,
) -> Result<u64, Retry> {
    let mut failures = Vec::new();
    for member in addr.split(',').map(str::trim).filter(|a| !a.is_empty()) {
        let channel = endpoint(member, tls)
            .map_err(|e| Retry::Failed(NodeError::Config(format!("{member}: {e}"))))?
            .connect_lazy();
        let mut client = sized!(SequencerClient::new(channel));
        let request =
            v1::ReadLogRequest { hlc: stamp(clock), from_epoch: from.0, to_epoch: last.0 };
        let mut stream = match client.read_log(request).await {
            Ok(s) => s.into_inner(),
            Err(status) => match RemoteError::from(status) {
                RemoteError::Refused { kind: RefusalKind::Truncated, why } => {
                    return Err(Retry::Truncated(why));
                }
                e => {
                    failures.push(format!("{member}: {e}"));
                    continue;
                }
            },
        };
        let mut log = WindowLog::create_at(dir, from)
            .map_err(|e| Retry::Failed(NodeError::Stopped(format!("the log copy: {e}"))))?;
        let mut copied = 0u64;
        loop {
            match stream.message().await {
                Ok(Some(slice)) => {
                    let window =
                        window_of(&slice).map_err(|why| Retry::Failed(NodeError::Stopped(why)))?;
                    log.append(&window).map_err(|e| {
                        Retry::Failed(NodeError::Stopped(format!("the log copy: {e}")))
                    })?;
                    copied += 1;
                }
                Ok(None) if log.last().map(|(e, _)| e) == Some(last) => return Ok(copied),
                Ok(None) => {
                    return Err(Retry::Failed(NodeError::Stopped(format!(
                        "{member} ended the log after {copied} windows, before window {last}"
                    ))));
                }
                Err(status) => match RemoteError::from(status) {
                    RemoteError::Refused { kind: RefusalKind::Truncated, why } => {
                        return Err(Retry::Truncated(why));
                    }
                    e => return Err(Retry::Failed(NodeError::Stopped(format!("{member}: {e}")))),
                },
            }
        }
    }
    Err(Retry::Failed(NodeError::Stopped(format!(
        "no sequencer gave the log: {}",
        failures.join("; ")
    ))))
}

/// A window from `ReadLog`'s message.
fn window_of(slice: &v1::WindowSlice) -> Result<Window, String> {
    let mut entries = Vec::with_capacity(slice.entries.len());
    for (i, e) in slice.entries.iter().enumerate() {
        let client_id = ClientId::from_bytes(&e.client_id).ok_or_else(|| {
            format!("window {}: a client id of {} bytes", slice.epoch, e.client_id.len())
        })?;
        if e.index as usize != i {
            return Err(format!("window {}: entry {i} says it is entry {}", slice.epoch, e.index));
        }
        let participants = e.participants.iter().copied().map(ShardId).collect();
        entries.push(Entry::new(client_id, participants, e.payload.as_slice().into()));
    }
    Ok(Window { epoch: Epoch(slice.epoch), ts: Timestamp::from_u64(slice.window_ts), entries })
}

/// Writes node `config`'s data from the backup in `from`, before the node first starts: what
/// it wrote.
pub fn restore(from: &Path, config: &NodeConfig) -> Result<String, NodeError> {
    let manifest = Manifest::read(from)?;
    let map = &config.layout.map;
    if manifest.shards.len() != map.len() as usize {
        return Err(NodeError::Config(format!(
            "the backup has {} shards, this cluster {}",
            manifest.shards.len(),
            map.len()
        )));
    }
    for (i, (_, start, end)) in manifest.shards.iter().enumerate() {
        let range = map.range_of(ShardId(i as u32));
        if (&range.start, &range.end) != (start, end) {
            return Err(NodeError::Config(format!(
                "shard {i} holds other keys here than in the backup (its split keys differ)"
            )));
        }
    }
    let (source, target) = match (config.role, config.shard, &config.group) {
        (Role::Shard, Some(shard), _) => {
            (from.join(format!("shard-{}", shard.0)), config.data_dir.join("rocksdb"))
        }
        (Role::Sequencer, _, _) => (from.join("log"), config.data_dir.join("log")),
        (Role::Shard, None, _) => {
            return Err(NodeError::Config("a shard node without a shard".into()));
        }
    };
    std::fs::create_dir_all(&config.data_dir).map_err(|e| NodeError::at(&config.data_dir, e))?;
    // Not while the node runs (it holds the same lock).
    let _lock = sequencer::lock_dir(&config.data_dir)?;
    let empty = std::fs::read_dir(&target).map(|mut d| d.next().is_none()).unwrap_or(true);
    if !empty {
        return Err(NodeError::Config(format!(
            "{} holds data already: restore into a node that has never run",
            target.display()
        )));
    }
    let copy = PathBuf::from(format!("{}.restoring", target.display()));
    let _ = std::fs::remove_dir_all(&copy);
    std::fs::create_dir_all(&copy).map_err(|e| NodeError::at(&copy, e))?;
    // A group member's windows live in its raft state: the log copy goes aside, and seeds it.
    let group = config.role == Role::Sequencer && config.group.is_some();
    let files = if group { copy.join("backup-log") } else { copy.clone() };
    std::fs::create_dir_all(&files).map_err(|e| NodeError::at(&files, e))?;
    let mut bytes = 0u64;
    for entry in std::fs::read_dir(&source).map_err(|e| NodeError::at(&source, e))? {
        let entry = entry.map_err(|e| NodeError::at(&source, e))?;
        let into = files.join(entry.file_name());
        bytes += std::fs::copy(entry.path(), &into).map_err(|e| NodeError::at(&into, e))?;
        std::fs::File::open(&into)
            .and_then(|f| f.sync_all())
            .map_err(|e| NodeError::at(&into, e))?;
    }
    if group {
        let (log, windows) = WindowLog::open(&files)
            .map_err(|e| NodeError::Config(format!("the backup's log: {e}")))?;
        drop(log);
        let held = (windows.first().map(|w| w.epoch), windows.last().map(|w| w.epoch));
        if held != (Some(manifest.log.0), Some(manifest.log.1)) {
            return Err(NodeError::Config(format!(
                "the backup's log holds windows {:?} to {:?}, its manifest says {} to {}",
                held.0, held.1, manifest.log.0, manifest.log.1
            )));
        }
        let state = copy.join("state");
        replication::StateMachine::seed(&state, &windows, config.sealer.dedup_windows)
            .map_err(|e| NodeError::at(&state, e))?;
        std::fs::remove_dir_all(&files).map_err(|e| NodeError::at(&files, e))?;
    }
    sync_dir(&copy)?;
    let _ = std::fs::remove_dir(&target);
    std::fs::rename(&copy, &target).map_err(|e| NodeError::at(&target, e))?;
    sync_dir(&config.data_dir)?;
    Ok(format!(
        "restored {} ({:.1} MiB) from {}; the cluster resumes after window {}",
        target.display(),
        bytes as f64 / f64::from(1 << 20),
        source.display(),
        manifest.log.1.0
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manifest_reads_back_as_written() {
        let m = Manifest {
            shards: vec![
                (
                    CheckpointMark { epoch: Epoch(7), digest: 0xfeed },
                    Vec::new(),
                    Some(b"g".to_vec()),
                ),
                (CheckpointMark { epoch: Epoch(9), digest: 1 }, b"g".to_vec(), None),
            ],
            log: (Epoch(8), Epoch(20)),
            began_at: Epoch(19),
        };
        assert_eq!(Manifest::decode(&m.encode()), Some(m.clone()));
        assert_eq!(Manifest::decode(&m.encode().replace("shard 1", "shard 2")), None);
        assert_eq!(Manifest::decode("sealdb backup 2\n"), None);
    }
}
