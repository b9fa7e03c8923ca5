//! What must hold after every simulated run, one invariant per file. Each takes the run's
//! record and says what broke, if anything.

mod bank_total;
mod exactly_once;
mod in_order;
mod one_log;
mod promises_kept;
mod replicas_agree;
mod serializable;
mod verdicts_agree;

use crate::world::Run;

/// An invariant: its name, and its check.
pub type Invariant = (&'static str, fn(&Run) -> Result<(), String>);

/// Every invariant.
pub const ALL: [Invariant; 8] = [
    ("exactly once", exactly_once::check),
    ("windows in order", in_order::check),
    ("verdicts agree", verdicts_agree::check),
    ("strictly serializable", serializable::check),
    ("bank total", bank_total::check),
    ("replicas agree", replicas_agree::check),
    ("one log", one_log::check),
    ("promises kept", promises_kept::check),
];

/// The invariants that fail for `run`, with why.
pub fn broken(run: &Run) -> Vec<String> {
    let mut broken: Vec<String> = run.errors.iter().map(|e| format!("error: {e}")).collect();
    for (name, check) in ALL {
        if let Err(why) = check(run) {
            broken.push(format!("{name}: {why}"));
        }
    }
    broken
}
