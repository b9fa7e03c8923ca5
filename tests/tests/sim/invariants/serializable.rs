//! The list-append history is strictly serializable, as the `adya` checker (a Rust take on
//! Jepsen's Elle, written by nobody here) judges it.

use tests::history::{Workload, check as adya};

use crate::world::Run;

pub fn check(run: &Run) -> Result<(), String> {
    let verdict = adya(&run.history, Workload::ListAppend, "strict-serializable")?;
    match verdict.valid {
        Some(true) => Ok(()),
        Some(false) => Err(format!("anomalies: {:?}", verdict.anomalies)),
        None => Err(format!("the checker could not decide: {:?}", verdict.anomalies)),
    }
}
