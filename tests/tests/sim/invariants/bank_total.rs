//! The bank's total never changes: every committed audit sees it, and so does the end state.

use crate::bank::TOTAL;
use crate::world::Run;

pub fn check(run: &Run) -> Result<(), String> {
    for balances in &run.audits {
        let total: u64 = balances.iter().sum();
        if total != TOTAL {
            return Err(format!("an audit saw {total}, not {TOTAL}: {balances:?}"));
        }
    }
    let total: u64 = run.final_balances.iter().sum();
    if total != TOTAL {
        return Err(format!("the balances end at {total}, not {TOTAL}: {:?}", run.final_balances));
    }
    Ok(())
}
