//! [`Tally`]: one participant's count of a window's verdict exchange (DESIGN.md section 4, B).
//!
//! A multi-shard entry commits iff every participant's local verdict is commit. Each shard
//! tallies the entries of its own slice: it starts from its local verdicts, hears the other
//! participants' (pulled over gRPC by a shard server, read from a shared board by the embedded
//! database, or from storage when a participant has already applied the window), and knows the
//! final verdicts once every participant of every entry has been heard.
//!
//! ```text
//!   entry (7, 2), participants {0, 1, 2}, tallied on shard 0:
//!     new:        commit = local(0) = true     waiting for {1, 2}
//!     record 2:   commit &= true               waiting for {1}
//!     record 2:   (counted already: ignored)   waiting for {1}
//!     record 1:   commit &= false              complete: abort
//! ```
//!
//! Invariants kept here, on every shard alike:
//!
//! - Each participant is counted once per entry; a shard that is not a participant of an
//!   entry is never counted for it.
//! - The final verdict of an entry is the AND of exactly its participants' local verdicts,
//!   and it exists only once all of them were heard.
//! - A participant that reports no verdict for an entry it is a participant of has diverged
//!   from the log: that is an error, never a guess.
//!
//! No I/O, no waiting: the shells decide where verdicts come from and how long to wait.

use std::collections::{BTreeMap, BTreeSet};

use sequencer::{ShardId, TxnId};
use storage::Epoch;

/// The participants of a window's entries on this shard.
pub type Participants = BTreeMap<TxnId, Vec<ShardId>>;

/// Final verdicts: entry id to commit.
pub type Finals = BTreeMap<TxnId, bool>;

/// A participant's verdicts that cannot be counted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TallyError {
    /// The participant has no verdict for an entry of the window it is a participant of: its
    /// log or its execution differs from this shard's.
    #[error(
        "shard {} has no verdict for {txn} of window {window}, of which it is a participant: \
         the shards diverged",
        .shard.0
    )]
    Missing {
        /// The participant.
        shard: ShardId,
        /// The entry.
        txn: TxnId,
        /// The window being tallied.
        window: Epoch,
    },
}

/// One shard's tally of one window's multi-shard entries.
#[derive(Debug, Clone)]
pub struct Tally {
    window: Epoch,
    entries: BTreeMap<TxnId, Votes>,
}

#[derive(Debug, Clone)]
struct Votes {
    /// Participants not heard from yet.
    waiting: BTreeSet<ShardId>,
    /// The AND of the verdicts heard so far (this shard's included).
    commit: bool,
}

impl Tally {
    /// The tally of `window` on shard `me`, from its local verdicts. `participants` names
    /// every local entry's participants (`me` among them).
    pub fn new(
        window: Epoch,
        me: ShardId,
        local: &[(TxnId, bool)],
        participants: &Participants,
    ) -> Tally {
        let entries = local
            .iter()
            .map(|(txn, commit)| {
                let waiting = participants[txn].iter().copied().filter(|p| *p != me).collect();
                (*txn, Votes { waiting, commit: *commit })
            })
            .collect();
        Tally { window, entries }
    }

    /// The participants still to be heard from, for any entry.
    pub fn waiting_for(&self) -> BTreeSet<ShardId> {
        self.entries.values().flat_map(|v| v.waiting.iter().copied()).collect()
    }

    /// Counts `from`'s local verdicts of the window (all of them; those of entries it shares
    /// with this shard are used). A participant already counted, or not waited for, changes
    /// nothing.
    pub fn record(&mut self, from: ShardId, verdicts: &[(TxnId, bool)]) -> Result<(), TallyError> {
        let theirs: BTreeMap<TxnId, bool> = verdicts.iter().copied().collect();
        for (txn, votes) in &mut self.entries {
            if !votes.waiting.contains(&from) {
                continue;
            }
            let commit = theirs.get(txn).ok_or(TallyError::Missing {
                shard: from,
                txn: *txn,
                window: self.window,
            })?;
            votes.commit &= commit;
            votes.waiting.remove(&from);
        }
        Ok(())
    }

    /// Whether every participant of every entry has been heard.
    pub fn is_complete(&self) -> bool {
        self.entries.values().all(|v| v.waiting.is_empty())
    }

    /// The final verdicts, once complete.
    pub fn finals(&self) -> Option<Finals> {
        self.is_complete().then(|| self.entries.iter().map(|(t, v)| (*t, v.commit)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn txn(index: u32) -> TxnId {
        TxnId { epoch: Epoch(7), index }
    }

    /// Entry 0 on shards {0, 1, 2}, entry 1 on {0, 1}; tallied on shard 0.
    fn tally(local: [bool; 2]) -> Tally {
        let participants: Participants = [
            (txn(0), vec![ShardId(0), ShardId(1), ShardId(2)]),
            (txn(1), vec![ShardId(0), ShardId(1)]),
        ]
        .into();
        Tally::new(Epoch(7), ShardId(0), &[(txn(0), local[0]), (txn(1), local[1])], &participants)
    }

    #[test]
    fn the_final_verdict_is_the_and_of_exactly_the_participants_once_all_are_heard() {
        let mut t = tally([true, true]);
        assert_eq!(t.waiting_for(), [ShardId(1), ShardId(2)].into());
        t.record(ShardId(2), &[(txn(0), true)]).unwrap();
        assert_eq!(t.finals(), None, "shard 1 is still to be heard");
        // Shard 1 refuses entry 1 only; a verdict for an entry it shares with nobody here is
        // ignored.
        t.record(ShardId(1), &[(txn(0), true), (txn(1), false), (txn(9), false)]).unwrap();
        assert_eq!(t.finals(), Some([(txn(0), true), (txn(1), false)].into()));
    }

    #[test]
    fn each_participant_is_counted_once_and_a_non_participant_never() {
        let mut t = tally([true, true]);
        t.record(ShardId(2), &[(txn(0), true)]).unwrap();
        // A second report from shard 2 (a retry), this time false, is not counted again.
        t.record(ShardId(2), &[(txn(0), false)]).unwrap();
        // Shard 3 is no participant: its verdicts change nothing.
        t.record(ShardId(3), &[(txn(0), false), (txn(1), false)]).unwrap();
        t.record(ShardId(1), &[(txn(0), true), (txn(1), true)]).unwrap();
        assert_eq!(t.finals(), Some([(txn(0), true), (txn(1), true)].into()));
    }

    #[test]
    fn this_shards_own_abort_decides_whatever_the_others_say() {
        let mut t = tally([false, true]);
        t.record(ShardId(1), &[(txn(0), true), (txn(1), true)]).unwrap();
        t.record(ShardId(2), &[(txn(0), true)]).unwrap();
        assert_eq!(t.finals(), Some([(txn(0), false), (txn(1), true)].into()));
    }

    #[test]
    fn a_participant_without_a_verdict_for_its_entry_has_diverged() {
        let mut t = tally([true, true]);
        let err = t.record(ShardId(1), &[(txn(0), true)]).unwrap_err();
        assert_eq!(err, TallyError::Missing { shard: ShardId(1), txn: txn(1), window: Epoch(7) });
        assert!(err.to_string().contains("diverged"), "{err}");
    }

    #[test]
    fn a_window_without_multi_shard_entries_is_complete_at_once() {
        let t = Tally::new(Epoch(1), ShardId(0), &[], &Participants::new());
        assert!(t.waiting_for().is_empty());
        assert_eq!(t.finals(), Some(Finals::new()));
    }
}
