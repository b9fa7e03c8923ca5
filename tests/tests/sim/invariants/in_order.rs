//! Every shard replica applies windows in order, without gaps: each write is of the window
//! after the replica's watermark.

use crate::world::Run;

pub fn check(run: &Run) -> Result<(), String> {
    for ((shard, replica), window, before) in &run.writes {
        if window.0 != before.0 + 1 {
            return Err(format!(
                "shard {} replica {replica} wrote window {window} over watermark {before}",
                shard.0
            ));
        }
    }
    Ok(())
}
