//! Safe-time promises are kept: when a sequencer member tells shards that nothing after
//! window `e` will be stamped at or below `T` (an idle tick, which lets a shard answer reads
//! at `T`), every later window is stamped above `T`, even after the leader changes.

use std::collections::BTreeMap;

use clock::Timestamp;

use crate::world::Run;

pub fn check(run: &Run) -> Result<(), String> {
    let stamps: BTreeMap<_, _> = run.logged.iter().map(|(_, e, ts, _)| (*e, *ts)).collect();
    // The lowest stamp of each window and all after it.
    let mut lowest_from = BTreeMap::new();
    let mut lowest: Option<Timestamp> = None;
    for (epoch, ts) in stamps.iter().rev() {
        let l = lowest.map_or(*ts, |l| l.min(*ts));
        lowest = Some(l);
        lowest_from.insert(*epoch, l);
    }
    for (member, after, promised) in &run.promises {
        let Some((_, lowest)) = lowest_from.range(after.next()..).next() else { continue };
        if lowest <= promised {
            let (epoch, ts) = stamps
                .range(after.next()..)
                .find(|(_, ts)| *ts <= promised)
                .expect("a window at the lowest stamp");
            return Err(format!(
                "member {member} promised nothing after window {after} at or below \
                 {promised}; window {epoch} is at {ts}"
            ));
        }
    }
    Ok(())
}
