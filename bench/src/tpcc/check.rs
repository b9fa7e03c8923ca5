//! The consistency conditions of clause 3.3.2.1 to 3.3.2.4, checked on one snapshot after a
//! run. Each backend gathers the same facts per warehouse and district (sealdb from its keys,
//! PostgreSQL with SQL); [`failures`] judges them, describing each failure in a line naming
//! the warehouse, district and numbers.

use txn::ProcError;

use crate::tpcc::random::DISTRICTS;
use crate::tpcc::schema::*;
use crate::tpcc::txns::{Reader, row as get, u32_value};

/// What the conditions need of one warehouse.
#[derive(Debug, Clone, PartialEq)]
pub struct WarehouseFacts {
    /// W_ID.
    pub w: u32,
    /// W_YTD.
    pub ytd: i64,
    /// The sum of its districts' D_YTD.
    pub district_ytd: i64,
}

/// What the conditions need of one district.
#[derive(Debug, Clone, PartialEq)]
pub struct DistrictFacts {
    /// D_W_ID.
    pub w: u32,
    /// D_ID.
    pub d: u32,
    /// D_NEXT_O_ID.
    pub next_o_id: u32,
    /// max(O_ID), 0 without orders.
    pub max_o: u32,
    /// min(NO_O_ID), max(NO_O_ID) and the number of NEW-ORDER rows, if there are any.
    pub new_orders: Option<(u32, u32, u64)>,
    /// sum(O_OL_CNT).
    pub ol_cnt_sum: u64,
    /// The number of ORDER-LINE rows.
    pub lines: u64,
    /// sealdb's delivery cursor (none on backends without one).
    pub delivery_cursor: Option<u32>,
}

/// What failed, in warehouse and district order (empty if everything held).
pub fn failures(warehouses: &[WarehouseFacts], districts: &[DistrictFacts]) -> Vec<String> {
    let mut failed = Vec::new();
    for f in warehouses {
        // Condition 1: W_YTD = sum(D_YTD).
        if f.ytd != f.district_ytd {
            failed.push(format!(
                "condition 1: warehouse {}: W_YTD = {} but the sum of D_YTD = {}",
                f.w, f.ytd, f.district_ytd
            ));
        }
    }
    for f in districts {
        let (w, d, last) = (f.w, f.d, i64::from(f.next_o_id) - 1);
        // Condition 2: D_NEXT_O_ID - 1 = max(O_ID) = max(NO_O_ID).
        if last != i64::from(f.max_o) {
            failed.push(format!(
                "condition 2: warehouse {w} district {d}: D_NEXT_O_ID - 1 = {last} but max(O_ID) = {}",
                f.max_o
            ));
        }
        if let Some((min_no, max_no, count)) = f.new_orders {
            if last != i64::from(max_no) {
                failed.push(format!(
                    "condition 2: warehouse {w} district {d}: D_NEXT_O_ID - 1 = {last} but max(NO_O_ID) = {max_no}"
                ));
            }
            // Condition 3: the new-order rows are exactly the ids min..=max.
            if i64::from(max_no) - i64::from(min_no) + 1 != count as i64 {
                failed.push(format!(
                    "condition 3: warehouse {w} district {d}: {count} new-order rows for ids {min_no}..={max_no}"
                ));
            }
        }
        // Ours: the delivery cursor is the oldest new-order id (or the next order id).
        if let Some(cursor) = f.delivery_cursor {
            let oldest = f.new_orders.map_or(f.next_o_id, |(min_no, _, _)| min_no);
            if cursor != oldest {
                failed.push(format!(
                    "delivery cursor: warehouse {w} district {d}: cursor {cursor} but the oldest undelivered order is {oldest}"
                ));
            }
        }
        // Condition 4: sum(O_OL_CNT) = number of order lines.
        if f.ol_cnt_sum != f.lines {
            failed.push(format!(
                "condition 4: warehouse {w} district {d}: sum(O_OL_CNT) = {} but {} order lines",
                f.ol_cnt_sum, f.lines
            ));
        }
    }
    failed
}

/// Checks warehouses `1..=warehouses` of a sealdb snapshot; returns what failed.
pub fn check(r: &mut impl Reader, warehouses: u32) -> Result<Vec<String>, ProcError> {
    let (wf, df) = facts(r, warehouses)?;
    Ok(failures(&wf, &df))
}

/// The facts of warehouses `1..=warehouses` in a sealdb snapshot.
pub fn facts(
    r: &mut impl Reader,
    warehouses: u32,
) -> Result<(Vec<WarehouseFacts>, Vec<DistrictFacts>), ProcError> {
    let (mut wf, mut df) = (Vec::new(), Vec::new());
    for w in 1..=warehouses {
        let _: Warehouse = get(r, &warehouse_key(w))?;
        let ytd = ytd(r, &warehouse_ytd_key(w))?;
        let mut district_ytd = 0;
        for d in 1..=DISTRICTS {
            let _: District = get(r, &district_key(w, d))?;
            let next_o_id = u32_value(r.read(&district_next_key(w, d))?, "D_NEXT_O_ID")?;
            district_ytd += self::ytd(r, &district_ytd_key(w, d))?;
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
            let new_orders = match (new.first(), new.last()) {
                (Some(&min), Some(&max)) => Some((min, max, new.len() as u64)),
                _ => None,
            };
            df.push(DistrictFacts {
                w,
                d,
                next_o_id,
                max_o,
                new_orders,
                ol_cnt_sum,
                lines: r.range(&district_order_lines(w, d), usize::MAX)?.len() as u64,
                delivery_cursor: Some(u32_value(
                    r.read(&delivery_cursor_key(w, d))?,
                    "delivery cursor",
                )?),
            });
        }
        wf.push(WarehouseFacts { w, ytd, district_ytd });
    }
    Ok((wf, df))
}

/// The year-to-date counter at `key` (which must exist).
fn ytd(r: &mut impl Reader, key: &[u8]) -> Result<i64, ProcError> {
    match r.read(key)? {
        Some(value) => txn::counter(key, Some(&value)),
        None => Err(ProcError::abort(format!("no year-to-date counter at {key:?}"))),
    }
}
