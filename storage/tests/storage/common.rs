//! Helpers shared by the storage tests.

use std::sync::Arc;

use clock::Timestamp;
use storage::{
    DEFAULT_ROW_CACHE_BYTES, Engine, Limits, MemoryEngine, Mvcc, RocksEngine, RocksOptions,
    WriteBehind,
};

/// Which engine a fixture runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Memory,
    Rocks,
    /// Each of them with its writes queued behind ([`WriteBehind`], up to 4 batches).
    MemoryBehind,
    RocksBehind,
    /// RocksDB with the keys under [`APART`] in a column family of their own.
    RocksApart,
    /// `RocksApart` behind a queue that holds the default family's writes as runs
    /// ([`WriteBehind::holding`]), [`HELD_BYTES`] of them, ingested as table files.
    RocksHeld,
}

/// The runs `RocksHeld` holds: small, so that the tests' writes are merged, handed over and
/// ingested many times.
pub const HELD_BYTES: usize = 4 << 10;

/// User-key prefixes the `RocksApart` engine keeps apart: keys the suite and the model write
/// fall on both sides, interleaved, and one prefix lies under another.
pub const APART: &[&[u8]] = &[b"a", b"ab", b"c", b"\0", b"b\xff", b"\x01\x01"];

/// [`APART`] as [`RocksOptions::apart`] takes it.
pub fn apart() -> Vec<Vec<u8>> {
    APART.iter().map(|p| p.to_vec()).collect()
}

impl Kind {
    /// Whether the keys under [`APART`] are in a column family of their own.
    pub fn keeps_apart(self) -> bool {
        matches!(self, Kind::RocksApart | Kind::RocksHeld)
    }

    /// Whether RocksDB is underneath.
    pub fn is_rocks(self) -> bool {
        matches!(self, Kind::Rocks | Kind::RocksBehind | Kind::RocksApart | Kind::RocksHeld)
    }
}

/// An `Mvcc` over a fresh engine that can be closed and reopened.
pub struct Fixture {
    pub kind: Kind,
    pub limits: Limits,
    /// The row cache's budget.
    pub cache_bytes: usize,
    dir: tempfile::TempDir,
    memory: MemoryEngine,
    pub mvcc: Option<Mvcc>,
}

impl Fixture {
    pub fn new(kind: Kind) -> Fixture {
        Fixture::with_limits(kind, Limits::default())
    }

    pub fn with_limits(kind: Kind, limits: Limits) -> Fixture {
        Fixture::with(kind, limits, DEFAULT_ROW_CACHE_BYTES)
    }

    /// A fixture whose row cache holds about `cache_bytes` (0: none).
    pub fn with_cache(kind: Kind, cache_bytes: usize) -> Fixture {
        Fixture::with(kind, Limits::default(), cache_bytes)
    }

    fn with(kind: Kind, limits: Limits, cache_bytes: usize) -> Fixture {
        let mut f = Fixture {
            kind,
            limits,
            cache_bytes,
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
        let options = RocksOptions {
            apart: if self.kind.keeps_apart() { apart() } else { Vec::new() },
            // Short, so that keys of different prefixes share hints and long keys go past them.
            apart_hint_bytes: if self.kind.keeps_apart() { 3 } else { 0 },
            ..Default::default()
        };
        let engine: Arc<dyn Engine> = match self.kind.is_rocks() {
            false => Arc::new(self.memory.clone()),
            true => Arc::new(RocksEngine::open_with(self.dir.path().join("db"), options).unwrap()),
        };
        let engine: Arc<dyn Engine> = match self.kind {
            Kind::MemoryBehind | Kind::RocksBehind => {
                Arc::new(WriteBehind::new(engine, 4).unwrap())
            }
            Kind::RocksHeld => Arc::new(WriteBehind::holding(engine, 4, HELD_BYTES).unwrap()),
            Kind::Memory | Kind::Rocks | Kind::RocksApart => engine,
        };
        self.mvcc = Some(Mvcc::open_with_cache(engine, self.limits, self.cache_bytes).unwrap());
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
