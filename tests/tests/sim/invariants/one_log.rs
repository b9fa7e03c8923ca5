//! There is one log: every sequencer member that delivers window `e` delivers the same one
//! (timestamp and entries), whoever led when it was proposed, and window timestamps strictly
//! increase along the log, across leader changes.

use std::collections::BTreeMap;

use crate::world::Run;

pub fn check(run: &Run) -> Result<(), String> {
    let mut log = BTreeMap::new();
    for (member, epoch, ts, ids) in &run.logged {
        match log.get(epoch) {
            None => {
                log.insert(*epoch, (*member, *ts, ids));
            }
            Some((first, their_ts, their_ids)) if (their_ts, *their_ids) != (ts, ids) => {
                return Err(format!(
                    "window {epoch}: member {first} delivered it at {their_ts} with {} \
                     entries, member {member} at {ts} with {}",
                    their_ids.len(),
                    ids.len()
                ));
            }
            Some(_) => {}
        }
    }
    let mut previous = None;
    for (epoch, (_, ts, _)) in &log {
        if let Some((before, earlier)) = previous
            && earlier >= *ts
        {
            return Err(format!(
                "window {epoch} at {ts} is not after window {before} at {earlier}"
            ));
        }
        previous = Some((*epoch, *ts));
    }
    Ok(())
}
