//! Every acknowledged commit is applied exactly once on every participant: each value a
//! client was told was appended is in its list exactly once at the end, and no value is in a
//! list twice (a window applied again on top of itself would append again). The bank's
//! transfers are covered by its total (`bank_total`).

use std::collections::BTreeMap;

use crate::world::Run;

pub fn check(run: &Run) -> Result<(), String> {
    for (key, list) in &run.final_lists {
        let mut seen = BTreeMap::new();
        for value in list {
            *seen.entry(value).or_insert(0) += 1;
        }
        if let Some((value, n)) = seen.iter().find(|(_, n)| **n > 1) {
            return Err(format!("value {value} is in list {key} {n} times: {list:?}"));
        }
    }
    for (key, value) in &run.acknowledged_appends {
        let list = run.final_lists.get(key).map(Vec::as_slice).unwrap_or_default();
        if !list.contains(value) {
            return Err(format!("acknowledged append of {value} to list {key} is lost: {list:?}"));
        }
    }
    Ok(())
}
