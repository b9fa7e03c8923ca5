//! [`RowCache`]: each key's newest version, in memory, in front of the engine's point reads.
//!
//! A shard executes window `e` against `Snap(e-1)`: the newest state it has. Those reads are
//! most of the work of executing a window, and each is a seek in the engine. The cache keeps,
//! for recently used keys, the newest version the shard holds (or the fact that it holds
//! none), so such a read is a hash lookup.
//!
//! What stays true:
//!
//! - **An entry is the key's newest version.** [`Mvcc::apply`](crate::Mvcc::apply) writes
//!   every version it adds of a cached key through to the cache, after the engine write and
//!   before the watermark moves. Keys enter the cache when read, and when written only while
//!   the cache has room for them: a write never evicts, since a key nobody read (TPC-C's
//!   order lines, say) would only push read ones out; but a fresh database's rows, written
//!   by its load, are in the cache when reads begin instead of each costing a seek first. So
//!   a cached version at `ts` answers any read at or above `ts` (nothing newer exists at or
//!   below the watermark, and reads wait for the watermark); a read below `ts` goes to the
//!   engine.
//! - **A read fills the cache only if no batch was applied meanwhile.** A generation counter
//!   is odd while a batch is being applied. A reader takes the generation before it reads
//!   the engine, at or above the watermark, and inserts what it read only if the generation
//!   is unchanged, checked under the entry's stripe lock; a batch's write-through takes the
//!   same lock after making the generation odd. So a fill can never overwrite a newer
//!   version with an older one, even if the newer one was evicted in between.
//! - **Garbage collection does not touch it.** It removes only versions no read at or above
//!   the horizon sees, and a newest version only if it is a deletion, which reads the same as
//!   no version.
//!
//! It serves [`Mvcc::get`](crate::Mvcc::get) only: scans and change checks read the engine.
//! Memory is bounded by a byte budget split over stripes; a budget of zero turns the cache off.
//!
//! Each stripe evicts by S3-FIFO (`quick_cache`): a key enters a small probationary queue
//! and moves to the main one if read again before it leaves; a hit only marks the entry. An
//! LRU list, which this replaced, relinks the entry and its two neighbours on every hit, and
//! on a cache as large as the rows a shard reads, each of those is a miss in the machine's
//! own caches. Keys of up to 24 bytes (every TPC-C key) are held inside the entry, so a hit
//! reads no key elsewhere. What is left of a hit is the hash probe and the copy of the value,
//! still misses in memory (README, Figures: the lookups' share of a shard thread stayed near a
//! fifth; a transaction became about 5% cheaper). Beyond the budget, the cache remembers
//! about as many evicted keys (S3-FIFO's ghosts, a slab slot each) as half the entries the
//! budget holds at [`BYTES_PER_ENTRY_GUESS`]: up to a tenth more memory than the budget says.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use clock::Timestamp;
use smallvec::SmallVec;

/// Stripes, each with its own lock and share of the budget.
const STRIPES: usize = 32;
/// What an entry costs beyond its key and value bytes (map slot, slab entry, allocations).
const ENTRY_OVERHEAD: usize = 96;
/// The bytes an entry is guessed to weigh, which sizes how many evicted keys a stripe
/// remembers (S3-FIFO's ghosts: half the entries its budget holds at this weight), so a guess
/// that is too small costs memory.
const BYTES_PER_ENTRY_GUESS: usize = 512;
/// The most entries a stripe makes room for when it is made, however large its budget.
///
/// A stripe's slab of entries and its hash table grow by doubling, under the stripe's lock:
/// the slab is copied into new memory (which the kernel first zeroes) and the table rehashes
/// every key. The stripes, filled evenly, double at about the same moment: measured at 16
/// TPC-C clients, the tables' round took a seventh of the shard threads' time for five
/// seconds, and the slabs' round, about a minute in, a tenth of all samples and a third of
/// the throughput for ten (README, Figures). So a stripe reserves, when it is made, room for
/// as many entries as its budget can hold: every entry weighs at least [`ENTRY_OVERHEAD`],
/// so no fill of the budget, whatever its rows, outgrows the reservation. The table's control
/// bytes (one per slot, about 2.3 bytes an entry) are written then; its slots and the slab's
/// entries are allocated then but made resident only as entries fill them. This caps the
/// reservation for a very large budget (2,097,152 entries: a 192 MiB stripe, a 6 GiB cache);
/// beyond it, a stripe grows as before.
const MAX_RESERVED_ENTRIES: usize = 1 << 21;

/// A cached key: inline up to 24 bytes.
type Key = SmallVec<[u8; 24]>;

/// One stripe's entries, weighed in bytes as the budget counts them.
type Rows = quick_cache::unsync::Cache<Key, Newest, Weigh, foldhash::fast::RandomState>;

/// Weighs an entry as the budget counts it: key, value, [`ENTRY_OVERHEAD`].
#[derive(Debug, Clone, Copy)]
struct Weigh;

impl quick_cache::Weighter<Key, Newest> for Weigh {
    fn weight(&self, key: &Key, newest: &Newest) -> u64 {
        weight(key, newest.bytes())
    }
}

/// What an entry of `key` holding `value_bytes` weighs in the budget.
fn weight(key: &[u8], value_bytes: usize) -> u64 {
    (key.len() + value_bytes + ENTRY_OVERHEAD) as u64
}

/// A key's newest version as the cache holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Newest {
    /// The shard holds no version of the key.
    Nothing,
    /// The newest version: its timestamp and value (`None`: a deletion).
    Version(Timestamp, Option<Vec<u8>>),
}

impl Newest {
    fn bytes(&self) -> usize {
        match self {
            Newest::Nothing => 0,
            Newest::Version(_, value) => value.as_ref().map_or(0, Vec::len),
        }
    }
}

/// Permission to fill the cache with what a read returns, if no batch is applied before.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FillTicket(u64);

/// Each key's newest version, for recently read or written keys.
pub(crate) struct RowCache {
    stripes: Vec<Mutex<Stripe>>,
    /// Odd while a batch is being applied; rises by two per batch.
    generation: AtomicU64,
    /// Fills refused because a batch was applied while the read was made.
    refused: AtomicU64,
}

/// What a row cache has done since it was opened ([`Mvcc::cache_stats`](crate::Mvcc::cache_stats)).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Point reads the cache answered.
    pub hits: u64,
    /// Point reads it could not answer (read from the engine).
    pub misses: u64,
    /// Of those, reads whose result was not cached because a batch was being applied, or was
    /// applied, while they read the engine: the race the generation counter guards against.
    pub fills_refused: u64,
    /// Bytes it holds now (keys, values and per-entry overhead, as its budget counts them).
    pub bytes: u64,
    /// Bytes of its stripes' hash tables: a slot for each entry (or evicted key remembered)
    /// they have room for, reserved when the cache is made. Not counted in `bytes`.
    pub table_bytes: u64,
    /// Entries it holds now.
    pub entries: u64,
    /// Entries its stripes reserved room for when it was made (in their tables and slabs).
    pub reserved_entries: u64,
}

impl std::ops::Add for CacheStats {
    type Output = CacheStats;

    fn add(self, other: CacheStats) -> CacheStats {
        CacheStats {
            hits: self.hits + other.hits,
            misses: self.misses + other.misses,
            fills_refused: self.fills_refused + other.fills_refused,
            bytes: self.bytes + other.bytes,
            table_bytes: self.table_bytes + other.table_bytes,
            entries: self.entries + other.entries,
            reserved_entries: self.reserved_entries + other.reserved_entries,
        }
    }
}

struct Stripe {
    rows: Rows,
    /// The entries it reserved room for when it was made.
    reserved: usize,
    /// Reads answered from this stripe, and reads it could not answer (counted under the
    /// stripe's lock, which the read holds anyway).
    hits: u64,
    misses: u64,
}

impl RowCache {
    /// A cache holding about `budget` bytes (0: none).
    pub(crate) fn new(budget: usize) -> RowCache {
        let stripes = if budget == 0 { 0 } else { STRIPES };
        let stripe_budget = budget / STRIPES;
        RowCache {
            stripes: (0..stripes)
                .map(|_| {
                    let guessed = (stripe_budget / BYTES_PER_ENTRY_GUESS).max(1);
                    let mut rows = Rows::with(
                        guessed,
                        stripe_budget as u64,
                        Weigh,
                        foldhash::fast::RandomState::default(),
                        Default::default(),
                    );
                    let reserved = (stripe_budget / ENTRY_OVERHEAD).clamp(1, MAX_RESERVED_ENTRIES);
                    rows.reserve(reserved);
                    Mutex::new(Stripe { rows, reserved, hits: 0, misses: 0 })
                })
                .collect(),
            generation: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        }
    }

    /// What the cache has done so far.
    pub(crate) fn stats(&self) -> CacheStats {
        let mut stats = CacheStats {
            fills_refused: self.refused.load(Ordering::Relaxed),
            ..CacheStats::default()
        };
        for stripe in &self.stripes {
            let stripe = stripe.lock().unwrap_or_else(|e| e.into_inner());
            stats.hits += stripe.hits;
            stats.misses += stripe.misses;
            stats.bytes += stripe.rows.weight();
            stats.table_bytes += stripe.rows.memory_used().map as u64;
            stats.entries += stripe.rows.len() as u64;
            stats.reserved_entries += stripe.reserved as u64;
        }
        stats
    }

    fn stripe(&self, key: &[u8]) -> Option<MutexGuard<'_, Stripe>> {
        if self.stripes.is_empty() {
            return None;
        }
        let hash = crate::fnv::extend(crate::fnv::START, key);
        let stripe = &self.stripes[(hash % self.stripes.len() as u64) as usize];
        Some(stripe.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// `key`'s newest version as of a read at `at`, if the cache can answer it.
    pub(crate) fn get(&self, key: &[u8], at: Timestamp) -> Option<Newest> {
        let mut stripe = self.stripe(key)?;
        let found = match stripe.rows.get(key) {
            Some(Newest::Version(ts, _)) if *ts > at => None,
            newest => newest.cloned(),
        };
        match found {
            Some(_) => stripe.hits += 1,
            None => stripe.misses += 1,
        }
        found
    }

    /// A ticket for filling the cache with a read about to be made, or `None` while a batch
    /// is being applied.
    pub(crate) fn ticket(&self) -> Option<FillTicket> {
        if self.stripes.is_empty() {
            return None;
        }
        let generation = self.generation.load(Ordering::SeqCst);
        if !generation.is_multiple_of(2) {
            self.refused.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(FillTicket(generation))
    }

    /// Caches what a read at or above the watermark found, unless a batch was applied since
    /// `ticket` was taken.
    pub(crate) fn fill(&self, ticket: FillTicket, key: &[u8], newest: Newest) {
        let Some(mut stripe) = self.stripe(key) else { return };
        if self.generation.load(Ordering::SeqCst) == ticket.0 {
            // An entry over the budget is not admitted, and any older one of the key leaves.
            stripe.rows.insert(Key::from_slice(key), newest);
        } else {
            self.refused.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Marks the start of a batch's apply: fills taken before it are refused from now on.
    pub(crate) fn begin_apply(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// Records a version the batch being applied wrote: in place of the key's cached one, or
    /// as a new entry if the stripe has room for it without evicting anything (otherwise an
    /// uncached key's next read goes to the engine, which has the version). `value` is `None`
    /// for a deletion.
    pub(crate) fn write_through(&self, key: &[u8], ts: Timestamp, value: Option<&[u8]>) {
        let Some(mut stripe) = self.stripe(key) else { return };
        let Some(mut cached) = stripe.rows.peek_mut(key) else {
            let weight = weight(key, value.map_or(0, <[u8]>::len));
            if stripe.rows.weight() + weight <= stripe.rows.capacity() {
                let newest = Newest::Version(ts, value.map(<[u8]>::to_vec));
                stripe.rows.insert(Key::from_slice(key), newest);
            }
            return;
        };
        if value.map_or(0, <[u8]>::len) <= cached.bytes() {
            // No larger than what it replaces: in place, in the old value's memory. The
            // entry is weighed again when `cached` drops, and the stripe only shrinks.
            match (&mut *cached, value) {
                (Newest::Version(at, Some(old)), Some(new)) => {
                    *at = ts;
                    old.clear();
                    old.extend_from_slice(new);
                }
                (cached, value) => *cached = Newest::Version(ts, value.map(<[u8]>::to_vec)),
            }
            return;
        }
        drop(cached);
        // Larger: replaced through the cache, which evicts until the stripe is within its
        // budget again (the entry itself leaves if it no longer fits at all). A key of up to
        // 24 bytes is built without an allocation.
        let newest = Newest::Version(ts, value.map(<[u8]>::to_vec));
        let _ = stripe.rows.replace(Key::from_slice(key), newest, false);
    }

    /// Marks the end of a batch's apply.
    pub(crate) fn end_apply(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
    }
}
