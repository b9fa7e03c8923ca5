//! [`WindowLog`]: the durable, append-only log of sealed windows. The source of truth.
//!
//! Segment files, `windows-<first epoch, 20 digits>.log`, each of framed records, one per
//! window, the windows of all segments consecutive:
//!
//! ```text
//!   segment = MAGIC record* zero*
//!   record  = len: u32 LE | crc32(body): u32 LE | body (len bytes)
//!   body    = epoch: u64 | ts: u64 | count: u32 | entry*          (integers little-endian)
//!   entry   = client_id: u128 | nparts: u16 | shard: u32 * nparts | plen: u32 | payload
//! ```
//!
//! [`WindowLog::append`] writes one record and fsyncs once (group commit: one fsync covers
//! every entry of the window). Nothing is applied or acknowledged before it returns. Once the
//! last segment passes [`SEGMENT_BYTES`], the next window starts a new one (created, and its
//! directory entry synced, before the window is written there).
//!
//! [`WindowLog::truncate_below`] deletes whole segments whose windows are all below an epoch
//! (what every consumer has made durable); a read from below the first kept window gets
//! [`SequencerError::Truncated`]. Each segment is indexed by epoch (every [`INDEX_EVERY`]th
//! window's record start), so a reader from epoch `e` starts at most that many records before
//! it. A log of one file `windows.log` (before segments) opens as the first segment.
//!
//! A segment is grown ahead of the records, up to [`PREALLOCATE`] bytes at a time, by writing
//! zeros and syncing the file's size and blocks once. Appends then overwrite blocks the file
//! already has, so their `fdatasync` writes data only: without a size or block change there
//! is no filesystem journal commit, which would also wait for other files' writes (the
//! shards' RocksDB files on the same disk). A zero frame (a record length of 0, which no
//! window has) marks the end of the records. A full segment is cut to its records' end.
//!
//! On open, records are read back in order. A crash during an append leaves a *torn tail*: a
//! last record that is cut short or fails its checksum, with nothing but zeros (or the end of
//! the file) after it. That window was never acknowledged, so it is cut off. A bad record with
//! data after it, or a torn record in any but the last segment, is not a torn write but
//! damage, and the log refuses to open rather than silently drop acknowledged windows. Windows
//! must be consecutive with strictly increasing timestamps, across segments too, or the log is
//! refused as corrupt.

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
/// The log's one file before it was kept in segments: opened as the first segment.
const LEGACY_FILE: &str = "windows.log";

/// The most the file is grown by at once, with zeros, when an append would pass its end. It
/// grows by its own length (at least 64 KiB) up to this: under a load of a few MB of windows
/// per second, one growth and one sync of the file's metadata every second or so, instead of
/// one per window.
pub const PREALLOCATE: u64 = 8 << 20;

/// A segment holding this many bytes of records is full: the next window starts a new one.
pub const SEGMENT_BYTES: u64 = 64 << 20;

/// The file name of the segment whose first window is `first`.
fn segment_name(first: Epoch) -> String {
    format!("windows-{:020}.log", first.0)
}

/// The first epoch a segment's file name says, or `None` if it is not a segment's name.
fn segment_first(name: &str) -> Option<Epoch> {
    let digits = name.strip_prefix("windows-")?.strip_suffix(".log")?;
    (digits.len() == 20).then(|| digits.parse().ok().map(Epoch)).flatten()
}

/// One segment, as readers see it.
#[derive(Debug)]
struct Segment {
    path: PathBuf,
    /// Its first window (for an empty last segment, the next window's epoch).
    first: Epoch,
    /// Where its first window's record starts, then every [`INDEX_EVERY`]th window's.
    index: RwLock<Vec<(Epoch, u64)>>,
    /// Where its durable records end.
    end: AtomicU64,
}

/// The durable log of sealed windows.
#[derive(Debug)]
pub struct WindowLog {
    dir: PathBuf,
    /// The last segment's file, appended to.
    file: File,
    /// `LOCK` in the log's directory, locked exclusively while the log is open.
    _lock: File,
    /// What readers on other threads need: the segments, where windows start, and the
    /// durable ends.
    reader: LogReader,
    last: Option<(Epoch, Timestamp)>,
    /// Where the next record goes in the last segment: the end of its records.
    end: u64,
    /// The last segment's length: zeros from `end` to here.
    allocated: u64,
    /// A segment holding this many bytes is full.
    segment_bytes: u64,
}

impl WindowLog {
    /// Opens (or creates) the log in `dir` and returns it with every window it holds, oldest
    /// first. A torn last record is cut off.
    pub fn open(dir: impl AsRef<Path>) -> Result<(WindowLog, Vec<Window>), SequencerError> {
        WindowLog::open_with(dir, SEGMENT_BYTES)
    }

    /// Creates an empty log in `dir` (which holds no log yet) whose first window will be
    /// `first`: a copy of a log's windows from there on, as a backup writes it.
    pub fn create_at(dir: impl AsRef<Path>, first: Epoch) -> Result<WindowLog, SequencerError> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(|e| io_error(dir, e))?;
        if !segment_paths(dir)?.is_empty() {
            return Err(io_error(
                dir,
                std::io::Error::new(std::io::ErrorKind::AlreadyExists, "it holds a log already"),
            ));
        }
        create_segment(dir, &dir.join(segment_name(first)))?;
        Ok(WindowLog::open(dir)?.0)
    }

    /// [`WindowLog::open`] with segments of `segment_bytes` (tests use small ones).
    pub fn open_with(
        dir: impl AsRef<Path>,
        segment_bytes: u64,
    ) -> Result<(WindowLog, Vec<Window>), SequencerError> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(|e| io_error(dir, e))?;
        let lock = lock_dir(dir)?;
        remove_unfinished_segments(dir)?;
        let mut paths = segment_paths(dir)?;
        if paths.is_empty() {
            let path = dir.join(segment_name(Epoch(1)));
            create_segment(dir, &path)?;
            paths.push((Epoch(1), path));
        }
        let mut windows: Vec<Window> = Vec::new();
        let mut segments = Vec::new();
        let count = paths.len();
        let mut file = None;
        let mut end = 0;
        for (i, (named, path)) in paths.into_iter().enumerate() {
            let io = |e| io_error(&path, e);
            let mut f = OpenOptions::new().read(true).write(true).open(&path).map_err(io)?;
            let prev = windows.last().map(|w| (w.epoch, w.ts));
            let records = read_all(&path, &mut f, named, prev)?;
            let last = i + 1 == count;
            if records.torn && !last {
                return Err(SequencerError::Corrupt {
                    path,
                    offset: records.end,
                    what: "a torn record in a segment that is not the last".into(),
                });
            }
            if records.torn {
                tracing::warn!(path = %path.display(), end = records.end, "cutting off a torn last window");
                f.set_len(records.end).map_err(io)?;
                f.sync_all().map_err(io)?;
            }
            let first = records.windows.first().map_or(named, |w| w.epoch);
            if first != named && !path.ends_with(LEGACY_FILE) {
                return Err(SequencerError::Corrupt {
                    path,
                    offset: MAGIC.len() as u64,
                    what: format!("its first window is {first}, its name says {named}"),
                });
            }
            end = records.end;
            segments.push(Arc::new(Segment {
                path,
                first,
                index: RwLock::new(records.index),
                end: AtomicU64::new(records.end),
            }));
            windows.extend(records.windows);
            if last {
                file = Some(f);
            }
        }
        let file = file.expect("at least one segment");
        let allocated = file.metadata().map_err(|e| io_error(dir, e))?.len();
        let last = windows.last().map(|w| (w.epoch, w.ts));
        let reader = LogReader { segments: Arc::new(RwLock::new(segments)) };
        let log = WindowLog {
            dir: dir.to_path_buf(),
            file,
            _lock: lock,
            reader,
            last,
            end,
            allocated,
            segment_bytes: segment_bytes.max(MAGIC.len() as u64 + 1),
        };
        Ok((log, windows))
    }

    /// Where the records of the last segment end (it goes on with preallocated zeros).
    pub fn end(&self) -> u64 {
        self.end
    }

    /// The last window in the log.
    pub fn last(&self) -> Option<(Epoch, Timestamp)> {
        self.last
    }

    /// The first window the log still holds (the one after the truncation point), or the next
    /// window's epoch if it holds none.
    pub fn first(&self) -> Epoch {
        self.reader.first()
    }

    /// Bytes of the log's segment files (their records and preallocated zeros).
    pub fn bytes(&self) -> u64 {
        let segments = self.reader.segments.read().unwrap_or_else(|e| e.into_inner());
        let closed: u64 =
            segments[..segments.len() - 1].iter().map(|s| s.end.load(Ordering::Acquire)).sum();
        closed + self.allocated
    }

    /// Appends `window` and makes it durable (one fsync). It must follow the last window:
    /// the next epoch and a later timestamp.
    pub fn append(&mut self, window: &Window) -> Result<(), SequencerError> {
        // An empty log's first window is the one its first segment is named after.
        let (epoch, ts) =
            self.last.unwrap_or((Epoch(self.first().0.saturating_sub(1)), Timestamp::ZERO));
        if window.epoch != epoch.next() || (self.last.is_some() && window.ts <= ts) {
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
        if self.end > MAGIC.len() as u64 && self.end + record.len() as u64 > self.segment_bytes {
            self.roll(window.epoch)?;
        }
        let end = self.end + record.len() as u64;
        if end > self.allocated {
            self.grow(end + self.allocated.clamp(64 << 10, PREALLOCATE))?;
        }
        let segment = self.reader.last_segment();
        let io = |e| io_error(&segment.path, e);
        self.file.write_all_at(&record, self.end).map_err(io)?;
        self.file.sync_data().map_err(io)?;
        if indexed(window.epoch, self.end == MAGIC.len() as u64) {
            let mut index = segment.index.write().unwrap_or_else(|e| e.into_inner());
            index.push((window.epoch, self.end));
        }
        segment.end.store(end, Ordering::Release);
        self.end = end;
        self.last = Some((window.epoch, window.ts));
        Ok(())
    }

    /// Closes the last segment (cut to its records) and starts a new one at `first`.
    fn roll(&mut self, first: Epoch) -> Result<(), SequencerError> {
        let closing = self.reader.last_segment();
        let io = |e| io_error(&closing.path, e);
        self.file.set_len(self.end).map_err(io)?;
        self.file.sync_all().map_err(io)?;
        let path = self.dir.join(segment_name(first));
        self.file = create_segment(&self.dir, &path)?;
        self.end = MAGIC.len() as u64;
        self.allocated = self.end;
        let segment =
            Segment { path, first, index: RwLock::new(Vec::new()), end: AtomicU64::new(self.end) };
        let mut segments = self.reader.segments.write().unwrap_or_else(|e| e.into_inner());
        segments.push(Arc::new(segment));
        Ok(())
    }

    /// Deletes every segment whose windows are all below `epoch`, but never the one holding
    /// the last window (nor any after it). Returns how many went. Readers from below the new
    /// first window get [`SequencerError::Truncated`]; one reading a deleted segment already
    /// goes on.
    pub fn truncate_below(&mut self, epoch: Epoch) -> Result<usize, SequencerError> {
        // A reopened log learns where it goes on (the next epoch, and the timestamp to pass)
        // from its last window: an empty last segment (a roll that a crash cut short) must not
        // be all that is left.
        let Some((last, _)) = self.last else { return Ok(0) };
        let epoch = epoch.min(last);
        let doomed: Vec<Arc<Segment>> = {
            let mut segments = self.reader.segments.write().unwrap_or_else(|e| e.into_inner());
            let keep_from = segments.iter().skip(1).take_while(|s| s.first <= epoch).count();
            segments.drain(..keep_from).collect()
        };
        // A file that will not go costs disk, not correctness: readers already start after
        // it, and a reopened log reads it again as its (consecutive) first segment.
        for segment in &doomed {
            if let Err(e) = std::fs::remove_file(&segment.path) {
                tracing::warn!(path = %segment.path.display(), error = %e, "a truncated segment stays");
            }
        }
        if !doomed.is_empty() {
            if let Err(e) = File::open(&self.dir).and_then(|d| d.sync_all()) {
                tracing::warn!(dir = %self.dir.display(), error = %e, "syncing the log's directory");
            }
            tracing::debug!(segments = doomed.len(), first = %self.first(), "log truncated");
        }
        Ok(doomed.len())
    }

    /// Writes zeros up to `len` and syncs them with the file's new size, so that records
    /// written there later change no metadata.
    fn grow(&mut self, len: u64) -> Result<(), SequencerError> {
        const CHUNK: usize = 1 << 20;
        let zeros = vec![0u8; CHUNK];
        let path = self.reader.last_segment().path.clone();
        let io = |e| io_error(&path, e);
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

    /// Every window from `from` on, read back from the files (for a subscriber catching up).
    pub fn read_from(&self, from: Epoch) -> Result<Vec<Window>, SequencerError> {
        self.reader.read(from, usize::MAX, usize::MAX)
    }

    /// A reader of this log's durable windows, for other threads.
    pub fn reader(&self) -> LogReader {
        self.reader.clone()
    }
}

/// The log's segment files in `dir`, by first epoch (a log of one legacy file: that file).
fn segment_paths(dir: &Path) -> Result<Vec<(Epoch, PathBuf)>, SequencerError> {
    let mut paths = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| io_error(dir, e))? {
        let entry = entry.map_err(|e| io_error(dir, e))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if let Some(first) = segment_first(&name) {
            paths.push((first, entry.path()));
        } else if name == LEGACY_FILE {
            paths.push((Epoch(1), entry.path()));
        }
    }
    paths.sort();
    Ok(paths)
}

/// Removes what a process killed in [`create_segment`] left: a segment's file under its
/// `.new` name, never renamed into place, so it holds no window. Called with the log locked.
fn remove_unfinished_segments(dir: &Path) -> Result<(), SequencerError> {
    for entry in std::fs::read_dir(dir).map_err(|e| io_error(dir, e))? {
        let entry = entry.map_err(|e| io_error(dir, e))?;
        let name = entry.file_name();
        let unfinished = name.to_str().and_then(|n| n.strip_suffix(".new"));
        if unfinished.is_some_and(|n| segment_first(n).is_some()) {
            let path = entry.path();
            tracing::info!(path = %path.display(), "removing a segment whose creation was cut short");
            std::fs::remove_file(&path).map_err(|e| io_error(&path, e))?;
        }
    }
    Ok(())
}

/// Creates the segment file `path` with its magic, synced with its directory entry. The file
/// is written under a name no segment has (`.log.new`) and renamed into place, so a process
/// killed in the middle leaves no segment without its magic (one such, empty, made every
/// later open refuse the log); a leftover `.new` file is removed at the next open.
fn create_segment(dir: &Path, path: &Path) -> Result<File, SequencerError> {
    let io = |e| io_error(path, e);
    if path.exists() {
        return Err(io(io::Error::new(io::ErrorKind::AlreadyExists, "segment exists")));
    }
    let new = path.with_extension("log.new");
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&new)
        .map_err(|e| io_error(&new, e))?;
    file.write_all(MAGIC).map_err(io)?;
    file.sync_all().map_err(io)?;
    std::fs::rename(&new, path).map_err(io)?;
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| io_error(dir, e))?;
    Ok(file)
}

/// One window in this many is indexed by where its record starts, so a reader from an epoch
/// starts at most this many records before it.
const INDEX_EVERY: u64 = 256;

/// Whether the record of the window at `epoch` is in its segment's index: the segment's
/// first window's, then every [`INDEX_EVERY`]th.
fn indexed(epoch: Epoch, first: bool) -> bool {
    first || epoch.0.is_multiple_of(INDEX_EVERY)
}

/// Reads durable windows of a [`WindowLog`] from an epoch on, on any thread, while the log is
/// appended to and truncated. It reads only what the log has made durable, and from the
/// indexed record at or before the epoch asked for, not from the start of a segment.
#[derive(Debug, Clone)]
pub struct LogReader {
    /// The segments, oldest first; never empty.
    segments: Arc<RwLock<Vec<Arc<Segment>>>>,
}

impl LogReader {
    fn last_segment(&self) -> Arc<Segment> {
        let segments = self.segments.read().unwrap_or_else(|e| e.into_inner());
        segments.last().expect("a log has a segment").clone()
    }

    /// The first window the log holds (or the next one's epoch if none).
    pub fn first(&self) -> Epoch {
        let segments = self.segments.read().unwrap_or_else(|e| e.into_inner());
        segments.first().expect("a log has a segment").first
    }

    /// Copies the log's durable records into the directory `to` (created; segment files of
    /// the same names, synced), for a backup: it opens as a log holding every window that was
    /// durable when each segment was copied. Returns the first window copied.
    pub fn copy_to(&self, to: &Path) -> Result<Epoch, SequencerError> {
        let segments: Vec<Arc<Segment>> =
            self.segments.read().unwrap_or_else(|e| e.into_inner()).clone();
        std::fs::create_dir_all(to).map_err(|e| io_error(to, e))?;
        for segment in &segments {
            let end = segment.end.load(Ordering::Acquire);
            let name = segment.path.file_name().expect("a segment has a file name");
            let target = to.join(name);
            let io = |e| io_error(&target, e);
            let source = File::open(&segment.path).map_err(|e| io_error(&segment.path, e))?;
            let mut out = File::create(&target).map_err(io)?;
            io::copy(&mut source.take(end), &mut out).map_err(io)?;
            out.sync_all().map_err(io)?;
        }
        File::open(to).and_then(|d| d.sync_all()).map_err(|e| io_error(to, e))?;
        Ok(segments[0].first)
    }

    /// Up to `max` durable windows from `from` on, in order, stopping early once they hold
    /// `max_bytes` of records (at least one window is read if there is one). Fewer than `max`
    /// only at the end of the log or at `max_bytes`. Refused with
    /// [`SequencerError::Truncated`] if `from` is below the first window kept.
    pub fn read(
        &self,
        from: Epoch,
        max: usize,
        max_bytes: usize,
    ) -> Result<Vec<Window>, SequencerError> {
        let segments: Vec<Arc<Segment>> = {
            let segments = self.segments.read().unwrap_or_else(|e| e.into_inner());
            let first = segments[0].first;
            if from < first {
                return Err(SequencerError::Truncated { from, first });
            }
            let at = segments.partition_point(|s| s.first <= from).max(1) - 1;
            segments[at..].to_vec()
        };
        let (mut bytes, mut windows) = (0usize, Vec::new());
        for (i, segment) in segments.iter().enumerate() {
            if windows.len() >= max || bytes >= max_bytes {
                break;
            }
            let start = match i {
                0 => {
                    let index = segment.index.read().unwrap_or_else(|e| e.into_inner());
                    let at = index.partition_point(|(epoch, _)| *epoch <= from);
                    at.checked_sub(1).map_or(MAGIC.len() as u64, |i| index[i].1)
                }
                _ => MAGIC.len() as u64,
            };
            segment.read(start, from, max, max_bytes, &mut windows, &mut bytes)?;
        }
        Ok(windows)
    }
}

impl Segment {
    /// Reads this segment's durable records from `start`, adding the windows from `from` on
    /// to `windows` until there are `max` or they hold `max_bytes`.
    fn read(
        &self,
        start: u64,
        from: Epoch,
        max: usize,
        max_bytes: usize,
        windows: &mut Vec<Window>,
        bytes: &mut usize,
    ) -> Result<(), SequencerError> {
        let end = self.end.load(Ordering::Acquire);
        let io = |e| io_error(&self.path, e);
        let file = File::open(&self.path).map_err(io)?;
        let mut file = io::BufReader::with_capacity(1 << 16, file);
        file.seek(SeekFrom::Start(start)).map_err(io)?;
        let mut at = start;
        while at < end && windows.len() < max && *bytes < max_bytes {
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
                *bytes += record.len();
                windows.push(window);
            }
        }
        Ok(())
    }
}

fn io_error(path: &Path, source: io::Error) -> SequencerError {
    SequencerError::Io { path: path.to_path_buf(), source }
}

/// What [`read_all`] finds in a segment file.
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

/// Reads every whole record of a segment, up to the zero frame that marks the end, or the end
/// of the file; its windows must follow `prev` (the previous segment's last window), or
/// start at `named` (the epoch in its name) if it is the first segment kept.
///
/// At the first record that is not whole and valid: if only zeros follow, the records end
/// there. Otherwise it is damage if a valid record of one of the next epochs follows it
/// (acknowledged windows would be lost by cutting), and a torn tail if not. A torn append
/// can leave any subset of its pages on disk, so even a zero frame may have parts of its
/// record after it.
fn read_all(
    path: &Path,
    file: &mut File,
    named: Epoch,
    prev: Option<(Epoch, Timestamp)>,
) -> Result<Records, SequencerError> {
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
        let before = windows.last().map(|w| (w.epoch, w.ts)).or(prev);
        let next = before.map_or(named, |(e, _)| e.next());
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
        // The first window of the first segment kept may follow truncated ones.
        let follows = match before {
            None => true,
            Some((epoch, ts)) => window.epoch == epoch.next() && window.ts > ts,
        };
        if !follows {
            let (epoch, ts) = before.expect("checked");
            return Err(corrupt(
                offset as u64,
                format!("window {} at {} follows window {epoch} at {ts}", window.epoch, window.ts),
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
        entries.push(Entry { client_id, participants, payload, decoded: None });
    }
    if !r.0.is_empty() {
        return Err("trailing bytes in record".into());
    }
    Ok(Window { epoch, ts, entries })
}
