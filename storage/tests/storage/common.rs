//! Helpers shared by the storage tests.

use std::sync::Arc;

use clock::Timestamp;
use storage::{Engine, Limits, MemoryEngine, Mvcc, RocksEngine};

/// Which engine a fixture runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Memory,
    Rocks,
}

/// An `Mvcc` over a fresh engine that can be closed and reopened.
pub struct Fixture {
    pub kind: Kind,
    pub limits: Limits,
    dir: tempfile::TempDir,
    memory: MemoryEngine,
    pub mvcc: Option<Mvcc>,
}

impl Fixture {
    pub fn new(kind: Kind) -> Fixture {
        Fixture::with_limits(kind, Limits::default())
    }

    pub fn with_limits(kind: Kind, limits: Limits) -> Fixture {
        let mut f = Fixture {
            kind,
            limits,
            dir: tempfile::tempdir().unwrap(),
            memory: MemoryEngine::new(),
            mvcc: None,
        };
        f.reopen();
        f
    }

    pub fn mvcc(&self) -> &Mvcc {
        self.mvcc.as_ref().unwrap()
    }

    /// Closes the engine and opens it again from what it stored.
    pub fn reopen(&mut self) {
        self.mvcc = None;
        let engine: Arc<dyn Engine> = match self.kind {
            Kind::Memory => Arc::new(self.memory.clone()),
            Kind::Rocks => Arc::new(RocksEngine::open(self.dir.path().join("db")).unwrap()),
        };
        self.mvcc = Some(Mvcc::open(engine, self.limits).unwrap());
    }
}

/// The timestamp of test window `n`.
pub fn ts(n: u64) -> Timestamp {
    Timestamp::from_u64(n * 16)
}

/// Seeds for randomised tests: `SEALDB_SEED` runs one seed, otherwise `count` fixed seeds.
pub fn seeds(count: u64) -> Vec<u64> {
    match std::env::var("SEALDB_SEED") {
        Ok(s) => vec![s.parse().expect("SEALDB_SEED must be a number")],
        Err(_) => (0..count).collect(),
    }
}
