//! [`LogStore`]: the sequencer group's raft log and vote, on disk.
//!
//! ```text
//!   DIR/raft.log    records: [len u32][crc32 u32][postcard(Record)] ...
//!                   Record = Append(entry) | Truncate(from index) | Purge(upto log id)
//!   DIR/vote        postcard(vote), replaced atomically (write, fsync, rename, fsync DIR)
//!   DIR/committed   postcard(log id), replaced the same way
//! ```
//!
//! openraft's contract, kept here: an append is reported flushed (`LogFlushed`) only after
//! the records are fsynced; the vote is fsynced before `save_vote` returns; writes are done
//! in the order they are asked for (one `&mut self` at a time). The entries live in memory as
//! well, for readers; opening the store replays the records. A torn record at the end (a
//! crash in the middle of an append that was never reported flushed) is cut off; a bad record
//! with good ones after it is corruption, and opening fails rather than guess.
//!
//! A purge rewrites the file with the entries that remain, so the file does not grow without
//! bound once snapshots let the log be purged.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Read, Write};
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{
    Entry, LogId, LogState, OptionalSend, RaftLogReader, StorageError, StorageIOError, Vote,
};
use serde::{Deserialize, Serialize};

use crate::types::{NodeId, TypeConfig};

/// One record of the log file.
#[derive(Serialize, Deserialize)]
enum Record {
    Append(Entry<TypeConfig>),
    /// Delete the entries at and after this index.
    Truncate(u64),
    /// Delete the entries up to this log id, inclusive.
    Purge(LogId<NodeId>),
}

/// The in-memory view, shared with readers.
#[derive(Default)]
struct Log {
    entries: BTreeMap<u64, Entry<TypeConfig>>,
    last_purged: Option<LogId<NodeId>>,
}

/// The raft log and vote of one sequencer node, in a directory.
pub struct LogStore {
    dir: PathBuf,
    file: BufWriter<File>,
    log: Arc<Mutex<Log>>,
    vote: Option<Vote<NodeId>>,
    committed: Option<LogId<NodeId>>,
}

/// A reader of the log, for openraft's replication tasks.
#[derive(Clone)]
pub struct LogReader(Arc<Mutex<Log>>);

fn lock(log: &Mutex<Log>) -> MutexGuard<'_, Log> {
    log.lock().unwrap_or_else(|e| e.into_inner())
}

fn io_error(e: std::io::Error) -> StorageError<NodeId> {
    StorageIOError::write_logs(&e).into()
}

fn corrupt(what: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what)
}

impl LogStore {
    /// Opens (or creates) the log in `dir` and replays it. Fails on corruption (a bad record
    /// with good ones after it) rather than guess.
    pub fn open(dir: impl AsRef<Path>) -> std::io::Result<LogStore> {
        let dir = dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&dir)?;
        let path = dir.join("raft.log");
        let mut log = Log::default();
        let good = replay(&path, &mut log)?;
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        // Cut off a torn tail: it was never reported flushed.
        file.set_len(good)?;
        let vote = read_small(&dir.join("vote"))?;
        // Only a hint (committed entries are applied again once the leader says so): a file
        // that does not read is no committed id, not a reason to stay down.
        let committed = read_small(&dir.join("committed")).unwrap_or(None);
        Ok(LogStore {
            dir,
            file: BufWriter::new(file),
            log: Arc::new(Mutex::new(log)),
            vote,
            committed,
        })
    }

    fn write(&mut self, record: &Record) -> std::io::Result<()> {
        self.file.write_all(&framed(record)?)
    }

    fn sync(&mut self) -> std::io::Result<()> {
        self.file.flush()?;
        self.file.get_ref().sync_data()
    }

    /// Rewrites the file with what the log holds now (after a purge).
    fn rewrite(&mut self) -> std::io::Result<()> {
        let tmp = self.dir.join("raft.log.tmp");
        let mut out = BufWriter::new(File::create(&tmp)?);
        {
            let log = lock(&self.log);
            let mut records: Vec<Record> = Vec::new();
            if let Some(purged) = log.last_purged {
                records.push(Record::Purge(purged));
            }
            records.extend(log.entries.values().cloned().map(Record::Append));
            for record in &records {
                out.write_all(&framed(record)?)?;
            }
        }
        out.flush()?;
        out.get_ref().sync_all()?;
        let path = self.dir.join("raft.log");
        std::fs::rename(&tmp, &path)?;
        File::open(&self.dir)?.sync_all()?;
        self.file = BufWriter::new(OpenOptions::new().append(true).open(&path)?);
        Ok(())
    }
}

/// `record` as it is stored: its length, its checksum, its body.
fn framed(record: &Record) -> std::io::Result<Vec<u8>> {
    let body = postcard::to_stdvec(record).map_err(|e| corrupt(e.to_string()))?;
    let mut out = Vec::with_capacity(body.len() + 8);
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// Replays the log file into `log`; returns the length of its good prefix.
fn replay(path: &Path, log: &mut Log) -> std::io::Result<u64> {
    let mut bytes = Vec::new();
    match File::open(path) {
        Ok(mut f) => f.read_to_end(&mut bytes)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut at = 0usize;
    while at < bytes.len() {
        let Some(header) = bytes.get(at..at + 8) else { break };
        let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
        let Some(body) = bytes.get(at + 8..at + 8 + len) else { break };
        if crc32fast::hash(body) != crc {
            if has_good_record_after(&bytes, at + 8 + len) {
                return Err(corrupt(format!("{}: bad record at byte {at}", path.display())));
            }
            break;
        }
        match postcard::from_bytes::<Record>(body).map_err(|e| corrupt(e.to_string()))? {
            Record::Append(entry) => {
                log.entries.insert(entry.log_id.index, entry);
            }
            Record::Truncate(from) => {
                log.entries.split_off(&from);
            }
            Record::Purge(upto) => {
                log.entries = log.entries.split_off(&(upto.index + 1));
                log.last_purged = Some(upto);
            }
        }
        at += 8 + len;
    }
    Ok(at as u64)
}

/// Whether a record with a good checksum starts somewhere after `from`: then a bad record
/// before it is corruption, not a torn tail.
fn has_good_record_after(bytes: &[u8], from: usize) -> bool {
    (from..bytes.len().saturating_sub(8)).any(|at| {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().expect("4 bytes"));
        len > 0 && bytes.get(at + 8..at + 8 + len).is_some_and(|body| crc32fast::hash(body) == crc)
    })
}

/// A small value in its own file, or `None` if there is none.
fn read_small<T: for<'de> Deserialize<'de>>(path: &Path) -> std::io::Result<Option<T>> {
    match std::fs::read(path) {
        Ok(bytes) => postcard::from_bytes(&bytes).map(Some).map_err(|e| corrupt(e.to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Replaces a small file atomically and durably: write, fsync, rename, fsync the directory.
fn write_small<T: Serialize>(dir: &Path, name: &str, value: &T) -> std::io::Result<()> {
    let bytes = postcard::to_stdvec(value).map_err(|e| corrupt(e.to_string()))?;
    let tmp = dir.join(format!("{name}.tmp"));
    let mut file = File::create(&tmp)?;
    file.write_all(&bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, dir.join(name))?;
    File::open(dir)?.sync_all()
}

fn entries_in<RB: RangeBounds<u64>>(log: &Log, range: RB) -> Vec<Entry<TypeConfig>> {
    log.entries.range(range).map(|(_, e)| e.clone()).collect()
}

impl RaftLogReader<TypeConfig> for LogReader {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<NodeId>> {
        Ok(entries_in(&lock(&self.0), range))
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<NodeId>> {
        Ok(entries_in(&lock(&self.log), range))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogReader;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        let log = lock(&self.log);
        let last_purged_log_id = log.last_purged;
        let last_log_id = log.entries.values().next_back().map(|e| e.log_id).or(last_purged_log_id);
        Ok(LogState { last_purged_log_id, last_log_id })
    }

    async fn get_log_reader(&mut self) -> LogReader {
        LogReader(self.log.clone())
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        write_small(&self.dir, "vote", vote)
            .map_err(|e| StorageError::from(StorageIOError::write_vote(&e)))?;
        self.vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        Ok(self.vote)
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<NodeId>>,
    ) -> Result<(), StorageError<NodeId>> {
        // Replaced whole (a crash must not leave half of it), but not fsynced: it only lets a
        // restart apply committed entries before it hears from the leader; losing it loses
        // nothing. Stored as the log id itself, as `open` reads it.
        let path = self.dir.join("committed");
        match committed {
            Some(id) => {
                let bytes =
                    postcard::to_stdvec(&id).map_err(|e| io_error(corrupt(e.to_string())))?;
                let tmp = self.dir.join("committed.tmp");
                std::fs::write(&tmp, bytes).map_err(io_error)?;
                std::fs::rename(&tmp, &path).map_err(io_error)?;
            }
            None => match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io_error(e)),
                _ => {}
            },
        }
        self.committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        Ok(self.committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry<TypeConfig>> = entries.into_iter().collect();
        for entry in &entries {
            self.write(&Record::Append(entry.clone())).map_err(io_error)?;
        }
        let synced = self.sync();
        {
            let mut log = lock(&self.log);
            for entry in entries {
                log.entries.insert(entry.log_id.index, entry);
            }
        }
        // Reported flushed only once fsynced; a failed fsync is reported as such.
        callback.log_io_completed(synced);
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.write(&Record::Truncate(log_id.index)).map_err(io_error)?;
        self.sync().map_err(io_error)?;
        lock(&self.log).entries.split_off(&log_id.index);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        {
            let mut log = lock(&self.log);
            log.entries = log.entries.split_off(&(log_id.index + 1));
            log.last_purged = Some(log_id);
        }
        self.rewrite().map_err(io_error)
    }
}
