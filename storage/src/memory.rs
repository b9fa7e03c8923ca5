//! [`MemoryEngine`]: an [`Engine`] in a `BTreeMap`, for tests and simulations.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{Arc, RwLock};

use crate::Result;
use crate::engine::{Cursor, Engine, RawBatch, RawOp};

/// An in-memory engine. Clones share the same map, so a test can "reopen" it by building a new
/// [`crate::Mvcc`] over a clone. Nothing survives the process, so `sync` and `flush` are no-ops.
#[derive(Debug, Clone, Default)]
pub struct MemoryEngine {
    map: Arc<RwLock<BTreeMap<Vec<u8>, Vec<u8>>>>,
}

impl MemoryEngine {
    /// An empty engine.
    pub fn new() -> MemoryEngine {
        MemoryEngine::default()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<Vec<u8>, Vec<u8>>> {
        self.map.read().unwrap_or_else(|e| e.into_inner())
    }
}

impl Engine for MemoryEngine {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.read().get(key).cloned())
    }

    fn cursor(&self) -> Box<dyn Cursor + '_> {
        Box::new(MemoryCursor { engine: self, position: Position::Start })
    }

    fn write(&self, batch: RawBatch, _sync: bool) -> Result<()> {
        // One lock for the whole batch: readers see all of it or none of it.
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        for op in batch.iter() {
            match op {
                RawOp::Put(k, v) => map.insert(k.to_vec(), v.to_vec()),
                RawOp::Delete(k) => map.remove(k),
            };
        }
        Ok(())
    }

    fn flush(&self) -> Result<()> {
        Ok(())
    }
}

/// Remembers the last key returned and looks up its successor on each step, so it stays valid
/// while the map changes underneath.
struct MemoryCursor<'a> {
    engine: &'a MemoryEngine,
    position: Position,
}

enum Position {
    Start,
    At(Vec<u8>),
    End,
}

impl MemoryCursor<'_> {
    fn step(&mut self, from: Bound<&[u8]>) -> Option<(Vec<u8>, Vec<u8>)> {
        let map = self.engine.read();
        let found = map
            .range::<[u8], _>((from, Bound::Unbounded))
            .next()
            .map(|(k, v)| (k.clone(), v.clone()));
        self.position = match &found {
            Some((k, _)) => Position::At(k.clone()),
            None => Position::End,
        };
        found
    }
}

impl Cursor for MemoryCursor<'_> {
    fn seek(&mut self, key: &[u8]) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        Ok(self.step(Bound::Included(key)))
    }

    fn next(&mut self) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        match std::mem::replace(&mut self.position, Position::End) {
            Position::Start => Ok(self.step(Bound::Unbounded)),
            Position::At(pos) => Ok(self.step(Bound::Excluded(&pos))),
            Position::End => Ok(None),
        }
    }
}
