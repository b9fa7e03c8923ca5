//! [`WindowLog`]: the durable, append-only log of sealed windows. The source of truth.
//!
//! One file, `windows.log`, of framed records, one per window:
//!
//! ```text
//!   file    = MAGIC record* zero*
//!   record  = len: u32 LE | crc32(body): u32 LE | body (len bytes)
//!   body    = epoch: u64 | ts: u64 | count: u32 | entry*          (integers little-endian)
//!   entry   = client_id: u128 | nparts: u16 | shard: u32 * nparts | plen: u32 | payload
//! ```
//!
//! [`WindowLog::append`] writes one record and fsyncs once (group commit: one fsync covers
//! every entry of the window). Nothing is applied or acknowledged before it returns.
//!
//! The file is grown ahead of the records, up to [`PREALLOCATE`] bytes at a time, by writing zeros
//! and syncing the file's size and blocks once. Appends then overwrite blocks the file
//! already has, so their `fdatasync` writes data only: without a size or block change there
//! is no filesystem journal commit, which would also wait for other files' writes (the
//! shards' RocksDB files on the same disk). A zero frame (a record length of 0, which no
//! window has) marks the end of the records.
//!
//! On open, records are read back in order. A crash during an append leaves a *torn tail*: a
//! last record that is cut short or fails its checksum, with nothing but zeros (or the end of
//! the file) after it. That window was never acknowledged, so it is cut off. A bad record with
//! data after it is not a torn write but damage, and the log refuses to open rather than
//! silently drop acknowledged windows. Windows must be consecutive with strictly increasing
//! timestamps, or the log is refused as corrupt too.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use clock::Epoch;
use clock::Timestamp;

use crate::error::SequencerError;
use crate::ids::{ClientId, ShardId};
use crate::window::{Entry, Window};

const MAGIC: &[u8; 16] = b"sealdb-windows-1";
const FRAME: usize = 8;
const FILE_NAME: &str = "windows.log";

/// The most the file is grown by at once, with zeros, when an append would pass its end. It
/// grows by its own length (at least 64 KiB) up to this: under a load of a few MB of windows
/// per second, one growth and one sync of the file's metadata every second or so, instead of
/// one per window.
pub const PREALLOCATE: u64 = 8 << 20;

/// The durable log of sealed windows.
#[derive(Debug)]
pub struct WindowLog {
    path: PathBuf,
    file: File,
    /// `LOCK` in the log's directory, locked exclusively while the log is open.
    _lock: File,
    /// What readers on other threads need: where windows start, and the durable end.
    reader: LogReader,
    last: Option<(Epoch, Timestamp)>,
    /// Where the next record goes: the end of the records.
    end: u64,
    /// The file's length: zeros from `end` to here.
    allocated: u64,
}

impl WindowLog {
    /// Opens (or creates) the log in `dir` and returns it with every window it holds, oldest
    /// first. A torn last record is cut off.
    pub fn open(dir: impl AsRef<Path>) -> Result<(WindowLog, Vec<Window>), SequencerError> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(|e| io_error(dir, e))?;
        let lock = lock_dir(dir)?;
        let path = dir.join(FILE_NAME);
        let io = |e| io_error(&path, e);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        if len == 0 {
            file.write_all(MAGIC).map_err(io)?;
            file.sync_all().map_err(io)?;
            File::open(dir).and_then(|d| d.sync_all()).map_err(|e| io_error(dir, e))?;
        }
        let Records { windows, end, torn, index } = read_all(&path, &mut file)?;
        if torn {
            tracing::warn!(path = %path.display(), end, "cutting off a torn last window");
            file.set_len(end).map_err(io)?;
            file.sync_all().map_err(io)?;
        }
        let allocated = file.metadata().map_err(io)?.len();
        let last = windows.last().map(|w| (w.epoch, w.ts));
        let reader = LogReader {
            path: path.clone(),
            index: Arc::new(RwLock::new(index)),
            durable_end: Arc::new(AtomicU64::new(end)),
        };
        Ok((WindowLog { path, file, _lock: lock, reader, last, end, allocated }, windows))
    }

    /// Where the records end (the file goes on with preallocated zeros).
    pub fn end(&self) -> u64 {
        self.end
    }

    /// The last window in the log.
    pub fn last(&self) -> Option<(Epoch, Timestamp)> {
        self.last
    }

    /// Appends `window` and makes it durable (one fsync). It must follow the last window:
    /// the next epoch and a later timestamp.
    pub fn append(&mut self, window: &Window) -> Result<(), SequencerError> {
        if let Some((epoch, ts)) = self.last
            && (window.epoch != epoch.next() || window.ts <= ts)
        {
            return Err(SequencerError::OutOfOrder {
                epoch: window.epoch,
                ts: window.ts,
                last_epoch: epoch,
                last_ts: ts,
            });
        }
        let body = encode(window);
        let mut record = Vec::with_capacity(FRAME + body.len());
        record.extend_from_slice(&(body.len() as u32).to_le_bytes());
        record.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
        record.extend_from_slice(&body);
        let end = self.end + record.len() as u64;
        if end > self.allocated {
            self.grow(end + self.allocated.clamp(64 << 10, PREALLOCATE))?;
        }
        let io = |e| io_error(&self.path, e);
        self.file.write_all_at(&record, self.end).map_err(io)?;
        self.file.sync_data().map_err(io)?;
        if indexed(window.epoch, self.last.is_none()) {
            let mut index = self.reader.index.write().unwrap_or_else(|e| e.into_inner());
            index.push((window.epoch, self.end));
        }
        self.reader.durable_end.store(end, Ordering::Release);
        self.end = end;
        self.last = Some((window.epoch, window.ts));
        Ok(())
    }

    /// Writes zeros up to `len` and syncs them with the file's new size, so that records
    /// written there later change no metadata.
    fn grow(&mut self, len: u64) -> Result<(), SequencerError> {
        const CHUNK: usize = 1 << 20;
        let zeros = vec![0u8; CHUNK];
        let io = |e| io_error(&self.path, e);
        let mut at = self.allocated;
        while at < len {
            let n = (len - at).min(CHUNK as u64) as usize;
            self.file.write_all_at(&zeros[..n], at).map_err(io)?;
            at += n as u64;
        }
        self.file.sync_all().map_err(io)?;
        self.allocated = len;
        Ok(())
    }

    /// Every window from `from` on, read back from the file (for a subscriber catching up).
    pub fn read_from(&self, from: Epoch) -> Result<Vec<Window>, SequencerError> {
        self.reader.read(from, usize::MAX, usize::MAX)
    }

    /// A reader of this log's durable windows, for other threads.
    pub fn reader(&self) -> LogReader {
        self.reader.clone()
    }
}

/// One window in this many is indexed by where its record starts, so a reader from an epoch
/// starts at most this many records before it.
const INDEX_EVERY: u64 = 256;

/// Whether the record of the window at `epoch` is in the index: the first window's, then
/// every [`INDEX_EVERY`]th.
fn indexed(epoch: Epoch, first: bool) -> bool {
    first || epoch.0.is_multiple_of(INDEX_EVERY)
}

/// Reads durable windows of a [`WindowLog`] from an epoch on, on any thread, while the log is
/// appended to. It reads only what the log has made durable, and from the indexed record at
/// or before the epoch asked for, not from the start of the file.
#[derive(Debug, Clone)]
pub struct LogReader {
    path: PathBuf,
    /// The first window's record start, then every [`INDEX_EVERY`]th window's, in order.
    index: Arc<RwLock<Vec<(Epoch, u64)>>>,
    /// Where the durable records end.
    durable_end: Arc<AtomicU64>,
}

impl LogReader {
    /// Up to `max` durable windows from `from` on, in order, stopping early once they hold
    /// `max_bytes` of records (at least one window is read if there is one). Fewer than `max`
    /// only at the end of the log or at `max_bytes`.
    pub fn read(
        &self,
        from: Epoch,
        max: usize,
        max_bytes: usize,
    ) -> Result<Vec<Window>, SequencerError> {
        let end = self.durable_end.load(Ordering::Acquire);
        let start = {
            let index = self.index.read().unwrap_or_else(|e| e.into_inner());
            let at = index.partition_point(|(epoch, _)| *epoch <= from);
            at.checked_sub(1).map_or(MAGIC.len() as u64, |i| index[i].1)
        };
        let io = |e| io_error(&self.path, e);
        let file = File::open(&self.path).map_err(io)?;
        let mut file = io::BufReader::with_capacity(1 << 16, file);
        file.seek(SeekFrom::Start(start)).map_err(io)?;
        let (mut at, mut bytes, mut windows) = (start, 0usize, Vec::new());
        while at < end && windows.len() < max && bytes < max_bytes {
            let mut frame = [0u8; FRAME];
            file.read_exact(&mut frame).map_err(io)?;
            let len = u32::from_le_bytes(frame[..4].try_into().expect("4 bytes")) as usize;
            let mut record = frame.to_vec();
            record.resize(FRAME + len, 0);
            file.read_exact(&mut record[FRAME..]).map_err(io)?;
            let corrupt = |what: String| SequencerError::Corrupt {
                path: self.path.clone(),
                offset: at,
                what,
            };
            let (window, _) = match record_at(&record) {
                Some(Ok(decoded)) => decoded,
                Some(Err(what)) => return Err(corrupt(what)),
                None => return Err(corrupt("a durable record does not check".into())),
            };
            at += record.len() as u64;
            if window.epoch >= from {
                bytes += record.len();
                windows.push(window);
            }
        }
        Ok(windows)
    }
}

fn io_error(path: &Path, source: io::Error) -> SequencerError {
    SequencerError::Io { path: path.to_path_buf(), source }
}

/// What [`read_all`] finds in a log file.
struct Records {
    /// Every whole window, in order.
    windows: Vec<Window>,
    /// Where the first window's record starts, then every [`INDEX_EVERY`]th window's.
    index: Vec<(Epoch, u64)>,
    /// Where the whole records end.
    end: u64,
    /// True if a torn record follows them (not just zeros).
    torn: bool,
}

/// How many epochs past the first bad record [`read_all`] looks for a valid record, to tell
/// damage from a torn tail.
const DAMAGE_HORIZON: u64 = 16;

/// Reads every whole record, up to the zero frame that marks the end, or the end of the file.
///
/// At the first record that is not whole and valid: if only zeros follow, the records end
/// there. Otherwise it is damage if a valid record of one of the next epochs follows it
/// (acknowledged windows would be lost by cutting), and a torn tail if not. A torn append
/// can leave any subset of its pages on disk, so even a zero frame may have parts of its
/// record after it.
fn read_all(path: &Path, file: &mut File) -> Result<Records, SequencerError> {
    let corrupt = |offset: u64, what: String| SequencerError::Corrupt {
        path: path.to_path_buf(),
        offset,
        what,
    };
    let io = |e| io_error(path, e);
    let mut bytes = Vec::new();
    file.seek(SeekFrom::Start(0)).map_err(io)?;
    file.read_to_end(&mut bytes).map_err(io)?;
    if !bytes.starts_with(MAGIC) {
        return Err(corrupt(0, "not a sealdb window log".into()));
    }
    let mut offset = MAGIC.len();
    let mut windows: Vec<Window> = Vec::new();
    let mut index = Vec::new();
    while offset < bytes.len() {
        let next = windows.last().map_or(Epoch(1), |w| w.epoch.next());
        let rest = &bytes[offset..];
        let (window, len) = match record_at(rest) {
            Some(Ok(record)) => record,
            Some(Err(what)) => return Err(corrupt(offset as u64, what)),
            None => {
                let end = offset as u64;
                if rest.iter().all(|&b| b == 0) {
                    return Ok(Records { windows, end, torn: false, index });
                }
                if valid_record_in(rest, next) {
                    return Err(corrupt(end, "a bad record before valid ones".into()));
                }
                return Ok(Records { windows, end, torn: true, index });
            }
        };
        if let Some(prev) = windows.last()
            && (window.epoch != next || window.ts <= prev.ts)
        {
            return Err(corrupt(
                offset as u64,
                format!(
                    "window {} at {} follows window {} at {}",
                    window.epoch, window.ts, prev.epoch, prev.ts
                ),
            ));
        }
        if indexed(window.epoch, windows.is_empty()) {
            index.push((window.epoch, offset as u64));
        }
        windows.push(window);
        offset += len;
    }
    Ok(Records { windows, end: offset as u64, torn: false, index })
}

/// The record at the start of `bytes` and its length with the frame: `None` if there is no
/// whole record with a matching checksum there, an error if there is one but it does not
/// decode.
fn record_at(bytes: &[u8]) -> Option<Result<(Window, usize), String>> {
    let (frame, rest) = bytes.split_first_chunk::<FRAME>()?;
    let len = u32::from_le_bytes(frame[..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(frame[4..].try_into().expect("4 bytes"));
    let body = rest.get(..len)?;
    if len == 0 || crc32fast::hash(body) != crc {
        return None;
    }
    Some(decode(body).map(|window| (window, FRAME + len)))
}

/// True if `bytes` holds, anywhere, a valid record of an epoch from `first` to
/// [`DAMAGE_HORIZON`] epochs after it.
fn valid_record_in(bytes: &[u8], first: Epoch) -> bool {
    // A body starts with its epoch; look for those eight bytes, then check the frame before.
    (FRAME..bytes.len().saturating_sub(8)).any(|at| {
        let epoch = u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
        (first.0..first.0 + DAMAGE_HORIZON).contains(&epoch)
            && matches!(record_at(&bytes[at - FRAME..]), Some(Ok((w, _))) if w.epoch.0 == epoch)
    })
}

/// Locks `dir/LOCK` exclusively for as long as the returned file is open (an advisory
/// `flock`, released when the file is closed, by a crash too), or refuses if another process
/// or another open log holds it. The log locks its directory; a node locks its data directory.
pub fn lock_dir(dir: &Path) -> Result<File, SequencerError> {
    let path = dir.join("LOCK");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| io_error(&path, e))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(SequencerError::Locked { path }),
        Err(std::fs::TryLockError::Error(e)) => Err(io_error(&path, e)),
    }
}

fn encode(w: &Window) -> Vec<u8> {
    let size: usize = w.entries.iter().map(|e| e.size() + 6).sum();
    let mut out = Vec::with_capacity(20 + size);
    out.extend_from_slice(&w.epoch.0.to_le_bytes());
    out.extend_from_slice(&w.ts.as_u64().to_le_bytes());
    out.extend_from_slice(&(w.entries.len() as u32).to_le_bytes());
    for e in &w.entries {
        out.extend_from_slice(&e.client_id.0.to_le_bytes());
        out.extend_from_slice(&(e.participants.len() as u16).to_le_bytes());
        for p in &e.participants {
            out.extend_from_slice(&p.0.to_le_bytes());
        }
        out.extend_from_slice(&(e.payload.len() as u32).to_le_bytes());
        out.extend_from_slice(&e.payload);
    }
    out
}

/// A cursor over a record body.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let (head, rest) = self.0.split_first_chunk::<N>().ok_or("record body too short")?;
        self.0 = rest;
        Ok(*head)
    }

    fn bytes(&mut self, n: usize) -> Result<&[u8], String> {
        if self.0.len() < n {
            return Err("record body too short".into());
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
}

fn decode(body: &[u8]) -> Result<Window, String> {
    let mut r = Reader(body);
    let epoch = Epoch(u64::from_le_bytes(r.take()?));
    let ts = Timestamp::from_u64(u64::from_le_bytes(r.take()?));
    let count = u32::from_le_bytes(r.take()?);
    let mut entries = Vec::with_capacity(count.min(1 << 16) as usize);
    for _ in 0..count {
        let client_id = ClientId(u128::from_le_bytes(r.take()?));
        let nparts = u16::from_le_bytes(r.take()?);
        let mut participants = Vec::with_capacity(nparts as usize);
        for _ in 0..nparts {
            participants.push(ShardId(u32::from_le_bytes(r.take()?)));
        }
        let plen = u32::from_le_bytes(r.take()?) as usize;
        let payload: Arc<[u8]> = r.bytes(plen)?.into();
        entries.push(Entry { client_id, participants, payload });
    }
    if !r.0.is_empty() {
        return Err("trailing bytes in record".into());
    }
    Ok(Window { epoch, ts, entries })
}
