//! [`WindowLog`]: the durable, append-only log of sealed windows. The source of truth.
//!
//! One file, `windows.log`, of framed records, one per window:
//!
//! ```text
//!   file    = MAGIC record*
//!   record  = len: u32 LE | crc32(body): u32 LE | body (len bytes)
//!   body    = epoch: u64 | ts: u64 | count: u32 | entry*          (integers little-endian)
//!   entry   = client_id: u128 | nparts: u16 | shard: u32 * nparts | plen: u32 | payload
//! ```
//!
//! [`WindowLog::append`] writes one record and fsyncs once (group commit: one fsync covers
//! every entry of the window). Nothing is applied or acknowledged before it returns.
//!
//! On open, records are read back in order. A crash during an append leaves a *torn tail*: a
//! last record that is cut short or fails its checksum. That window was never acknowledged, so
//! it is cut off. A bad record with valid data after it is not a torn write but damage, and
//! the log refuses to open rather than silently drop acknowledged windows. Windows must be
//! consecutive with strictly increasing timestamps, or the log is refused as corrupt too.

use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
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

/// The durable log of sealed windows.
#[derive(Debug)]
pub struct WindowLog {
    path: PathBuf,
    file: File,
    last: Option<(Epoch, Timestamp)>,
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
        let (windows, good_len) = read_all(&path, &mut file)?;
        if good_len < file.metadata().map_err(io)?.len() {
            tracing::warn!(path = %path.display(), good_len, "cutting off a torn last window");
            file.set_len(good_len).map_err(io)?;
            file.sync_all().map_err(io)?;
        }
        file.seek(SeekFrom::End(0)).map_err(io)?;
        let last = windows.last().map(|w| (w.epoch, w.ts));
        Ok((WindowLog { path, file, last }, windows))
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
        let io = |e| io_error(&self.path, e);
        self.file.write_all(&record).map_err(io)?;
        self.file.sync_data().map_err(io)?;
        self.last = Some((window.epoch, window.ts));
        Ok(())
    }

    /// Every window from `from` on, read back from the file (for a subscriber catching up).
    pub fn read_from(&self, from: Epoch) -> Result<Vec<Window>, SequencerError> {
        let mut file = File::open(&self.path).map_err(|e| io_error(&self.path, e))?;
        let (mut windows, _) = read_all(&self.path, &mut file)?;
        windows.retain(|w| w.epoch >= from);
        Ok(windows)
    }
}

fn io_error(path: &Path, source: io::Error) -> SequencerError {
    SequencerError::Io { path: path.to_path_buf(), source }
}

/// Reads every whole record; returns the windows and the length of the good prefix.
fn read_all(path: &Path, file: &mut File) -> Result<(Vec<Window>, u64), SequencerError> {
    let corrupt = |offset: u64, what: String| SequencerError::Corrupt {
        path: path.to_path_buf(),
        offset,
        what,
    };
    let io = |e| io_error(path, e);
    let total = file.metadata().map_err(io)?.len();
    file.seek(SeekFrom::Start(0)).map_err(io)?;
    let mut reader = BufReader::new(&mut *file);
    let mut magic = [0u8; 16];
    reader.read_exact(&mut magic).map_err(io)?;
    if &magic != MAGIC {
        return Err(corrupt(0, "not a sealdb window log".into()));
    }
    let mut offset = MAGIC.len() as u64;
    let mut windows: Vec<Window> = Vec::new();
    while offset < total {
        let remaining = total - offset;
        let mut frame = [0u8; FRAME];
        if remaining < FRAME as u64 {
            break; // torn frame header
        }
        reader.read_exact(&mut frame).map_err(io)?;
        let len = u32::from_le_bytes(frame[..4].try_into().expect("4 bytes")) as u64;
        let crc = u32::from_le_bytes(frame[4..].try_into().expect("4 bytes"));
        if remaining < FRAME as u64 + len {
            break; // torn body
        }
        let mut body = vec![0u8; len as usize];
        reader.read_exact(&mut body).map_err(io)?;
        let end = offset + FRAME as u64 + len;
        if crc32fast::hash(&body) != crc {
            if end < total {
                return Err(corrupt(offset, "checksum mismatch before the end of the log".into()));
            }
            break; // torn last record
        }
        let window = decode(&body).map_err(|what| corrupt(offset, what))?;
        if let Some(prev) = windows.last()
            && (window.epoch != prev.epoch.next() || window.ts <= prev.ts)
        {
            return Err(corrupt(
                offset,
                format!(
                    "window {} at {} follows window {} at {}",
                    window.epoch, window.ts, prev.epoch, prev.ts
                ),
            ));
        }
        windows.push(window);
        offset = end;
    }
    Ok((windows, offset))
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
