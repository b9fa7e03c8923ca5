//! [`SimEngine`]: a storage engine that forgets, on a simulated crash, every write not yet
//! flushed, as a machine crash does to RocksDB writes made without `sync` (the shard's case:
//! it relies on replaying the log).

use std::sync::Mutex;

use storage::{Cursor, Engine, MemoryEngine, RawBatch, RawOp};

/// An in-memory engine with a durable prefix of its writes.
#[derive(Default)]
pub struct SimEngine {
    current: MemoryEngine,
    state: Mutex<Written>,
}

#[derive(Default, Clone)]
struct Written {
    /// Every batch written, in order.
    batches: Vec<RawBatch>,
    /// How many of them are durable.
    durable: usize,
}

/// What a crash keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    /// The flushed batches, whole (the engine's contract).
    Durable,
    /// A planted bug: every batch's data, but only the flushed batches' bookkeeping (the
    /// watermark): a window's writes survive without the watermark that says so.
    TornWatermark,
}

impl SimEngine {
    fn written(&self) -> std::sync::MutexGuard<'_, Written> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The engine a restart finds after a crash now.
    pub fn crash(&self, keep: Keep) -> SimEngine {
        let written = self.written().clone();
        let restarted = SimEngine::default();
        for (i, batch) in written.batches.iter().enumerate() {
            let batch = match keep {
                Keep::Durable if i >= written.durable => break,
                Keep::TornWatermark if i >= written.durable => {
                    batch.iter().filter(|op| !is_meta(*op)).collect()
                }
                _ => batch.clone(),
            };
            restarted.write(batch, true).expect("an in-memory write");
        }
        restarted
    }
}

/// Bookkeeping keys (the watermark among them) start with 0x00; versions with 0x01.
fn is_meta(op: RawOp) -> bool {
    op.key().first() == Some(&0)
}

impl Engine for SimEngine {
    fn get(&self, key: &[u8]) -> storage::Result<Option<Vec<u8>>> {
        self.current.get(key)
    }

    fn cursor(&self) -> Box<dyn Cursor + '_> {
        self.current.cursor()
    }

    fn write(&self, batch: RawBatch, sync: bool) -> storage::Result<()> {
        let mut written = self.written();
        self.current.write(batch.clone(), sync)?;
        written.batches.push(batch);
        if sync {
            written.durable = written.batches.len();
        }
        Ok(())
    }

    fn flush(&self) -> storage::Result<()> {
        let mut written = self.written();
        written.durable = written.batches.len();
        Ok(())
    }
}
