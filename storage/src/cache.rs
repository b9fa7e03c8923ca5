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
//!   before the watermark moves. Keys enter the cache when read and when written, so a
//!   fresh database's rows, written by its load, are in the cache when reads begin, and rows
//!   written now are there when read soon after. So a cached version at `ts` answers any
//!   read at or above `ts` (nothing newer exists at or below the watermark, and reads wait
//!   for the watermark); a read below `ts` goes to the engine.
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
//! Each stripe is a hash table of its own, with open addressing and linear probing: a slot
//! holds the key's hash and its entry, one allocation with the version and the key. A lookup
//! therefore waits for memory about twice (the slot, then the entry with its value), and
//! [`RowCache::prefetch`] does those two steps for many keys at once, so that their misses
//! overlap: a shard prefetches the keys a procedure declared just before running it, and a
//! batch's keys before writing them through. (A general-purpose cache, `quick_cache`, took
//! four dependent misses a lookup here: with its write-throughs, 45% of a TPC-C shard
//! thread's time; README, Figures, "The row cache's own table".)
//!
//! A stripe evicts by CLOCK with a count of uses, as PostgreSQL's buffer sweep does: a hit
//! raises the slot's count (to [`MAX_USES`] at most), and the hand, sweeping the slots,
//! takes the first entry whose count is zero, lowering the counts it passes. An entry
//! enters with one use, so it stays at least one sweep: its slot is wherever its hash falls,
//! and the hand may be just before it. The hand sweeps from the first entry on, not from the
//! first eviction: while the stripe has room it turns once for each budget's worth of bytes
//! admitted ([`Stripe::age`]), so a stripe that fills evicts what was not used lately, not
//! whatever it finds first. A row written and never read (TPC-C's history) leaves
//! on the hand's second pass; rows read between passes stay. A full stripe keeps taking
//! written rows only while they are read before they leave: it marks each entry a write put
//! in ([`FRESH`]) until a read hits it, counts those it takes and those read, and refuses
//! written rows (but one in [`FRESH_PROBE_EVERY`]) when fewer than one in
//! [`FRESH_READ_ONE_IN`] of those taken was read: TPC-C's new-order-payment mix never reads
//! its orders back, and churning the cache with them cost it a third of its rate once the
//! cache was full. (It counted written rows evicted unread until 2026-12-06: those are the
//! oldest, so a cache that filled over a load nobody read refused the rows written then,
//! read seconds later.) (Until 2026-12-06 a write entered only while the cache had room:
//! once a long run filled it, every row written after was a miss on its first read, and
//! TPC-C's standard mix fell to half its rate; README, Figures.)
//!
//! A table doubles when it is 70% full and never shrinks. Its slots move into the doubled
//! table a few with each insert that follows, and a slot a lookup finds in the old table moves
//! at once, so that no call moves them all (on a stripe of hundreds of thousands of entries
//! that took 15-20 ms; README, Figures); they move by their kept hashes, never reading a key
//! or moving an entry. While slots are left in the old table, eviction sweeps them first, as
//! the hand would: an entry with a use left moves with one less, the first with none is
//! evicted. A table starts with room for the entries its
//! budget holds at [`BYTES_PER_ENTRY_GUESS`] (at most [`MAX_FIRST_ENTRIES`]), so small rows
//! make it grow a few times while a cache fills. A slot at the lowest load a grown table has
//! (35%) is about 70 bytes an entry, within [`ENTRY_OVERHEAD`], so the tables stay inside the
//! budget's count, except while an old table empties (about 100 bytes an entry then, for the
//! next few inserts per slot).

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use clock::Timestamp;

/// Stripes, each with its own lock and share of the budget.
const STRIPES: usize = 32;
/// What an entry costs beyond its key and value bytes (its slot, at the table's load, its
/// header, the allocator's rounding).
const ENTRY_OVERHEAD: usize = 96;
/// The bytes an entry is guessed to weigh, which sizes a stripe's table when it is made.
const BYTES_PER_ENTRY_GUESS: usize = 512;
/// The most entries a stripe's table has room for when it is made, however large its budget:
/// a table's slots are touched at random, so all of its memory is in use once a few entries
/// are in it.
const MAX_FIRST_ENTRIES: usize = 1 << 14;
/// A table doubles when more than this many tenths of its slots are taken: with linear
/// probing, a lookup at 70% load looks at about 2 slots if the key is there, 6 if not.
const MAX_LOAD_TENTHS: usize = 7;
/// The two bits of a slot's hash that CLOCK counts uses in: raised by a hit (up to
/// [`MAX_USES`]), lowered by the passing hand, which evicts an entry it finds at zero.
const USES: u64 = 0b11 << 62;
/// One use, in [`USES`].
const USE: u64 = 1 << 62;
/// The most uses counted: an entry read often outlives this many sweeps of the hand unread.
const MAX_USES: u64 = 3;
/// The bit of a slot's hash marking an entry a write put in that no read has hit since.
const FRESH: u64 = 1 << 61;
/// The bits of a slot's hash that are not the key's.
const TAGS: u64 = USES | FRESH;
/// A full stripe keeps admitting written rows while at least one in this many of those it
/// took lately was read.
const FRESH_READ_ONE_IN: u64 = 8;
/// A full stripe takes this many written rows before it judges whether they are read: a row
/// is read some time after it is written.
const FRESH_JUDGED_AFTER: u64 = 32;
/// A full stripe that refuses written rows still admits one in this many, to see whether
/// they are read now.
const FRESH_PROBE_EVERY: u64 = 16;
/// The written rows' record is halved once it counts this many, so that it follows the
/// workload.
const FRESH_RECORD: u64 = 1024;

/// An entry's header: the version's timestamp (8 bytes, little-endian), its state
/// ([`NOTHING`], [`DELETED`] or [`VALUE`]), the key's length (4 bytes, little-endian); the key
/// and then the value follow, in the same allocation.
const HEADER: usize = 13;
const NOTHING: u8 = 0;
const DELETED: u8 = 1;
const VALUE: u8 = 2;

/// A key and its newest version, in one allocation (see [`HEADER`]).
fn entry(key: &[u8], newest: &Newest) -> Box<[u8]> {
    match newest {
        Newest::Nothing => entry_of(key, 0, NOTHING, &[]),
        Newest::Version(ts, None) => entry_of(key, ts.as_u64(), DELETED, &[]),
        Newest::Version(ts, Some(value)) => entry_of(key, ts.as_u64(), VALUE, value),
    }
}

/// The entry of `key` at `ts` in `state`, holding `value`.
fn entry_of(key: &[u8], ts: u64, state: u8, value: &[u8]) -> Box<[u8]> {
    let mut e = Vec::with_capacity(HEADER + key.len() + value.len());
    e.extend_from_slice(&ts.to_le_bytes());
    e.push(state);
    e.extend_from_slice(&(key.len() as u32).to_le_bytes());
    e.extend_from_slice(key);
    e.extend_from_slice(value);
    e.into_boxed_slice()
}

fn entry_key(e: &[u8]) -> &[u8] {
    let len = u32::from_le_bytes([e[9], e[10], e[11], e[12]]) as usize;
    &e[HEADER..HEADER + len]
}

/// The entry's value bytes (empty unless its state is [`VALUE`]).
fn entry_value(e: &[u8]) -> &[u8] {
    &e[HEADER + entry_key(e).len()..]
}

fn entry_ts(e: &[u8]) -> Timestamp {
    Timestamp::from_u64(u64::from_le_bytes(e[..8].try_into().expect("8 bytes")))
}

fn entry_newest(e: &[u8]) -> Newest {
    let ts = entry_ts(e);
    match e[8] {
        NOTHING => Newest::Nothing,
        DELETED => Newest::Version(ts, None),
        _ => Newest::Version(ts, Some(entry_value(e).to_vec())),
    }
}

/// What an entry weighs in the budget.
fn entry_weight(e: &[u8]) -> u64 {
    weight(e.len() - HEADER)
}

/// What an entry whose key and value are `bytes` long weighs in the budget.
fn weight(bytes: usize) -> u64 {
    (bytes + ENTRY_OVERHEAD) as u64
}

/// A slot of a stripe's table: its key's hash (with its [`USES`]) and its entry, or zero
/// and `None`. A tuple, not a struct with named fields, since a vector of zeroed tuples is
/// allocated zeroed (`vec![(0, None); n]`: the kernel's fresh pages, touched as slots fill)
/// where one of structs is written slot by slot: 40 ms for 4 million slots on this project's
/// machine, in the window whose insert doubles the table.
type Slot = (u64, Option<Box<[u8]>>);

/// `n` empty slots.
fn empty_slots(n: usize) -> Vec<Slot> {
    vec![(0, None); n]
}

/// A key's newest version as the cache holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Newest {
    /// The shard holds no version of the key.
    Nothing,
    /// The newest version: its timestamp and value (`None`: a deletion).
    Version(Timestamp, Option<Vec<u8>>),
}

/// Permission to fill the cache with what a read returns, if no batch is applied before.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FillTicket(u64);

/// Each key's newest version, for recently read or written keys.
pub(crate) struct RowCache {
    stripes: Vec<Mutex<Stripe>>,
    /// Hashes keys, for their stripe and their slots in it.
    hasher: foldhash::fast::RandomState,
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
    /// Bytes of its stripes' hash tables' slots (a table doubles when it is 70% full). Not
    /// counted in `bytes`.
    pub table_bytes: u64,
    /// Entries it holds now.
    pub entries: u64,
    /// Entries its tables hold before they next grow.
    pub room: u64,
    /// Tables growing now: slots of the table before are still moving into the doubled one.
    pub growing: u64,
    /// Written rows a full cache did not take, since too few of those it took lately were
    /// read.
    pub writes_refused: u64,
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
            room: self.room + other.room,
            growing: self.growing + other.growing,
            writes_refused: self.writes_refused + other.writes_refused,
        }
    }
}

struct Stripe {
    /// A power of two of slots.
    slots: Vec<Slot>,
    /// While the table grows: the table before, whose entries move into `slots` a few at a
    /// time (empty otherwise). Every slot below `drained` is empty; no key is in both.
    old: Vec<Slot>,
    drained: usize,
    /// Entries held, in both tables.
    len: usize,
    /// What they weigh, and the most they may.
    weight: u64,
    budget: u64,
    /// CLOCK's hand: the next slot of `slots` it looks at.
    hand: usize,
    /// While the stripe has room, the hand still sweeps, a slot for each
    /// `budget / slots.len()` bytes admitted ([`Stripe::age`]); this is what is owed of the
    /// next slot, in slot-bytes.
    aging: u128,
    /// Reads answered from this stripe, and reads it could not answer (counted under the
    /// stripe's lock, which the read holds anyway).
    hits: u64,
    misses: u64,
    /// Written rows taken in while the stripe was full, and entries written in (marked
    /// [`FRESH`]) then read: whether a full stripe should take written rows. Halved when they
    /// count [`FRESH_RECORD`] together.
    fresh_taken: u64,
    fresh_read: u64,
    /// Written rows that did not fit a full stripe while it refused them, and of those the
    /// ones it did not take.
    written_unfit: u64,
    writes_refused: u64,
}

/// Slots of a growing table's old one that each insert looks at, moving the entries there.
/// Emptying an old table of `n` slots looks at its `n` slots and once more at each slot an
/// entry moves back into (at most `0.7 n`), and at least `0.7 n` inserts come before the new
/// table (`2 n` slots) must grow in turn: 2.4 an insert would do.
const MOVES_PER_INSERT: usize = 4;

/// The slot of `slots` (a power of two of them, linear probing) holding `key`, whose hash is
/// `hash`.
fn probe(slots: &[Slot], hash: u64, key: &[u8]) -> Option<usize> {
    let mask = slots.len().checked_sub(1)?;
    let mut i = hash as usize & mask;
    loop {
        let slot = &slots[i];
        let entry = slot.1.as_deref()?;
        if slot.0 & !TAGS == hash && entry_key(entry) == key {
            return Some(i);
        }
        i = (i + 1) & mask;
    }
}

/// Puts `slot` in the first free one of `slots` from its home on; returns where.
fn place_in(slots: &mut [Slot], slot: Slot) -> usize {
    let mask = slots.len() - 1;
    let mut i = slot.0 as usize & mask;
    while slots[i].1.is_some() {
        i = (i + 1) & mask;
    }
    slots[i] = slot;
    i
}

/// Takes the slot at `i` out of `slots`, and moves later slots of the same run back into the
/// hole so that every entry stays reachable from its home slot (linear probing's deletion: no
/// tombstones). Slots move only back into the hole, never before `i`'s run.
fn take_from(slots: &mut [Slot], i: usize) -> Slot {
    let mask = slots.len() - 1;
    let taken = std::mem::take(&mut slots[i]);
    let mut hole = i;
    let mut j = (i + 1) & mask;
    while slots[j].1.is_some() {
        let home = slots[j].0 as usize & mask;
        // The entry at `j` may move to the hole if the hole lies on its way from home.
        if j.wrapping_sub(home) & mask >= j.wrapping_sub(hole) & mask {
            slots.swap(hole, j);
            hole = j;
        }
        j = (j + 1) & mask;
    }
    taken
}

impl Stripe {
    fn new(budget: u64, entries: usize) -> Stripe {
        let slots = (entries * 10 / MAX_LOAD_TENTHS).next_power_of_two().max(8);
        Stripe {
            slots: empty_slots(slots),
            old: Vec::new(),
            drained: 0,
            len: 0,
            weight: 0,
            budget,
            hand: 0,
            aging: 0,
            hits: 0,
            misses: 0,
            fresh_taken: 0,
            fresh_read: 0,
            written_unfit: 0,
            writes_refused: 0,
        }
    }

    fn mask(&self) -> usize {
        self.slots.len() - 1
    }

    /// The slot of `slots` holding `key`, whose hash is `hash`; an entry still in the old
    /// table of a growing one moves to `slots` first.
    fn find(&mut self, hash: u64, key: &[u8]) -> Option<usize> {
        if let Some(i) = probe(&self.slots, hash, key) {
            return Some(i);
        }
        let j = probe(&self.old, hash, key)?;
        let slot = take_from(&mut self.old, j);
        Some(place_in(&mut self.slots, slot))
    }

    /// Puts `entry` of a key not held, with its hash, doubling the table first if it is full;
    /// returns its slot.
    fn insert(&mut self, hash: u64, entry: Box<[u8]>, uses: u64) -> usize {
        self.move_old(MOVES_PER_INSERT);
        if (self.len + 1) * 10 > self.slots.len() * MAX_LOAD_TENTHS {
            self.grow();
        }
        self.weight += entry_weight(&entry);
        self.len += 1;
        let hash = hash | uses.min(MAX_USES) << 62;
        place_in(&mut self.slots, (hash, Some(entry)))
    }

    /// Twice the slots. The entries stay in the old table and move a few at a time, with each
    /// insert (and each lookup of one of them), so that no single call moves them all: on a
    /// stripe of hundreds of thousands of entries that took 15-20 ms (README, Figures).
    fn grow(&mut self) {
        // The last growth's moves are done by now (see MOVES_PER_INSERT); if not, they finish.
        self.move_old(usize::MAX);
        let doubled = empty_slots(self.slots.len() * 2);
        self.old = std::mem::replace(&mut self.slots, doubled);
        self.drained = 0;
        self.hand = 0;
    }

    /// Moves the old table's entries into `slots`, looking at up to `slots_at_most` of its
    /// slots; lets the old table go once it is empty.
    fn move_old(&mut self, slots_at_most: usize) {
        for _ in 0..slots_at_most {
            if self.drained == self.old.len() {
                break;
            }
            match self.old[self.drained].1.is_some() {
                // Later slots of its run may move back into it: looked at again.
                true => {
                    let slot = take_from(&mut self.old, self.drained);
                    place_in(&mut self.slots, slot);
                }
                false => self.drained += 1,
            }
        }
        self.let_old_go_if_empty();
    }

    /// Lets a growing table's old one go once every slot of it has been passed.
    fn let_old_go_if_empty(&mut self) {
        if self.drained == self.old.len() && !self.old.is_empty() {
            self.old = Vec::new();
            self.drained = 0;
        }
    }

    /// Takes the entry in slot `i` of `slots` out. Returns its uses.
    fn remove(&mut self, i: usize) -> u64 {
        let taken = take_from(&mut self.slots, i);
        self.weight -= taken.1.as_deref().map_or(0, entry_weight);
        self.len -= 1;
        taken.0 >> 62
    }

    /// Evicts one entry: while the table grows, the old table's entries are swept first, in
    /// the order they move, as CLOCK's hand would (the first with no use left is evicted, the
    /// others move into the new table with a use less); otherwise by CLOCK. False if there is
    /// none. (Until 2026-12-06 the first entry left in the old table was evicted whatever its
    /// count: a table that doubled in a full cache evicted the rows written a moment before
    /// and not yet read, in TPC-C the orders Delivery was about to read.)
    fn evict_one(&mut self) -> bool {
        if self.len == 0 {
            return false;
        }
        while self.drained < self.old.len() {
            if self.old[self.drained].1.is_none() {
                self.drained += 1;
                continue;
            }
            let mut taken = take_from(&mut self.old, self.drained);
            if taken.0 & USES != 0 {
                taken.0 -= USE;
                place_in(&mut self.slots, taken);
                continue;
            }
            self.weight -= taken.1.as_deref().map_or(0, entry_weight);
            self.len -= 1;
            return true;
        }
        self.let_old_go_if_empty();
        // MAX_USES + 1 sweeps at most: each lowers every count it passes.
        loop {
            let i = self.hand;
            let slot = &mut self.slots[i];
            if slot.1.is_some() {
                if slot.0 & USES == 0 {
                    // The slot may now hold an entry moved back into it: the hand stays.
                    self.remove(i);
                    return true;
                }
                slot.0 -= USE;
            }
            self.hand = (i + 1) & self.mask();
        }
    }

    /// Puts `entry` (of a key not held) with `uses`, evicting others until it fits; not if it
    /// alone is over the budget. Returns its slot, if put.
    fn admit(&mut self, hash: u64, entry: Box<[u8]>, uses: u64) -> Option<usize> {
        let weight = entry_weight(&entry);
        if weight > self.budget {
            return None;
        }
        if self.weight + weight <= self.budget {
            self.age(weight);
        }
        while self.weight + weight > self.budget && self.evict_one() {}
        Some(self.insert(hash, entry, uses))
    }

    /// Sweeps the hand on as an entry of `weight` enters a stripe with room for it, lowering
    /// the counts it passes (and evicting nothing): one turn of the table for each budget's
    /// worth of bytes admitted. So by the time the stripe is full, the counts say how recently
    /// each entry was used, as they do once evictions move the hand. Without it, the first
    /// eviction found every entry counted at least once, lowered them all in one turn, and
    /// the turn after took rows written a moment before as readily as rows loaded long before
    /// and never read: in TPC-C's standard mix, the orders Delivery reads about ten seconds
    /// after New-Order wrote them missed for minutes after the cache filled (README, Figures).
    fn age(&mut self, weight: u64) {
        self.aging += self.slots.len() as u128 * u128::from(weight);
        let budget = u128::from(self.budget.max(1));
        let steps = (self.aging / budget).min(self.slots.len() as u128) as usize;
        self.aging %= budget;
        let mask = self.mask();
        for _ in 0..steps {
            let slot = &mut self.slots[self.hand];
            if slot.1.is_some() && slot.0 & USES != 0 {
                slot.0 -= USE;
            }
            self.hand = (self.hand + 1) & mask;
        }
    }

    /// Counts a written row a full stripe took in, marked [`FRESH`]. (Rows taken while it
    /// had room are not counted: they were all taken, and a load's rows, read or not long
    /// after, would stand for what is written now.)
    fn took_written(&mut self) {
        self.fresh_taken += 1;
        self.halve_fresh_record_at_its_limit();
    }

    /// Counts a read of an entry whose slot word was `word`, if it was written in and not
    /// read since ([`FRESH`]).
    fn read_written(&mut self, word: u64) {
        if word & FRESH != 0 {
            self.fresh_read += 1;
            self.halve_fresh_record_at_its_limit();
        }
    }

    /// Halves the record of written rows taken and read once it counts [`FRESH_RECORD`].
    fn halve_fresh_record_at_its_limit(&mut self) {
        if self.fresh_taken + self.fresh_read >= FRESH_RECORD {
            self.fresh_taken /= 2;
            self.fresh_read /= 2;
        }
    }

    /// Whether a written row that is not cached should enter: always while it fits (not
    /// `full`); in a full stripe, while the rows written in are read before they leave (at least
    /// one in [`FRESH_READ_ONE_IN`] of those taken lately, once it has taken
    /// [`FRESH_JUDGED_AFTER`]), and otherwise one in
    /// [`FRESH_PROBE_EVERY`], to notice when they are read again.
    fn takes_written(&mut self, full: bool) -> bool {
        if !full
            || self.fresh_taken < FRESH_JUDGED_AFTER
            || self.fresh_read * FRESH_READ_ONE_IN >= self.fresh_taken
        {
            return true;
        }
        self.written_unfit += 1;
        if self.written_unfit.is_multiple_of(FRESH_PROBE_EVERY) {
            return true;
        }
        self.writes_refused += 1;
        false
    }

    /// Reads the slot at `hash`'s home ([`RowCache::prefetch`]).
    fn touch_home(&self, hash: u64) -> u64 {
        self.slots[hash as usize & self.mask()].0
    }

    /// Reads a byte of each cache line of the entry with `hash`, if it is in one of the first
    /// slots from its home ([`RowCache::prefetch`]; entries still in a growing table's old
    /// one are not looked for).
    fn touch_entry(&self, hash: u64) -> u64 {
        let mask = self.mask();
        let mut i = hash as usize & mask;
        // A key is in its home slot or close after it; its entry is one allocation.
        for _ in 0..4 {
            let slot = &self.slots[i];
            let Some(entry) = slot.1.as_deref() else { return 0 };
            if slot.0 & !TAGS == hash {
                let lines = entry.iter().step_by(64).fold(0u64, |sum, &b| sum + u64::from(b));
                return lines + u64::from(entry[entry.len() - 1]);
            }
            i = (i + 1) & mask;
        }
        0
    }

    /// Checks the stripe's tables ([`RowCache::check`]); `stripe` is its index, `locate`
    /// gives a key's hash and stripe.
    fn check(&self, stripe: usize, locate: impl Fn(&[u8]) -> (u64, usize)) -> Result<(), String> {
        let (mut len, mut weight) = (0, 0);
        for (old, slots) in [(false, &self.slots), (true, &self.old)] {
            for (i, slot) in slots.iter().enumerate() {
                let Some(entry) = slot.1.as_deref() else { continue };
                let key = entry_key(entry);
                let (hash, home) = locate(key);
                let found = probe(slots, hash, key).and_then(|i| slots[i].1.as_deref());
                let twice = old && probe(&self.slots, hash, key).is_some();
                let passed = old && i < self.drained;
                if home != stripe
                    || slot.0 & !TAGS != hash
                    || found != Some(entry)
                    || twice
                    || passed
                {
                    return Err(format!(
                        "stripe {stripe}: entry of {key:02x?} misplaced, unreachable or twice"
                    ));
                }
                len += 1;
                weight += entry_weight(entry);
            }
        }
        if (len, weight) != (self.len, self.weight) {
            let counted = (self.len, self.weight);
            return Err(format!(
                "stripe {stripe}: holds {len} entries of {weight} bytes, counted {counted:?}"
            ));
        }
        if self.weight > self.budget || len * 10 > self.slots.len() * MAX_LOAD_TENTHS {
            return Err(format!("stripe {stripe}: over its budget or its table's load"));
        }
        Ok(())
    }
}

impl RowCache {
    /// A cache holding about `budget` bytes (0: none).
    pub(crate) fn new(budget: usize) -> RowCache {
        let stripes = if budget == 0 { 0 } else { STRIPES };
        let stripe_budget = budget / STRIPES;
        let first = (stripe_budget / BYTES_PER_ENTRY_GUESS).clamp(1, MAX_FIRST_ENTRIES);
        RowCache {
            stripes: (0..stripes)
                .map(|_| Mutex::new(Stripe::new(stripe_budget as u64, first)))
                .collect(),
            hasher: foldhash::fast::RandomState::default(),
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
            stats.writes_refused += stripe.writes_refused;
            stats.bytes += stripe.weight;
            let slots = stripe.slots.len() + stripe.old.len();
            stats.table_bytes += (slots * std::mem::size_of::<Slot>()) as u64;
            stats.entries += stripe.len as u64;
            stats.room += (stripe.slots.len() * MAX_LOAD_TENTHS / 10) as u64;
            stats.growing += u64::from(!stripe.old.is_empty());
        }
        stats
    }

    /// `key`'s hash, with the lowest bit set and [`TAGS`] clear; its stripe.
    fn locate(&self, key: &[u8]) -> (u64, usize) {
        let hash = (self.hasher.hash_one(key) | 1) & !TAGS;
        (hash, (hash >> 32) as usize % self.stripes.len())
    }

    fn lock(&self, stripe: usize) -> MutexGuard<'_, Stripe> {
        self.stripes[stripe].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `key`'s hash and its stripe, locked; `None` if there is no cache.
    fn stripe(&self, key: &[u8]) -> Option<(u64, MutexGuard<'_, Stripe>)> {
        if self.stripes.is_empty() {
            return None;
        }
        let (hash, stripe) = self.locate(key);
        Some((hash, self.lock(stripe)))
    }

    /// Brings what the cache holds of `keys` into the processor's caches, changing nothing
    /// (not even what eviction sees), so that the reads and writes of them that follow soon
    /// do not wait for memory.
    ///
    /// A lookup of an entry that is not in the processor's caches waits for memory twice, one
    /// after the other: for its slot, then for its entry (about a quarter of a microsecond
    /// each on this project's machine; README, Figures). The lookups of different keys do not
    /// depend on each other, but one at a time they do not overlap: each takes and releases
    /// its stripe's lock, and those atomic instructions wait for every load before them. Here
    /// the stripes the keys fall in are locked first (in order, so two callers cannot
    /// deadlock; other callers hold one stripe at a time), then every key's home slot is read,
    /// then every entry found there: each pass is a short loop of loads that do not depend on
    /// each other, so their misses overlap.
    pub(crate) fn prefetch<'k>(&self, keys: impl IntoIterator<Item = &'k [u8]>) {
        if self.stripes.is_empty() {
            return;
        }
        let keys: Vec<(u64, usize)> = keys.into_iter().map(|key| self.locate(key)).collect();
        let mut wanted = [false; STRIPES];
        for &(_, stripe) in &keys {
            wanted[stripe] = true;
        }
        // Locked in index order (an array: no allocation for each procedure run).
        let locked: [Option<MutexGuard<'_, Stripe>>; STRIPES] =
            std::array::from_fn(|i| wanted[i].then(|| self.lock(i)));
        let stripe = |i: usize| locked[i].as_ref().expect("locked above");
        let mut touched = 0u64;
        for &(hash, i) in &keys {
            touched = touched.wrapping_add(stripe(i).touch_home(hash));
        }
        for &(hash, i) in &keys {
            touched = touched.wrapping_add(stripe(i).touch_entry(hash));
        }
        // Reads whose results are not otherwise used: kept.
        std::hint::black_box(touched);
    }

    /// `key`'s newest version as of a read at `at`, if the cache can answer it.
    pub(crate) fn get(&self, key: &[u8], at: Timestamp) -> Option<Newest> {
        let (hash, mut stripe) = self.stripe(key)?;
        let found = stripe.find(hash, key).and_then(|i| {
            let slot = &mut stripe.slots[i];
            let entry = slot.1.as_deref().expect("found");
            if entry[8] != NOTHING && entry_ts(entry) > at {
                return None;
            }
            let word = slot.0;
            if word >> 62 < MAX_USES {
                slot.0 += USE;
            }
            slot.0 &= !FRESH;
            Some((entry_newest(entry), word))
        });
        let found = found.map(|(newest, word)| {
            stripe.read_written(word);
            newest
        });
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
        let Some((hash, mut stripe)) = self.stripe(key) else { return };
        if self.generation.load(Ordering::SeqCst) != ticket.0 {
            self.refused.fetch_add(1, Ordering::Relaxed);
            return;
        }
        // Evicting to make room; an entry over the budget is not admitted, and any older one
        // of the key leaves. The read that fills is a use.
        let uses = match stripe.find(hash, key) {
            Some(i) => stripe.remove(i),
            None => 0,
        };
        stripe.admit(hash, entry(key, &newest), uses.max(1));
    }

    /// Marks the start of a batch's apply: fills taken before it are refused from now on.
    pub(crate) fn begin_apply(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// Records a version the batch being applied wrote: in place of the key's cached one, or
    /// as a new entry, evicting as a read's fill does. A new entry counts one use, so that it
    /// stays at least one sweep of the hand (its slot is wherever its hash falls, and the hand
    /// may be just before it): a row written now is likely read soon (TPC-C's Delivery and
    /// Stock-Level read the orders New-Order wrote seconds before), unless the stripe is full
    /// and too few of the written rows it took lately were read ([`Stripe::takes_written`]).
    /// `value` is `None` for a deletion.
    pub(crate) fn write_through(&self, key: &[u8], ts: Timestamp, value: Option<&[u8]>) {
        let Some((hash, mut stripe)) = self.stripe(key) else { return };
        let (state, bytes) = match value {
            Some(bytes) => (VALUE, bytes),
            None => (DELETED, &[][..]),
        };
        let Some(i) = stripe.find(hash, key) else {
            let weight = weight(key.len() + bytes.len());
            let full = stripe.weight + weight > stripe.budget;
            if stripe.takes_written(full)
                && let Some(i) = stripe.admit(hash, entry_of(key, ts.as_u64(), state, bytes), 1)
            {
                stripe.slots[i].0 |= FRESH;
                if full {
                    stripe.took_written();
                }
            }
            return;
        };
        let cached = stripe.slots[i].1.as_deref_mut().expect("found");
        if entry_value(cached).len() == bytes.len() {
            // The same size: in place, in the old entry's memory; its weight is unchanged.
            cached[..8].copy_from_slice(&ts.as_u64().to_le_bytes());
            cached[8] = state;
            let at = cached.len() - bytes.len();
            cached[at..].copy_from_slice(bytes);
            return;
        }
        // Another size: replaced, evicting others until the stripe is within its budget again
        // (the entry itself leaves if it no longer fits at all).
        let uses = stripe.remove(i);
        stripe.admit(hash, entry_of(key, ts.as_u64(), state, bytes), uses);
    }

    /// Marks the end of a batch's apply.
    pub(crate) fn end_apply(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// Checks that every stripe's table is whole ([`Mvcc::check_row_cache`](crate::Mvcc::check_row_cache)):
    /// each entry is found from its home slot, in the stripe its key hashes to, under its
    /// key's hash; the counts and weights add up, within the budget and the table's load.
    pub(crate) fn check(&self) -> Result<(), String> {
        for n in 0..self.stripes.len() {
            self.lock(n).check(n, |key| self.locate(key))?;
        }
        Ok(())
    }
}
