//! Checkpoints of a shard replica's storage, and a replica catching up from a fellow's.
//!
//! **Taking.** Every `flush_interval` the apply thread, between windows (and when idle, for
//! the last window applied), takes a RocksDB checkpoint ([`Checkpoints::take`]: hard links of
//! the live files, so it costs a memtable flush) into `<storage>-checkpoints/<epoch>` and
//! keeps the last [`KEPT`]. The epoch it reports to the sequencer as flushed is the
//! checkpoint's, so the log is truncated only below windows that every replica holds in a
//! checkpoint: a fellow that needs one finds it at or above the cut.
//!
//! **Catching up.** A replica that is new, or whose next window the log no longer holds
//! (it was down while the sequencer truncated past it, having stopped counting it), fetches
//! a fellow replica's latest checkpoint over gRPC (`FetchCheckpoint`, [`fetch`]):
//!
//! ```text
//!   <storage>-incoming/   files written chunk by chunk, each chunk's CRC and the sizes checked,
//!                         fsynced; then MARKER (the manifest's epoch, timestamp, digest)
//!   install:              remove <storage>, rename <storage>-incoming to <storage>, fsync
//!   open:                 the storage's watermark and digest must be the manifest's
//! ```
//!
//! The marker, written last, is what makes a transfer complete: a replica killed before it
//! starts over (the partial directory is removed on start, [`install_pending`]); one killed
//! after it installs on start. The installed storage then replays the log's tail like any
//! restarted replica.
//!
//! **Holding the log meanwhile.** The sequencer stops counting a replica silent for
//! `absent_replica_ms`, so while one fetches, its fellows' newer checkpoints move the cut on:
//! by the time the transfer is installed, the window after it may be gone, and the replica
//! would fetch again (forever, if every transfer outlasts a flush interval). So from the
//! manifest on, the fetching replica reports the checkpoint's window to the sequencer as its
//! own flushed window, every [`HOLD_INTERVAL`] until the transfer ends ([`LogHold`]); once it
//! has opened its storage it reports the window it holds, and its own checkpoints report
//! from then on. A fellow sends at most `checkpoint_transfer_mib_per_s` to each transfer.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clock::{Clock, Epoch, Timestamp};
use proto::v1;
use proto::v1::checkpoint_part::Part;
use proto::v1::shard_client::ShardClient;
use storage::{Mvcc, StorageError};
use tokio::sync::{Semaphore, mpsc};
use tonic::transport::Channel;
use tonic::{Code, Status};

use super::lock;
use crate::NodeError;
use client::{RefusalKind, refuse, stamp};

/// Checkpoints kept: the newest, and the one before it for a transfer that began just before
/// the newest was taken.
const KEPT: usize = 2;

/// The most bytes in one transfer message (well under the message size limit).
const CHUNK_BYTES: usize = 1 << 20;

/// Transfers served at once by a replica; more are refused as busy.
const MAX_TRANSFERS: usize = 2;

/// The longest either side of a transfer waits for the other's next message.
const PART_SILENCE: Duration = Duration::from_secs(30);

/// The most files a manifest may list (a checkpoint has a few per level of the LSM tree).
const MAX_FILES: usize = 100_000;

/// A request to catch up from a fellow, and the window its checkpoint must hold, in the
/// storage directory it is about: installing a checkpoint replaces the directory, request and
/// all, and so does a restore.
const CATCH_UP: &str = "SEALDB_CATCH_UP";

/// The file whose presence makes a transfer complete, with the manifest's epoch, timestamp and
/// digest.
const MARKER: &str = "SEALDB_CHECKPOINT";

/// A checkpoint taken: which window it ends with, and where it is.
#[derive(Debug, Clone)]
pub(super) struct Taken {
    pub(super) epoch: Epoch,
    pub(super) ts: Timestamp,
    pub(super) digest: u128,
    path: PathBuf,
    pub(super) at: Instant,
}

/// A replica's checkpoints, in the directory next to its storage.
pub(super) struct Checkpoints {
    /// The storage directory.
    storage: PathBuf,
    dir: PathBuf,
    latest: Mutex<Option<Taken>>,
    transfers: Arc<Semaphore>,
    /// Bytes a second each transfer sends (0: unlimited).
    transfer_rate: u64,
}

/// `<storage>-<suffix>`, next to the storage directory.
fn beside(storage: &Path, suffix: &str) -> PathBuf {
    let mut name = storage.file_name().unwrap_or_default().to_os_string();
    name.push(format!("-{suffix}"));
    storage.with_file_name(name)
}

fn io(what: &Path, e: std::io::Error) -> StorageError {
    StorageError::Engine(format!("{}: {e}", what.display()))
}

/// Fsyncs a directory, so that the names created or removed in it last.
pub(crate) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

fn remove_dir(dir: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

impl Checkpoints {
    /// The checkpoints of the storage at `storage`. Those of a previous run are removed: the
    /// first is taken at the first window applied after the start.
    pub(super) fn open(storage: &Path, transfer_rate: u64) -> Result<Checkpoints, NodeError> {
        let dir = beside(storage, "checkpoints");
        remove_dir(&dir).map_err(|e| NodeError::at(&dir, e))?;
        std::fs::create_dir_all(&dir).map_err(|e| NodeError::at(&dir, e))?;
        Ok(Checkpoints {
            storage: storage.to_path_buf(),
            dir,
            latest: Mutex::new(None),
            transfers: Arc::new(Semaphore::new(MAX_TRANSFERS)),
            transfer_rate,
        })
    }

    /// Asks the next start to catch up from a fellow's checkpoint holding `window` or later:
    /// peers refused this replica's reads for `window` as older than they keep versions for
    /// (`replay_allowance`), so replaying it cannot succeed. Written durably, so that a
    /// process restarted by hand catches up too.
    pub(super) fn request_catch_up(&self, window: Epoch) -> std::io::Result<()> {
        let taking = self.storage.join(format!("{CATCH_UP}.tmp"));
        let mut file = std::fs::File::create(&taking)?;
        file.write_all(format!("window {}\n", window.0).as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&taking, self.storage.join(CATCH_UP))?;
        sync_dir(&self.storage)
    }

    /// The newest checkpoint, if one was taken.
    pub(super) fn latest(&self) -> Option<Taken> {
        lock(&self.latest).clone()
    }

    /// Checkpoints `mvcc`, which has just applied window `epoch` (at `ts`, chained digest
    /// `digest`) and applies nothing until this returns, and removes all but the last
    /// [`KEPT`]. Returns the checkpoint's window.
    pub(super) fn take(
        &self,
        mvcc: &Mvcc,
        epoch: Epoch,
        ts: Timestamp,
        digest: u128,
    ) -> Result<Epoch, StorageError> {
        if self.latest().is_some_and(|t| t.epoch == epoch) {
            return Ok(epoch);
        }
        let taking = self.dir.join("taking");
        remove_dir(&taking).map_err(|e| io(&taking, e))?;
        let watermark = mvcc.checkpoint(&taking)?;
        if watermark.map(|w| w.window) != Some(epoch) {
            return Err(StorageError::Engine(format!(
                "a checkpoint after window {epoch} holds {watermark:?}"
            )));
        }
        let path = self.dir.join(format!("{:020}", epoch.0));
        std::fs::rename(&taking, &path).map_err(|e| io(&path, e))?;
        sync_dir(&self.dir).map_err(|e| io(&self.dir, e))?;
        *lock(&self.latest) = Some(Taken { epoch, ts, digest, path, at: Instant::now() });
        let mut names: Vec<_> = std::fs::read_dir(&self.dir)
            .map_err(|e| io(&self.dir, e))?
            .filter_map(|e| e.ok().map(|e| e.file_name()))
            .filter(|n| n.len() == 20)
            .collect();
        names.sort();
        for old in names.iter().rev().skip(KEPT) {
            let old = self.dir.join(old);
            // A transfer reading it has its files open already.
            if let Err(e) = remove_dir(&old) {
                tracing::warn!(path = %old.display(), error = %e, "an old checkpoint stays");
            }
        }
        Ok(epoch)
    }

    /// Streams the newest checkpoint: a manifest, then its files' chunks (see the module's
    /// documentation), at most the configured bytes a second. Its files are opened before
    /// this returns, so removing the checkpoint meanwhile does not cut the transfer short.
    pub(super) fn serve(
        &self,
        clock: Arc<Clock>,
    ) -> Result<mpsc::Receiver<Result<v1::CheckpointPart, Status>>, Status> {
        let permit = self.transfers.clone().try_acquire_owned().map_err(|_| {
            refuse(
                Code::ResourceExhausted,
                RefusalKind::Busy,
                format!("{MAX_TRANSFERS} checkpoint transfers are under way; ask again later"),
            )
        })?;
        let taken = self
            .latest()
            .ok_or_else(|| Status::not_found("no checkpoint yet (one is taken every flush)"))?;
        let internal = |e: std::io::Error| Status::internal(format!("reading the checkpoint: {e}"));
        let mut files = Vec::new();
        for entry in std::fs::read_dir(&taken.path).map_err(internal)? {
            let entry = entry.map_err(internal)?;
            let name = entry.file_name().into_string().map_err(|n| {
                Status::internal(format!("a checkpoint file named {n:?} (not UTF-8)"))
            })?;
            let file = std::fs::File::open(entry.path()).map_err(internal)?;
            let size = file.metadata().map_err(internal)?.len();
            files.push((name, size, file));
        }
        files.sort_by(|a, b| a.0.cmp(&b.0));
        let manifest = v1::CheckpointManifest {
            epoch: taken.epoch.0,
            window_ts: taken.ts.as_u64(),
            digest: taken.digest.to_le_bytes().to_vec(),
            files: files
                .iter()
                .map(|(name, size, _)| v1::CheckpointFile { name: name.clone(), size: *size })
                .collect(),
        };
        let (tx, rx) = mpsc::channel(2);
        let rate = self.transfer_rate;
        tokio::spawn(async move {
            let _permit = permit;
            let (began, mut sent) = (tokio::time::Instant::now(), 0u64);
            // A receiver that takes nothing for PART_SILENCE ends the transfer.
            let send = async |part: Result<Part, Status>| {
                let part = part.map(|p| v1::CheckpointPart { hlc: stamp(&clock), part: Some(p) });
                matches!(tokio::time::timeout(PART_SILENCE, tx.send(part)).await, Ok(Ok(())))
            };
            if !send(Ok(Part::Manifest(manifest))).await {
                return;
            }
            for (index, (name, size, file)) in files.into_iter().enumerate() {
                let mut file = Some(file);
                let mut offset = 0u64;
                while offset < size {
                    let want = (size - offset).min(CHUNK_BYTES as u64) as usize;
                    let mut f = file.take().expect("put back after each read");
                    let read = tokio::task::spawn_blocking(move || {
                        let mut data = vec![0u8; want];
                        f.read_exact(&mut data).map(|()| (f, data))
                    })
                    .await;
                    let (f, data) = match read {
                        Ok(Ok(read)) => read,
                        Ok(Err(e)) => {
                            let why = format!("reading checkpoint file {name}: {e}");
                            send(Err(Status::internal(why))).await;
                            return;
                        }
                        Err(e) => {
                            send(Err(Status::internal(e.to_string()))).await;
                            return;
                        }
                    };
                    file = Some(f);
                    let crc32 = crc32fast::hash(&data);
                    let chunk = v1::CheckpointChunk { file: index as u32, offset, data, crc32 };
                    if !send(Ok(Part::Chunk(chunk))).await {
                        return;
                    }
                    offset += want as u64;
                    sent += want as u64;
                    if rate > 0 {
                        let due = Duration::from_secs_f64(sent as f64 / rate as f64);
                        tokio::time::sleep_until(began + due).await;
                    }
                }
            }
        });
        Ok(rx)
    }
}

/// What a complete transfer's marker says the installed storage must hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckpointMark {
    /// The last window the checkpoint holds.
    pub epoch: Epoch,
    /// The chained digest of the windows up to it.
    pub digest: u128,
}

impl CheckpointMark {
    fn encode(&self) -> String {
        format!("epoch {}\ndigest {:032x}\n", self.epoch.0, self.digest)
    }

    fn decode(text: &str) -> Option<CheckpointMark> {
        let mut lines = text.lines();
        let epoch = lines.next()?.strip_prefix("epoch ")?.parse().ok()?;
        let digest = u128::from_str_radix(lines.next()?.strip_prefix("digest ")?, 16).ok()?;
        Some(CheckpointMark { epoch: Epoch(epoch), digest })
    }
}

/// The window a catch-up was asked for ([`Checkpoints::request_catch_up`]), unless the
/// storage, which has applied up to `applied`, holds it already (the request is then removed).
pub(super) fn catch_up_requested(
    storage: &Path,
    applied: Option<Epoch>,
) -> Result<Option<Epoch>, NodeError> {
    let path = storage.join(CATCH_UP);
    let window = match std::fs::read_to_string(&path) {
        Ok(text) => {
            text.trim().strip_prefix("window ").and_then(|w| w.parse().ok()).ok_or_else(|| {
                NodeError::Config(format!("{}: not a catch-up request", path.display()))
            })?
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(NodeError::at(&path, e)),
    };
    if applied.is_some_and(|a| a.0 >= window) {
        std::fs::remove_file(&path).map_err(|e| NodeError::at(&path, e))?;
        tracing::info!(window, "the storage holds the window a catch-up was asked for");
        return Ok(None);
    }
    Ok(Some(Epoch(window)))
}

/// Before the storage at `storage` is opened: installs a complete transfer (replacing the
/// storage), removes one cut short, and returns what an installed checkpoint must hold once
/// opened (its marker is still in the storage directory until [`installed`] removes it).
pub(super) fn install_pending(storage: &Path) -> Result<Option<CheckpointMark>, NodeError> {
    let incoming = beside(storage, "incoming");
    let at = |p: &Path| {
        let p = p.to_path_buf();
        move |e| NodeError::at(&p, e)
    };
    if incoming.join(MARKER).exists() {
        tracing::info!(from = %incoming.display(), "installing a fellow replica's checkpoint");
        remove_dir(storage).map_err(at(storage))?;
        std::fs::rename(&incoming, storage).map_err(at(storage))?;
        let parent = storage.parent().unwrap_or(Path::new("."));
        sync_dir(parent).map_err(at(parent))?;
    } else if incoming.exists() {
        tracing::info!(dir = %incoming.display(), "removing a checkpoint transfer cut short");
        remove_dir(&incoming).map_err(at(&incoming))?;
    }
    let marker = storage.join(MARKER);
    match std::fs::read_to_string(&marker) {
        Ok(text) => CheckpointMark::decode(&text).map(Some).ok_or_else(|| {
            NodeError::Config(format!("{}: not a checkpoint marker", marker.display()))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(NodeError::at(&marker, e)),
    }
}

/// Checks that the installed storage, now open, holds what its transfer's manifest said,
/// then removes the marker.
pub(super) fn installed(
    storage: &Path,
    mvcc: &Mvcc,
    expected: CheckpointMark,
) -> Result<(), NodeError> {
    let epoch = mvcc.applied().map_or(Epoch(0), |w| w.window);
    let digest = txn::stored_digest(mvcc).map_err(|e| NodeError::Config(e.to_string()))?;
    if (epoch, digest) != (expected.epoch, expected.digest) {
        return Err(NodeError::Config(format!(
            "{}: the checkpoint installed holds window {} with digest {digest:032x}, its \
             manifest said window {} with digest {:032x}; remove the directory to fetch \
             another",
            storage.display(),
            epoch.0,
            expected.epoch.0,
            expected.digest
        )));
    }
    let marker = storage.join(MARKER);
    std::fs::remove_file(&marker).map_err(|e| NodeError::at(&marker, e))?;
    tracing::info!(
        window = epoch.0,
        "opened an installed checkpoint (its watermark and digest check)"
    );
    Ok(())
}

/// How often a replica fetching a checkpoint tells the sequencer again that it needs the log
/// from that checkpoint's window on ([`LogHold`]).
const HOLD_INTERVAL: Duration = Duration::from_millis(250);

/// A replica as the sequencer that truncates the log knows it. While the replica catches up
/// from a fellow's checkpoint, [`fetch`] reports that checkpoint's window as its flushed
/// window, from the transfer's manifest on and again every [`HOLD_INTERVAL`] until the
/// transfer ends. Without it the sequencer counts the replica absent (it has not reported
/// since it went down) and truncates the log past its fellows' newer checkpoints while the
/// transfer runs, so that the window after the fetched checkpoint may be gone once it is
/// installed, and the replica fetches again, perhaps forever.
pub(super) struct LogHold {
    pub(super) sequencer: client::RemoteSequencer,
    pub(super) shard: ::sequencer::ShardId,
    pub(super) replica: u32,
}

impl LogHold {
    /// Reports `window` as this replica's flushed window, in the background (a sequencer
    /// that cannot be reached holds nothing; the replica finds out when it subscribes).
    pub(super) fn report(self, window: Epoch) {
        tokio::spawn(async move { self.send(window).await });
    }

    async fn send(&self, window: Epoch) {
        if let Err(e) = self.sequencer.flushed(self.shard, self.replica, window).await {
            tracing::debug!(shard = self.shard.0, error = %e, "holding the log");
        }
    }

    /// Reports the window `held` names, at once and every [`HOLD_INTERVAL`], until aborted or
    /// `held`'s sender is dropped.
    async fn hold(self, mut held: tokio::sync::watch::Receiver<Option<Epoch>>) {
        loop {
            let window = *held.borrow_and_update();
            if let Some(window) = window {
                // One report at a time: a slow sequencer is not sent a queue of them.
                self.send(window).await;
            }
            // The sender dropped: the transfer is over.
            if let Ok(Err(_)) = tokio::time::timeout(HOLD_INTERVAL, held.changed()).await {
                return;
            }
        }
    }
}

/// Fetches a fellow replica's checkpoint into `<storage>-incoming`, trying each fellow in turn
/// until one transfer of a checkpoint holding `at_least` or later completes, holding the log
/// from the checkpoint's window meanwhile ([`LogHold`]); [`install_pending`] installs it.
/// Returns the checkpoint's window.
pub(super) async fn fetch(
    storage: &Path,
    fellows: &[(String, ShardClient<Channel>)],
    clock: &Clock,
    at_least: Epoch,
    hold: LogHold,
) -> Result<Epoch, String> {
    let incoming = beside(storage, "incoming");
    let (held, holding) = tokio::sync::watch::channel(None);
    let holder = tokio::spawn(hold.hold(holding));
    let fetched = fetch_from(&incoming, fellows, clock, at_least, &held).await;
    // Not waited for (a report takes up to 2 s when the sequencer is away): the replica
    // reports what it holds itself once it has opened what it fetched.
    holder.abort();
    fetched
}

/// [`fetch`]'s transfers, each naming its checkpoint's window in `held` once its manifest came.
async fn fetch_from(
    incoming: &Path,
    fellows: &[(String, ShardClient<Channel>)],
    clock: &Clock,
    at_least: Epoch,
    held: &tokio::sync::watch::Sender<Option<Epoch>>,
) -> Result<Epoch, String> {
    let mut failures = Vec::new();
    for (addr, client) in fellows {
        let started = Instant::now();
        let accepted = |mark: &CheckpointMark| {
            held.send_replace(Some(mark.epoch));
        };
        match fetch_into(incoming, client.clone(), clock, at_least, accepted).await {
            Ok((expected, bytes)) => {
                tracing::info!(
                    fellow = %addr,
                    window = expected.epoch.0,
                    bytes,
                    seconds = started.elapsed().as_secs_f64(),
                    "fetched a checkpoint"
                );
                return Ok(expected.epoch);
            }
            Err(why) => {
                tracing::warn!(fellow = %addr, error = %why, "fetching a checkpoint");
                failures.push(format!("{addr}: {why}"));
            }
        }
    }
    Err(failures.join("; "))
}

/// One transfer of a replica's newest checkpoint into the directory `incoming` (replaced),
/// complete once this returns: the marker (what it holds) and its size in bytes. A checkpoint
/// of a window before `at_least` is refused once its manifest says so; `accepted` is told what
/// an accepted one holds before its files come.
pub(crate) async fn fetch_into(
    incoming: &Path,
    mut client: ShardClient<Channel>,
    clock: &Clock,
    at_least: Epoch,
    accepted: impl FnOnce(&CheckpointMark),
) -> Result<(CheckpointMark, u64), String> {
    let incoming = incoming.to_path_buf();
    let blocking = |f: Box<dyn FnOnce() -> std::io::Result<()> + Send>| async move {
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("writing the checkpoint: {e}"))
    };
    let dir = incoming.clone();
    blocking(Box::new(move || {
        remove_dir(&dir)?;
        std::fs::create_dir_all(&dir)
    }))
    .await?;
    let mut request = tonic::Request::new(v1::FetchCheckpointRequest { hlc: stamp(clock) });
    request.set_timeout(PART_SILENCE);
    let mut stream =
        client.fetch_checkpoint(request).await.map_err(|s| s.to_string())?.into_inner();
    let mut next = async || match tokio::time::timeout(PART_SILENCE, stream.message()).await {
        Err(_) => Err(format!("nothing from the fellow in {} s", PART_SILENCE.as_secs())),
        Ok(Err(status)) => Err(status.to_string()),
        Ok(Ok(part)) => Ok(part.and_then(|p| p.part)),
    };
    let Some(Part::Manifest(manifest)) = next().await? else {
        return Err("the transfer did not begin with a manifest".into());
    };
    let expected = check_manifest(&manifest)?;
    if expected.epoch < at_least {
        return Err(format!(
            "its checkpoint holds window {}, before window {}, which this replica needs",
            expected.epoch.0, at_least.0
        ));
    }
    accepted(&expected);
    let mut files = Vec::with_capacity(manifest.files.len());
    for f in &manifest.files {
        let path = incoming.join(&f.name);
        let file = std::fs::File::create_new(&path).map_err(|e| format!("{}: {e}", f.name))?;
        files.push((file, 0u64, f.size));
    }
    let mut current = 0usize;
    let mut bytes = 0u64;
    while let Some(part) = next().await? {
        let Part::Chunk(chunk) = part else {
            return Err("a second manifest in one transfer".into());
        };
        let index = chunk.file as usize;
        // Files come in order, each from 0 to its size: skip the empty ones before it.
        while current < index && files.get(current).is_some_and(|(_, got, size)| got == size) {
            current += 1;
        }
        let Some((file, got, size)) = files.get_mut(index) else {
            return Err(format!("a chunk of file {index}, of {}", manifest.files.len()));
        };
        if index != current || chunk.offset != *got || chunk.data.len() > CHUNK_BYTES {
            return Err(format!(
                "a chunk of file {index} at {} ({} bytes) out of order (expected file {current} \
                 at {got})",
                chunk.offset,
                chunk.data.len()
            ));
        }
        if *got + chunk.data.len() as u64 > *size {
            return Err(format!("file {index} is longer than its manifest's {size} bytes"));
        }
        if crc32fast::hash(&chunk.data) != chunk.crc32 {
            return Err(format!("a chunk of file {index} at {got}: wrong checksum"));
        }
        file.write_all(&chunk.data).map_err(|e| format!("writing the checkpoint: {e}"))?;
        *got += chunk.data.len() as u64;
        bytes += chunk.data.len() as u64;
    }
    if let Some((i, (_, got, size))) =
        files.iter().enumerate().find(|(_, (_, got, size))| got != size)
    {
        return Err(format!("the transfer ended with file {i} at {got} of {size} bytes"));
    }
    let marker = expected.encode();
    blocking(Box::new(move || {
        for (file, _, _) in &files {
            file.sync_all()?;
        }
        let taking = incoming.join(format!("{MARKER}.tmp"));
        let mut file = std::fs::File::create(&taking)?;
        file.write_all(marker.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&taking, incoming.join(MARKER))?;
        sync_dir(&incoming)
    }))
    .await?;
    Ok((expected, bytes))
}

/// What a fellow's manifest promises, if it is well formed: plain, distinct file names.
fn check_manifest(manifest: &v1::CheckpointManifest) -> Result<CheckpointMark, String> {
    let digest = <[u8; 16]>::try_from(manifest.digest.as_slice())
        .map_err(|_| format!("a digest of {} bytes", manifest.digest.len()))?;
    if manifest.epoch == 0 || manifest.files.is_empty() || manifest.files.len() > MAX_FILES {
        return Err(format!(
            "a manifest of window {} with {} files",
            manifest.epoch,
            manifest.files.len()
        ));
    }
    let mut names = std::collections::BTreeSet::new();
    for f in &manifest.files {
        let plain = !f.name.is_empty()
            && f.name.len() <= 255
            && f.name != "."
            && f.name != ".."
            && !f.name.starts_with(MARKER)
            && !f.name.contains(['/', '\\', '\0']);
        if !plain || !names.insert(f.name.as_str()) {
            return Err(format!("a checkpoint file named {:?}", f.name));
        }
    }
    Ok(CheckpointMark { epoch: Epoch(manifest.epoch), digest: u128::from_le_bytes(digest) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(names: &[&str]) -> v1::CheckpointManifest {
        v1::CheckpointManifest {
            epoch: 7,
            window_ts: 1,
            digest: vec![0; 16],
            files: names
                .iter()
                .map(|n| v1::CheckpointFile { name: n.to_string(), size: 1 })
                .collect(),
        }
    }

    #[test]
    fn manifests_naming_paths_outside_the_directory_are_refused() {
        assert!(check_manifest(&manifest(&["CURRENT", "000012.sst"])).is_ok());
        for bad in ["../x", "a/b", "..", ".", "", "SEALDB_CHECKPOINT", "a\0"] {
            assert!(check_manifest(&manifest(&["CURRENT", bad])).is_err(), "{bad:?}");
        }
        assert!(check_manifest(&manifest(&["CURRENT", "CURRENT"])).is_err(), "twice");
        assert!(check_manifest(&manifest(&[])).is_err(), "no files");
        let short = v1::CheckpointManifest { digest: vec![1], ..manifest(&["CURRENT"]) };
        assert!(check_manifest(&short).is_err(), "digest length");
    }

    #[test]
    fn a_transfer_cut_short_is_removed_and_a_complete_one_installed() {
        let dir = tempfile::tempdir().unwrap();
        let storage = dir.path().join("rocksdb");
        std::fs::create_dir_all(&storage).unwrap();
        std::fs::write(storage.join("old"), b"old").unwrap();
        let incoming = beside(&storage, "incoming");

        // No marker: removed, the storage untouched.
        std::fs::create_dir_all(&incoming).unwrap();
        std::fs::write(incoming.join("partial.sst"), b"half").unwrap();
        assert_eq!(install_pending(&storage).unwrap(), None);
        assert!(!incoming.exists());
        assert!(storage.join("old").exists());

        // A marker: the storage replaced, and the marker read back.
        std::fs::create_dir_all(&incoming).unwrap();
        std::fs::write(incoming.join("new.sst"), b"new").unwrap();
        let expected = CheckpointMark { epoch: Epoch(42), digest: 0xabc };
        std::fs::write(incoming.join(MARKER), expected.encode()).unwrap();
        assert_eq!(install_pending(&storage).unwrap(), Some(expected));
        assert!(!incoming.exists());
        assert!(!storage.join("old").exists());
        assert!(storage.join("new.sst").exists());
        // Until `installed` removes the marker, a restart checks again.
        assert_eq!(install_pending(&storage).unwrap(), Some(expected));
    }
}
