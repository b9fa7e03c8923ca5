//! The outcomes of a shard's recent transactions, in memory, by window.
//!
//! A hash map of every outcome of the last [`OUTCOME_WINDOWS`] windows (hundreds of thousands
//! under load) grew by doubling for as long as a run lasted, rehashing everything each time
//! into fresh pages, and its periodic `retain` left tombstones that made it rehash in place:
//! a cluster profile showed `reserve_rehash` and page clearing on the apply thread. Outcomes
//! come a window at a time and leave a window at a time, so they are kept as a queue of
//! windows, each a vector sorted by index: recording a window appends, expiry pops the oldest
//! window, and a lookup is an index and a binary search.

use std::collections::VecDeque;

use ::sequencer::TxnId;
use clock::Epoch;
use txn::Outcome;

/// Outcomes are kept in memory for this many windows after their entry's (20 s of 2 ms windows
/// under load; longer when windows are sparser); storage keeps them for the retention period.
pub(super) const OUTCOME_WINDOWS: u64 = 10_000;

/// The outcomes decided in the last [`OUTCOME_WINDOWS`] windows, by their entry's window.
#[derive(Debug, Default)]
pub(super) struct RecentOutcomes {
    /// The window `windows[0]` holds the outcomes of entries of; the rest follow it.
    first: Epoch,
    /// Each window's outcomes, by entry index, sorted.
    windows: VecDeque<Vec<(u32, Outcome)>>,
}

impl RecentOutcomes {
    /// The outcome of `txn`, if it was recorded and is still kept.
    pub(super) fn get(&self, txn: TxnId) -> Option<&Outcome> {
        let at = usize::try_from(txn.epoch.0.checked_sub(self.first.0)?).ok()?;
        let window = self.windows.get(at)?;
        let i = window.binary_search_by_key(&txn.index, |(index, _)| *index).ok()?;
        Some(&window[i].1)
    }

    /// Records the outcomes decided in window `applied` (entries of it, and entries deferred
    /// to it from earlier windows), and forgets windows older than [`OUTCOME_WINDOWS`] before
    /// it. Windows are recorded in order; an entry of a window before the first one kept
    /// (deferred across a restart) is not kept: storage has its outcome.
    pub(super) fn record(
        &mut self,
        applied: Epoch,
        decided: impl IntoIterator<Item = (TxnId, Outcome)>,
    ) {
        // Empty, or every window kept is older than the span: start again from `applied` (a
        // gap of windows is not walked window by window).
        let next = self.first.0 + self.windows.len() as u64;
        if self.windows.is_empty() || applied.0.saturating_sub(next) >= OUTCOME_WINDOWS {
            self.windows.clear();
            self.first = applied;
        }
        while self.first.0 + (self.windows.len() as u64) <= applied.0 {
            self.windows.push_back(Vec::new());
        }
        for (txn, outcome) in decided {
            let at = txn.epoch.0.checked_sub(self.first.0).and_then(|at| usize::try_from(at).ok());
            let Some(window) = at.and_then(|at| self.windows.get_mut(at)) else {
                continue;
            };
            match window.last() {
                Some((last, _)) if *last >= txn.index => {
                    // Deferred entries come after the window's own, out of order.
                    match window.binary_search_by_key(&txn.index, |(index, _)| *index) {
                        Ok(i) => window[i].1 = outcome,
                        Err(i) => window.insert(i, (txn.index, outcome)),
                    }
                }
                _ => window.push((txn.index, outcome)),
            }
        }
        while self.windows.len() as u64 > OUTCOME_WINDOWS {
            self.windows.pop_front();
            self.first = self.first.next();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use txn::AbortReason;

    fn id(epoch: u64, index: u32) -> TxnId {
        TxnId { epoch: Epoch(epoch), index }
    }

    fn committed(n: u8) -> Outcome {
        Outcome::Committed { ts: clock::Timestamp::ZERO, output: vec![n] }
    }

    #[test]
    fn outcomes_are_found_by_window_and_index_deferred_ones_too() {
        let mut recent = RecentOutcomes::default();
        assert_eq!(recent.get(id(1, 0)), None);
        recent.record(Epoch(5), [(id(5, 0), committed(0)), (id(5, 3), committed(3))]);
        // Window 6 decides its own entry 1 and entry 1 of window 5, deferred to it; window 7
        // is skipped (none of its entries are this shard's).
        recent.record(Epoch(6), [(id(6, 1), committed(61)), (id(5, 1), committed(51))]);
        recent.record(Epoch(8), [(id(8, 2), Outcome::Aborted(AbortReason::TooLarge("x".into())))]);
        assert_eq!(recent.get(id(5, 0)), Some(&committed(0)));
        assert_eq!(recent.get(id(5, 1)), Some(&committed(51)));
        assert_eq!(recent.get(id(5, 3)), Some(&committed(3)));
        assert_eq!(recent.get(id(5, 2)), None);
        assert_eq!(recent.get(id(6, 1)), Some(&committed(61)));
        assert_eq!(recent.get(id(7, 0)), None);
        assert!(matches!(recent.get(id(8, 2)), Some(Outcome::Aborted(_))));
        assert_eq!((recent.get(id(4, 0)), recent.get(id(9, 0))), (None, None));
        // Before the first window kept (deferred across a restart): left to storage.
        recent.record(Epoch(9), [(id(3, 0), committed(30))]);
        assert_eq!(recent.get(id(3, 0)), None);
    }

    #[test]
    fn windows_older_than_the_kept_span_are_forgotten() {
        let mut recent = RecentOutcomes::default();
        let last = OUTCOME_WINDOWS + 10;
        for e in 1..=last {
            recent.record(Epoch(e), [(id(e, 0), committed(e as u8))]);
        }
        assert_eq!(recent.windows.len() as u64, OUTCOME_WINDOWS);
        let oldest = last - OUTCOME_WINDOWS + 1;
        assert_eq!(recent.get(id(oldest - 1, 0)), None);
        assert_eq!(recent.get(id(oldest, 0)), Some(&committed(oldest as u8)));
        assert_eq!(recent.get(id(last, 0)), Some(&committed(last as u8)));
        // A gap longer than the span starts the queue again, not a window at a time.
        let far = last + 1_000 * OUTCOME_WINDOWS;
        recent.record(Epoch(far), [(id(far, 1), committed(1))]);
        assert_eq!(recent.windows.len(), 1);
        assert_eq!(recent.get(id(far, 1)), Some(&committed(1)));
        assert_eq!(recent.get(id(last, 0)), None);
    }
}
