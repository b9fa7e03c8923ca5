//! The list-append history is strictly serializable, as the `adya` checker (a Rust take on
//! Jepsen's Elle, written by nobody here) judges it.

use tests::history::{Workload, check as adya};

use crate::world::Run;

/// What the checker says when no transaction of the history can be judged: every list-append
/// operation of the run ended unknown (each timed out at its client under the seed's faults,
/// as seed 2856501903's did), so there is nothing to order. Not a violation; the suite's total
/// of acknowledged commits keeps the invariants from passing on runs that did nothing.
const NOTHING_TO_JUDGE: &str = "empty-transaction-graph";

pub fn check(run: &Run) -> Result<(), String> {
    let verdict = adya(&run.history, Workload::ListAppend, "strict-serializable")?;
    match verdict.valid {
        Some(true) => Ok(()),
        Some(false) => Err(format!("anomalies: {:?}", verdict.anomalies)),
        None if verdict.anomalies == [NOTHING_TO_JUDGE] => Ok(()),
        None => Err(format!("the checker could not decide: {:?}", verdict.anomalies)),
    }
}
