//! Participants agree on every multi-shard verdict: each final verdict any participant
//! applied for an entry in a window (once, or again after a crash) is the same. (A deferred
//! entry runs again in the next window, where its verdict may differ.)

use std::collections::BTreeMap;

use crate::world::Run;

pub fn check(run: &Run) -> Result<(), String> {
    let mut decided = BTreeMap::new();
    for (shard, window, txn, commit) in &run.verdicts {
        match decided.insert((*window, *txn), (*shard, *commit)) {
            Some((other, theirs)) if theirs != *commit => {
                return Err(format!(
                    "{txn} in window {window}: shard {} applied {theirs}, shard {} applied {commit}",
                    other.0, shard.0
                ));
            }
            _ => {}
        }
    }
    Ok(())
}
