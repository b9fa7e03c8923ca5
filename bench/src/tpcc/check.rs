//! The consistency conditions of clause 3.3.2.1 to 3.3.2.4, checked on one snapshot after a
//! run. Each failure is described in a line naming the warehouse, district and numbers.

use txn::ProcError;

use crate::tpcc::random::DISTRICTS;
use crate::tpcc::schema::*;
use crate::tpcc::txns::{Reader, row as get, u32_value};

/// Checks warehouses `1..=warehouses`; returns what failed (empty if everything held).
pub fn check(r: &mut impl Reader, warehouses: u32) -> Result<Vec<String>, ProcError> {
    let mut failed = Vec::new();
    for w in 1..=warehouses {
        let warehouse: Warehouse = get(r, &warehouse_key(w))?;
        let mut district_ytd = 0;
        for d in 1..=DISTRICTS {
            let district: District = get(r, &district_key(w, d))?;
            district_ytd += district.ytd;

            // Condition 2: D_NEXT_O_ID - 1 = max(O_ID) = max(NO_O_ID).
            let mut max_o = 0;
            let mut ol_cnt_sum = 0u64;
            for (key, value) in r.range(&orders(w, d), usize::MAX)? {
                let order: Order = decode(&value).map_err(ProcError::Abort)?;
                max_o = max_o.max(order_id_at_end(&key));
                ol_cnt_sum += u64::from(order.ol_cnt);
            }
            let new: Vec<u32> = r
                .range(&new_orders(w, d), usize::MAX)?
                .iter()
                .map(|(k, _)| order_id_at_end(k))
                .collect();
            if district.next_o_id - 1 != max_o {
                failed.push(format!(
                    "condition 2: warehouse {w} district {d}: D_NEXT_O_ID - 1 = {} but max(O_ID) = {max_o}",
                    district.next_o_id - 1
                ));
            }
            if let (Some(&min_no), Some(&max_no)) = (new.first(), new.last()) {
                if district.next_o_id - 1 != max_no {
                    failed.push(format!(
                        "condition 2: warehouse {w} district {d}: D_NEXT_O_ID - 1 = {} but max(NO_O_ID) = {max_no}",
                        district.next_o_id - 1
                    ));
                }
                // Condition 3: the new-order rows are exactly the ids min..=max.
                if u64::from(max_no - min_no) + 1 != new.len() as u64 {
                    failed.push(format!(
                        "condition 3: warehouse {w} district {d}: {} new-order rows for ids {min_no}..={max_no}",
                        new.len()
                    ));
                }
            }
            // Ours: the delivery cursor is the oldest new-order id (or the next order id).
            let cursor = u32_value(r.read(&delivery_cursor_key(w, d))?)?;
            let oldest = new.first().copied().unwrap_or(district.next_o_id);
            if cursor != oldest {
                failed.push(format!(
                    "delivery cursor: warehouse {w} district {d}: cursor {cursor} but the oldest undelivered order is {oldest}"
                ));
            }
            // Condition 4: sum(O_OL_CNT) = number of order lines.
            let lines = r.range(&district_order_lines(w, d), usize::MAX)?.len() as u64;
            if ol_cnt_sum != lines {
                failed.push(format!(
                    "condition 4: warehouse {w} district {d}: sum(O_OL_CNT) = {ol_cnt_sum} but {lines} order lines"
                ));
            }
        }
        // Condition 1: W_YTD = sum(D_YTD).
        if warehouse.ytd != district_ytd {
            failed.push(format!(
                "condition 1: warehouse {w}: W_YTD = {} but the sum of D_YTD = {district_ytd}",
                warehouse.ytd
            ));
        }
    }
    Ok(failed)
}
