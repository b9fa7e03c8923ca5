//! Replicas of a shard agree: every replica that applied a window has the same chained digest
//! after it (each applies the log on its own; execution is a function of the log).

use std::collections::BTreeMap;

use crate::world::Run;

pub fn check(run: &Run) -> Result<(), String> {
    let mut digests = BTreeMap::new();
    for ((shard, replica), window, digest) in &run.digests {
        match digests.insert((*shard, *window), (*replica, *digest)) {
            Some((other, theirs)) if theirs != *digest => {
                return Err(format!(
                    "shard {} window {window}: replica {other} has digest {theirs:032x}, \
                     replica {replica} {digest:032x}",
                    shard.0
                ));
            }
            _ => {}
        }
    }
    Ok(())
}
