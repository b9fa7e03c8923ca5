//! [`Sealer`]: the sequencer's decisions, as plain data. No threads, no I/O, no clock reads:
//! the shell passes in "now" (monotonic time, for the interval) and window timestamps (from
//! the HLC), and performs the fsync and delivery the sealer's output calls for.
//!
//! ```text
//!   submit(entry) --> open window [e0 e1 e2 ...]  --seal(ts)--> Window { epoch, ts, entries }
//!                      sealed when: it holds max_window_entries / max_window_bytes,
//!                                   or consumers have applied all but `seal_ahead` windows,
//!                                   or window_interval has passed since its first entry
//!                                   (while consumers report progress and are behind: once
//!                                   they have reported none for `feedback_patience`);
//!                      when idle, a tick (an empty, unlogged window) every window_interval
//! ```
//!
//! Invariants kept here:
//!
//! - Epochs are consecutive and window timestamps strictly increase, whatever the caller's
//!   clock does: a timestamp not above the last one is raised to one tick above it.
//! - A window's entries take at most `max_window_bytes` ([`Entry::size`]): an entry that would
//!   pass it goes into the next window ([`Sealer::fits`]), and a larger one is refused.
//! - A client id is in at most one entry among the open window and the recent windows
//!   (the last `dedup_windows` of them, stamped within `dedup_retention` of the newest): a
//!   resubmission gets the original's id instead of a new entry. With `dedup_windows` 0
//!   nothing is deduplicated.

use std::collections::{BTreeMap, HashMap, VecDeque, hash_map};
use std::time::Duration;

use clock::Epoch;
use clock::Timestamp;

use crate::ids::{ClientId, TxnId};
use crate::window::{Entry, Window};

/// When windows are sealed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SealerConfig {
    /// Seal a non-empty window this long after its first entry, and an empty one this long
    /// after the previous window (default 5 ms).
    pub window_interval: Duration,
    /// Seal once a window holds this many entries (default 10,000).
    pub max_window_entries: usize,
    /// Seal once a window holds this many bytes of entries (default 16 MiB). An entry larger
    /// than this is refused.
    pub max_window_bytes: usize,
    /// How many recent windows' client ids are remembered for deduplication, at most (default
    /// 200,000: about 17 minutes at the default interval). 0 turns deduplication off, in the
    /// open window too: every submission is an entry of its own (the embedded database's,
    /// whose ids are its own and never submitted twice).
    pub dedup_windows: usize,
    /// How long client ids are remembered for deduplication, by window timestamps (default
    /// 60 s, the retention of outcomes): a client that resubmits later than this may have
    /// its entry logged twice. Bounds the sequencer's memory under load.
    pub dedup_retention: Duration,
    /// The log's segment files hold this many bytes of windows each (default 64 MiB): the
    /// unit in which the log is truncated.
    pub log_segment_bytes: u64,
    /// A cluster's sequencer truncates the log below every shard replica's checkpoint, but
    /// stops counting a replica that has not reported for this long while a fellow replica of
    /// its shard does (default 10 minutes): that replica catches up from the fellow's
    /// checkpoint when it returns. Not used by an embedded database.
    pub absent_replica: Duration,
    /// Group commit without waiting out the interval: a non-empty window is sealed at once
    /// when fewer than this many sealed windows are still unapplied, as consumers report with
    /// [`Sealer::applied`] (default 2: the next window is logged while the last one applies).
    /// Under load, windows grow to whatever arrives during one apply; when idle, an entry
    /// waits one fsync instead of `window_interval`. Without reports, or with `None`, windows
    /// are sealed on the interval and the caps only.
    pub seal_ahead: Option<u64>,
    /// With `seal_ahead`, while consumers are `seal_ahead` windows behind and have reported a
    /// window applied within this long (default 50 ms), the open window waits for their next
    /// report instead of being sealed on the interval: its entries would only wait behind the
    /// unapplied windows, and each window costs the consumers work of its own (messages
    /// between shards, a write), so sealing more of them would slow the consumers further.
    /// Consumers that stop reporting (a shard down) have the interval apply again after this
    /// long.
    pub feedback_patience: Duration,
}

impl Default for SealerConfig {
    fn default() -> SealerConfig {
        SealerConfig {
            window_interval: Duration::from_millis(5),
            max_window_entries: 10_000,
            max_window_bytes: 16 << 20,
            dedup_windows: 200_000,
            dedup_retention: Duration::from_secs(60),
            log_segment_bytes: crate::log::SEGMENT_BYTES,
            absent_replica: Duration::from_secs(600),
            seal_ahead: Some(2),
            feedback_patience: Duration::from_millis(50),
        }
    }
}

/// Where a submitted entry went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Added to the open window at this index; its id is known once the window is sealed.
    Queued {
        /// Index in the open window.
        index: u32,
    },
    /// The client id is already in the open window, at this index.
    DuplicateOpen {
        /// Index of the earlier entry in the open window.
        index: u32,
    },
    /// The client id is already in a sealed window: its id and the window's timestamp.
    DuplicateSealed(TxnId, Timestamp),
}

/// The sequencer's state machine.
#[derive(Debug)]
pub struct Sealer {
    config: SealerConfig,
    next_epoch: Epoch,
    last_ts: Timestamp,
    open: Vec<Entry>,
    open_bytes: usize,
    /// When the open window got its first entry.
    open_since: Option<Duration>,
    /// When the last window was sealed.
    last_sealed_at: Duration,
    open_ids: HashMap<ClientId, u32>,
    sealed_ids: SealedIds,
    /// Client ids per recent window with its epoch and timestamp, oldest first, to forget
    /// them in order.
    recent: VecDeque<(Epoch, Timestamp, Vec<ClientId>)>,
    /// The last epoch consumers reported applied.
    applied: Epoch,
    /// When consumers last reported a window applied that they had not before (or when the
    /// sealer started).
    progress_at: Duration,
}

impl Sealer {
    /// A sealer continuing after `history` (the log's windows, oldest first), at time `now`.
    pub fn new(config: SealerConfig, history: &[Window], now: Duration) -> Sealer {
        let mut sealer = Sealer {
            config,
            next_epoch: Epoch(1),
            last_ts: Timestamp::ZERO,
            open: Vec::new(),
            open_bytes: 0,
            open_since: None,
            last_sealed_at: now,
            open_ids: HashMap::new(),
            sealed_ids: SealedIds::default(),
            recent: VecDeque::new(),
            applied: Epoch(0),
            progress_at: now,
        };
        let keep = history.len().saturating_sub(config.dedup_windows);
        for w in history {
            sealer.next_epoch = w.epoch.next();
            sealer.last_ts = w.ts;
            sealer.applied = w.epoch; // until consumers say otherwise
        }
        for w in &history[keep..] {
            sealer.remember(w);
        }
        sealer
    }

    /// The oldest window whose client ids are still deduplicated, if any.
    pub fn oldest_remembered(&self) -> Option<Epoch> {
        self.recent.front().map(|(epoch, _, _)| *epoch)
    }

    /// The configuration.
    pub fn config(&self) -> &SealerConfig {
        &self.config
    }

    /// The epoch the open window will get.
    pub fn next_epoch(&self) -> Epoch {
        self.next_epoch
    }

    /// The timestamp of the last sealed window.
    pub fn last_ts(&self) -> Timestamp {
        self.last_ts
    }

    /// Entries in the open window.
    pub fn open_len(&self) -> usize {
        self.open.len()
    }

    /// Adds `entry` to the open window, unless its client id was seen recently. Refuses an
    /// entry larger than a window may hold, returning its size.
    pub fn submit(&mut self, entry: Entry, now: Duration) -> Result<Admission, usize> {
        let deduplicate = self.deduplicates();
        if deduplicate {
            if let Some((txn, ts)) = self.sealed_ids.get(entry.client_id) {
                return Ok(Admission::DuplicateSealed(txn, ts));
            }
            if let Some(&index) = self.open_ids.get(&entry.client_id) {
                return Ok(Admission::DuplicateOpen { index });
            }
        }
        let size = entry.size();
        if size > self.config.max_window_bytes {
            return Err(size);
        }
        let index = self.open.len() as u32;
        if deduplicate {
            self.open_ids.insert(entry.client_id, index);
        }
        self.open_bytes += size;
        self.open.push(entry);
        self.open_since.get_or_insert(now);
        Ok(Admission::Queued { index })
    }

    /// Whether `entry` fits in the open window: its bytes would stay within
    /// `max_window_bytes`, or the window is empty. The shell seals the window first if not,
    /// so that no window is larger than the cap (whatever receives one can take it).
    pub fn fits(&self, entry: &Entry) -> bool {
        self.open.is_empty() || self.open_bytes + entry.size() <= self.config.max_window_bytes
    }

    /// Records that consumers have applied every window up to `epoch`, as reported at `now`.
    pub fn applied(&mut self, epoch: Epoch, now: Duration) {
        if epoch > self.applied {
            self.applied = epoch;
            self.progress_at = now;
        }
    }

    /// Sealed windows consumers have not reported applied.
    pub fn unapplied(&self) -> u64 {
        (self.next_epoch.0 - 1).saturating_sub(self.applied.0)
    }

    /// Whether a window should be sealed now.
    pub fn should_seal(&self, now: Duration) -> bool {
        match self.open_since {
            Some(_) => {
                self.open.len() >= self.config.max_window_entries
                    || self.open_bytes >= self.config.max_window_bytes
                    || self.time_to_seal(now).is_zero()
            }
            None => self.time_to_seal(now).is_zero(),
        }
    }

    /// How long until [`Sealer::should_seal`] turns true if nothing is submitted and no
    /// consumer reports: zero for an open window while consumers have applied all but
    /// `seal_ahead` windows.
    pub fn time_to_seal(&self, now: Duration) -> Duration {
        let since = self.open_since.unwrap_or(self.last_sealed_at);
        let mut at = since + self.config.window_interval;
        if let (Some(_), Some(ahead)) = (self.open_since, self.config.seal_ahead) {
            if self.unapplied() < ahead {
                return Duration::ZERO;
            }
            // Consumers behind but reporting: their next report seals the window, and the
            // interval applies only once they have been silent for `feedback_patience`.
            at = at.max(self.progress_at + self.config.feedback_patience);
        }
        at.saturating_sub(now)
    }

    /// Seals the open window (possibly empty) at `ts`, or one tick above the last window's
    /// timestamp if `ts` is not above it.
    pub fn seal(&mut self, ts: Timestamp, now: Duration) -> Window {
        let ts = ts.max(self.last_ts.next());
        let window = Window { epoch: self.next_epoch, ts, entries: std::mem::take(&mut self.open) };
        self.next_epoch = self.next_epoch.next();
        self.last_ts = ts;
        self.open_bytes = 0;
        self.open_since = None;
        self.last_sealed_at = now;
        self.open_ids.clear();
        self.remember(&window);
        window
    }

    /// Records an idle tick at `ts` in place of an empty window: later windows are stamped
    /// above it, and the idle interval starts again.
    pub fn tick(&mut self, ts: Timestamp, now: Duration) {
        debug_assert!(self.open.is_empty(), "a tick stands for an empty window");
        self.last_ts = self.last_ts.max(ts);
        self.last_sealed_at = now;
    }

    /// Whether client ids are deduplicated ([`SealerConfig::dedup_windows`] above 0).
    fn deduplicates(&self) -> bool {
        self.config.dedup_windows > 0
    }

    fn remember(&mut self, window: &Window) {
        if !self.deduplicates() {
            return;
        }
        let ids: Vec<ClientId> = window.entries.iter().map(|e| e.client_id).collect();
        for (i, id) in ids.iter().enumerate() {
            self.sealed_ids.insert(*id, window.txn_id(i), window.ts);
        }
        self.recent.push_back((window.epoch, window.ts, ids));
        let expired = window.ts.saturating_sub(self.config.dedup_retention);
        while let Some((_, ts, _)) = self.recent.front()
            && (self.recent.len() > self.config.dedup_windows || *ts < expired)
        {
            for id in self.recent.pop_front().map(|(_, _, ids)| ids).unwrap_or_default() {
                self.sealed_ids.remove(id);
            }
        }
    }
}

/// How many maps [`SealedIds`] splits the ids over.
const ID_MAPS: usize = 64;
const _: () = assert!(ID_MAPS.is_power_of_two());

/// What a logged client id deduplicates to: where it was logged, and the window's timestamp.
type Logged = (TxnId, Timestamp);

/// The recent windows' client ids and where they were logged: millions under load (60 s of
/// them).
///
/// Ids are grouped by their upper 64 bits, then ordered by their lower 64: sealdb's client
/// library numbers a client's calls under one random salt (`Client::new_id`), so one client's
/// ids arrive nearly in order, and checking a new one, adding it and later forgetting it touch
/// the two ends of its client's ordered map, which stay in the machine's caches. One hash map
/// of every id took three misses in memory a call (check, add, forget), most of the
/// sequencer's sealing thread under load (README). Any other ids (random ones) cost no more
/// than in a hash map: a group of one id is kept inline, without a tree.
///
/// The groups are split over [`ID_MAPS`] hash maps. One map would stop the sequencer's thread
/// each time it doubles, moving every entry at once: 99-163 ms for a map growing to 1 or 3
/// million ids on this project's 2-core VM (windows of 500 inserts, timed), against 13-16 ms
/// split in 64 (and 7-17 ms for a map that never grows: the VM's own hiccups). Ids are
/// client-chosen: groups made to fall in one map are only as slow as a single map, and each
/// map keeps std's keyed hasher against collisions.
#[derive(Debug)]
struct SealedIds {
    maps: Vec<HashMap<u64, Group>>,
}

/// The ids sharing their upper 64 bits, by their lower 64.
#[derive(Debug)]
enum Group {
    One(u64, Logged),
    Many(BTreeMap<u64, Logged>),
}

impl Default for SealedIds {
    fn default() -> SealedIds {
        SealedIds { maps: (0..ID_MAPS).map(|_| HashMap::new()).collect() }
    }
}

impl SealedIds {
    /// An id's group (its upper half) and its place in the group (its lower half).
    fn split(id: ClientId) -> (u64, u64) {
        ((id.0 >> 64) as u64, id.0 as u64)
    }

    /// The map a group is in: its key mixed (a multiplication by an odd constant), the top
    /// bits choosing.
    fn map(group: u64) -> usize {
        (group.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - ID_MAPS.trailing_zeros())) as usize
    }

    fn get(&self, id: ClientId) -> Option<Logged> {
        let (group, low) = SealedIds::split(id);
        match self.maps[SealedIds::map(group)].get(&group)? {
            Group::One(l, logged) => (*l == low).then_some(*logged),
            Group::Many(ids) => ids.get(&low).copied(),
        }
    }

    fn insert(&mut self, id: ClientId, txn: TxnId, ts: Timestamp) {
        let (group, low) = SealedIds::split(id);
        let map = SealedIds::map(group);
        match self.maps[map].entry(group) {
            hash_map::Entry::Vacant(v) => {
                v.insert(Group::One(low, (txn, ts)));
            }
            hash_map::Entry::Occupied(mut o) => match o.get_mut() {
                Group::One(l, logged) if *l == low => *logged = (txn, ts),
                Group::One(l, logged) => {
                    let ids = BTreeMap::from([(*l, *logged), (low, (txn, ts))]);
                    *o.get_mut() = Group::Many(ids);
                }
                Group::Many(ids) => {
                    ids.insert(low, (txn, ts));
                }
            },
        }
    }

    fn remove(&mut self, id: ClientId) {
        let (group, low) = SealedIds::split(id);
        let map = SealedIds::map(group);
        if let hash_map::Entry::Occupied(mut o) = self.maps[map].entry(group) {
            let empty = match o.get_mut() {
                Group::One(l, _) => *l == low,
                Group::Many(ids) => {
                    ids.remove(&low);
                    ids.is_empty()
                }
            };
            if empty {
                o.remove();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::ids::ShardId;

    const MS: Duration = Duration::from_millis(1);

    fn entry(id: u128) -> Entry {
        Entry::new(ClientId(id), vec![ShardId(0)], Arc::from(vec![0u8; 10]))
    }

    /// A sealer that seals on the interval and caps only.
    fn sealer() -> Sealer {
        Sealer::new(config(), &[], Duration::ZERO)
    }

    fn config() -> SealerConfig {
        SealerConfig { seal_ahead: None, ..SealerConfig::default() }
    }

    fn ts(n: u64) -> Timestamp {
        Timestamp::from_u64(n)
    }

    #[test]
    fn a_window_is_sealed_one_interval_after_its_first_entry() {
        let mut s = sealer();
        s.submit(entry(1), 2 * MS).unwrap();
        assert!(!s.should_seal(6 * MS));
        assert_eq!(s.time_to_seal(6 * MS), MS);
        assert!(s.should_seal(7 * MS));
        let w = s.seal(ts(100), 7 * MS);
        assert_eq!((w.epoch, w.ts, w.entries.len()), (Epoch(1), ts(100), 1));
    }

    #[test]
    fn a_full_window_is_sealed_at_once() {
        let config = SealerConfig { max_window_entries: 3, ..config() };
        let mut s = Sealer::new(config, &[], Duration::ZERO);
        for id in 0..2 {
            s.submit(entry(id), Duration::ZERO).unwrap();
        }
        assert!(!s.should_seal(Duration::ZERO));
        s.submit(entry(2), Duration::ZERO).unwrap();
        assert!(s.should_seal(Duration::ZERO));
    }

    #[test]
    fn a_window_over_its_byte_cap_is_sealed_and_an_oversize_entry_is_refused() {
        assert_eq!(entry(0).size(), 63);
        let config = SealerConfig { max_window_bytes: 4 * 63, ..config() };
        let mut s = Sealer::new(config, &[], Duration::ZERO);
        let big = Entry::new(ClientId(9), vec![ShardId(0)], Arc::from(vec![0u8; 200]));
        assert!(s.submit(big, Duration::ZERO).is_err());
        assert_eq!(s.open_len(), 0);
        for id in 0..3 {
            s.submit(entry(id), Duration::ZERO).unwrap(); // 63 bytes each
        }
        assert!(!s.should_seal(Duration::ZERO));
        s.submit(entry(3), Duration::ZERO).unwrap();
        assert!(s.should_seal(Duration::ZERO));
    }

    /// Regression: a window could end up to twice its cap (an entry was added whenever the
    /// window was not yet full), and a window slice over the receivers' message limit wedged
    /// every shard. No window is larger than the cap now.
    #[test]
    fn no_window_is_larger_than_its_byte_cap() {
        let config = SealerConfig { max_window_bytes: 1000, ..config() };
        let mut s = Sealer::new(config, &[], Duration::ZERO);
        let mut windows = Vec::new();
        for id in 0..40u128 {
            let e = Entry::new(
                ClientId(id),
                vec![ShardId(0)],
                Arc::from(vec![0u8; 90 + id as usize * 7]),
            );
            if !s.fits(&e) {
                windows.push(s.seal(ts(id as u64 + 1), Duration::ZERO));
            }
            s.submit(e, Duration::ZERO).unwrap();
        }
        windows.push(s.seal(ts(100), Duration::ZERO));
        assert!(windows.len() > 5, "{} windows", windows.len());
        for w in &windows {
            let bytes: usize = w.entries.iter().map(Entry::size).sum();
            assert!(bytes <= 1000, "window {} holds {bytes} bytes", w.epoch);
        }
        let total: usize = windows.iter().map(|w| w.entries.len()).sum();
        assert_eq!(total, 40, "every entry is in a window");
    }

    #[test]
    fn epochs_are_consecutive_and_timestamps_rise_even_if_the_clock_does_not() {
        let mut s = sealer();
        let mut last = Timestamp::ZERO;
        for (n, clock) in [50, 40, 40, 60, 10].into_iter().enumerate() {
            s.submit(entry(n as u128), Duration::ZERO).unwrap();
            let w = s.seal(ts(clock), Duration::ZERO);
            assert_eq!(w.epoch, Epoch(n as u64 + 1));
            assert!(w.ts > last, "window {} at {:?} after {last:?}", w.epoch, w.ts);
            last = w.ts;
        }
    }

    #[test]
    fn an_idle_tick_raises_the_floor_for_later_windows() {
        let mut s = sealer();
        assert!(s.should_seal(5 * MS), "an idle sequencer ticks every interval");
        s.tick(ts(500), 5 * MS);
        assert!(!s.should_seal(6 * MS));
        s.submit(entry(1), 6 * MS).unwrap();
        let w = s.seal(ts(300), 11 * MS);
        assert!(w.ts > ts(500));
        assert_eq!(w.epoch, Epoch(1), "ticks take no epoch");
    }

    #[test]
    fn a_resubmitted_client_id_is_not_queued_twice() {
        let mut s = sealer();
        assert_eq!(s.submit(entry(7), Duration::ZERO), Ok(Admission::Queued { index: 0 }));
        assert_eq!(s.submit(entry(8), Duration::ZERO), Ok(Admission::Queued { index: 1 }));
        assert_eq!(s.submit(entry(7), Duration::ZERO), Ok(Admission::DuplicateOpen { index: 0 }));
        let w = s.seal(ts(10), Duration::ZERO);
        assert_eq!(w.entries.len(), 2);
        assert_eq!(
            s.submit(entry(8), Duration::ZERO),
            Ok(Admission::DuplicateSealed(TxnId { epoch: Epoch(1), index: 1 }, ts(10)))
        );
    }

    #[test]
    fn client_ids_are_forgotten_after_dedup_windows() {
        let config = SealerConfig { dedup_windows: 2, ..config() };
        let mut s = Sealer::new(config, &[], Duration::ZERO);
        s.submit(entry(1), Duration::ZERO).unwrap();
        s.seal(ts(1), Duration::ZERO);
        for id in 2..4 {
            s.submit(entry(id), Duration::ZERO).unwrap();
            s.seal(ts(id as u64), Duration::ZERO);
        }
        assert_eq!(s.submit(entry(1), Duration::ZERO), Ok(Admission::Queued { index: 0 }));
        assert!(matches!(s.submit(entry(3), Duration::ZERO), Ok(Admission::DuplicateSealed(..))));
    }

    /// With `dedup_windows` 0 nothing is remembered: an id submitted again, to the open
    /// window or after it was sealed, is a new entry, and no window is kept for its ids.
    #[test]
    fn with_no_dedup_windows_every_submission_is_an_entry() {
        let config = SealerConfig { dedup_windows: 0, ..config() };
        let mut s = Sealer::new(config, &[], Duration::ZERO);
        assert_eq!(s.submit(entry(1), Duration::ZERO), Ok(Admission::Queued { index: 0 }));
        assert_eq!(s.submit(entry(1), Duration::ZERO), Ok(Admission::Queued { index: 1 }));
        assert_eq!(s.seal(ts(1), Duration::ZERO).entries.len(), 2);
        assert_eq!(s.submit(entry(1), Duration::ZERO), Ok(Admission::Queued { index: 0 }));
        assert_eq!(s.oldest_remembered(), None);
    }

    /// Random submissions (new ids over the whole 128 bits or under a few clients' salts,
    /// numbered in order or not, and resubmissions of recent and older ones) against a model
    /// of what deduplication promises: an id in the open window or in the last
    /// `dedup_windows` sealed ones is a duplicate with its first entry's place, any other is
    /// queued. Seeded; the seed is printed.
    #[test]
    fn deduplication_matches_a_model_of_the_recent_windows() {
        use rand::{Rng, SeedableRng};
        let seed: u64 = rand::random();
        println!("seed {seed}");
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let config = SealerConfig { dedup_windows: 5, ..config() };
        let mut s = Sealer::new(config, &[], Duration::ZERO);
        // The model: each window's ids with their txn ids, the newest last.
        let mut windows: VecDeque<HashMap<u128, (TxnId, Timestamp)>> = VecDeque::new();
        let mut open: HashMap<u128, u32> = HashMap::new();
        let mut used: Vec<u128> = Vec::new();
        let salts: [u64; 3] = rng.random();
        let mut counter = 0u128;
        for step in 0..20_000u64 {
            if rng.random_ratio(1, 40) {
                let w = s.seal(ts(step + 1), Duration::ZERO);
                let ids = w.entries.iter().enumerate();
                windows.push_back(ids.map(|(i, e)| (e.client_id.0, (w.txn_id(i), w.ts))).collect());
                if windows.len() > 5 {
                    windows.pop_front();
                }
                open.clear();
                continue;
            }
            let salt = u128::from(salts[rng.random_range(0..salts.len())]) << 64;
            let id = match used.is_empty() || rng.random_bool(0.6) {
                false => used[rng.random_range(used.len().saturating_sub(400)..used.len())],
                true => match rng.random_range(0..3) {
                    0 => rng.random::<u128>(),
                    // Clients' numbered calls: a few salts, the numbers rising.
                    1 => {
                        counter += 1;
                        salt | counter
                    }
                    _ => salt | rng.random_range(0..counter + 50),
                },
            };
            used.push(id);
            let expected = match (open.get(&id), windows.iter().find_map(|w| w.get(&id))) {
                (_, Some(&(txn, ts))) => Admission::DuplicateSealed(txn, ts),
                (Some(&index), None) => Admission::DuplicateOpen { index },
                (None, None) => {
                    let index = s.open_len() as u32;
                    open.insert(id, index);
                    Admission::Queued { index }
                }
            };
            let got = s.submit(entry(id), Duration::ZERO).unwrap();
            assert_eq!(got, expected, "id {id:#x} at step {step} (seed {seed})");
        }
    }

    #[test]
    fn a_sealer_rebuilt_from_history_continues_it() {
        let mut s = sealer();
        let mut history = Vec::new();
        for id in 0..3 {
            s.submit(entry(id), Duration::ZERO).unwrap();
            history.push(s.seal(ts(10 + id as u64), Duration::ZERO));
        }
        let mut again = Sealer::new(config(), &history, Duration::ZERO);
        assert_eq!(again.next_epoch(), Epoch(4));
        assert!(matches!(
            again.submit(entry(1), Duration::ZERO),
            Ok(Admission::DuplicateSealed(..))
        ));
        again.submit(entry(99), Duration::ZERO).unwrap();
        assert!(again.seal(ts(0), Duration::ZERO).ts > ts(12));
    }

    #[test]
    fn a_window_is_sealed_early_while_consumers_keep_up() {
        let config = SealerConfig { seal_ahead: Some(2), ..config() };
        let mut s = Sealer::new(config, &[], Duration::ZERO);
        assert!(!s.should_seal(Duration::ZERO), "nothing open, not idle for an interval");
        s.submit(entry(1), Duration::ZERO).unwrap();
        assert!(s.should_seal(Duration::ZERO), "nothing unapplied: seal at once");
        s.seal(ts(1), Duration::ZERO);
        s.submit(entry(2), Duration::ZERO).unwrap();
        assert!(s.should_seal(Duration::ZERO), "one unapplied window, two allowed");
        s.seal(ts(2), Duration::ZERO);
        s.submit(entry(3), Duration::ZERO).unwrap();
        assert_eq!(s.unapplied(), 2);
        assert!(!s.should_seal(MS), "two unapplied: wait for the interval");
        s.applied(Epoch(1), MS);
        assert!(s.should_seal(MS), "window 1 applied: seal");
        s.applied(Epoch(0), MS);
        assert_eq!(s.unapplied(), 1, "reports never go backwards");
        assert!(s.should_seal(5 * MS) && s.time_to_seal(5 * MS).is_zero());
    }

    #[test]
    fn a_window_waits_for_consumers_that_are_behind_and_reporting() {
        let patience = 50 * MS;
        let config = SealerConfig { seal_ahead: Some(2), feedback_patience: patience, ..config() };
        let interval = config.window_interval;
        let mut s = Sealer::new(config, &[], Duration::ZERO);
        for id in 1..=2 {
            s.submit(entry(id), Duration::ZERO).unwrap();
            s.seal(ts(id as u64), Duration::ZERO);
        }
        s.applied(Epoch(1), 10 * MS);
        s.submit(entry(3), 10 * MS).unwrap();
        s.seal(ts(3), 10 * MS);
        assert_eq!(s.unapplied(), 2);
        s.submit(entry(4), 10 * MS).unwrap();
        assert!(!s.should_seal(10 * MS + interval), "behind and reporting: past the interval");
        assert_eq!(s.time_to_seal(10 * MS + interval), patience - interval);
        s.applied(Epoch(2), 30 * MS);
        assert!(s.should_seal(30 * MS), "a report: seal");
        s.seal(ts(4), 30 * MS);

        // Consumers that stop reporting get windows on the interval again.
        s.submit(entry(5), 31 * MS).unwrap();
        s.seal(ts(5), 31 * MS);
        s.submit(entry(6), 40 * MS).unwrap();
        assert!(!s.should_seal(40 * MS + interval), "silent for less than the patience");
        assert!(s.should_seal(30 * MS + patience), "silent for the patience");
        s.seal(ts(6), 30 * MS + patience);
        s.submit(entry(7), 100 * MS).unwrap();
        assert_eq!(s.time_to_seal(100 * MS), interval, "silent: the interval applies");
        assert!(s.should_seal(100 * MS + interval));
    }
}
