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
use std::sync::Arc;

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
        let Records { windows, end, torn } = read_all(&path, &mut file)?;
        if torn {
            tracing::warn!(path = %path.display(), end, "cutting off a torn last window");
            file.set_len(end).map_err(io)?;
            file.sync_all().map_err(io)?;
        }
        let allocated = file.metadata().map_err(io)?.len();
        let last = windows.last().map(|w| (w.epoch, w.ts));
        Ok((WindowLog { path, file, last, end, allocated }, windows))
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
        let mut file = File::open(&self.path).map_err(|e| io_error(&self.path, e))?;
        let Records { mut windows, .. } = read_all(&self.path, &mut file)?;
        windows.retain(|w| w.epoch >= from);
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
    while offset < bytes.len() {
        let next = windows.last().map_or(Epoch(1), |w| w.epoch.next());
        let rest = &bytes[offset..];
        let (window, len) = match record_at(rest) {
            Some(Ok(record)) => record,
            Some(Err(what)) => return Err(corrupt(offset as u64, what)),
            None => {
                let end = offset as u64;
                if rest.iter().all(|&b| b == 0) {
                    return Ok(Records { windows, end, torn: false });
                }
                if valid_record_in(rest, next) {
                    return Err(corrupt(end, "a bad record before valid ones".into()));
                }
                return Ok(Records { windows, end, torn: true });
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
        windows.push(window);
        offset += len;
    }
    Ok(Records { windows, end: offset as u64, torn: false })
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
