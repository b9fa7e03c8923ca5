//! The bank workload's procedures: transfers between accounts spread over every shard, and
//! an audit that reads every balance. Money is neither made nor lost, so every committed
//! audit sees the same total.

use std::sync::Arc;

use storage::KeyRange;
use txn::{Context, ProcError, Procedure, Registry};

/// Accounts, two per shard of a three-shard uniform map.
pub const ACCOUNTS: u8 = 6;

/// What every account holds before its first transfer.
pub const OPENING_BALANCE: u64 = 100;

/// The total every audit must see.
pub const TOTAL: u64 = OPENING_BALANCE * ACCOUNTS as u64;

/// Where account `i` is: spread evenly over the first key byte, so over the shards of
/// `ShardMap::uniform`.
pub fn account(i: u8) -> Vec<u8> {
    vec![(u32::from(i) * 256 / u32::from(ACCOUNTS)) as u8, b'$', i]
}

/// The range holding exactly account `i` and keys under it. It is not a point, so the
/// audit's reads of other shards are not prefetched: they exercise the step's second round.
pub fn account_range(i: u8) -> KeyRange {
    let mut end = account(i);
    end.push(0xff);
    KeyRange { start: account(i), end: Some(end) }
}

fn balance(value: Option<Vec<u8>>) -> Result<u64, ProcError> {
    match value {
        None => Ok(OPENING_BALANCE),
        Some(v) => Ok(u64::from_le_bytes(
            v.try_into().map_err(|_| ProcError::abort("a balance is 8 bytes"))?,
        )),
    }
}

/// `transfer` arguments: from, to, amount.
pub fn transfer_args(from: u8, to: u8, amount: u64) -> Vec<u8> {
    let mut args = vec![from, to];
    args.extend_from_slice(&amount.to_le_bytes());
    args
}

/// Moves an amount between two accounts; aborts if the payer has too little.
struct Transfer;

impl Procedure for Transfer {
    fn name(&self) -> &str {
        "transfer"
    }

    fn ranges(&self, args: &[u8]) -> Result<Vec<KeyRange>, ProcError> {
        let [from, to, ..] = args else { return Err(ProcError::abort("transfer: short args")) };
        Ok(vec![KeyRange::point(&account(*from)), KeyRange::point(&account(*to))])
    }

    fn run(&self, ctx: &mut dyn Context, args: &[u8]) -> Result<Vec<u8>, ProcError> {
        let (from, to) = (account(args[0]), account(args[1]));
        let amount = u64::from_le_bytes(
            args[2..].try_into().map_err(|_| ProcError::abort("transfer: bad amount"))?,
        );
        let payer = balance(ctx.get(&from)?)?;
        if payer < amount {
            return Err(ProcError::abort("insufficient funds"));
        }
        let payee = balance(ctx.get(&to)?)?;
        ctx.put(&from, &(payer - amount).to_le_bytes())?;
        ctx.put(&to, &(payee + amount).to_le_bytes())?;
        Ok(Vec::new())
    }
}

/// Reads every balance (by scans of ranges, not declared points) and returns them.
struct Audit;

impl Procedure for Audit {
    fn name(&self) -> &str {
        "audit"
    }

    fn ranges(&self, _: &[u8]) -> Result<Vec<KeyRange>, ProcError> {
        Ok((0..ACCOUNTS).map(account_range).collect())
    }

    fn run(&self, ctx: &mut dyn Context, _: &[u8]) -> Result<Vec<u8>, ProcError> {
        let mut out = Vec::new();
        for i in 0..ACCOUNTS {
            let rows = ctx.scan(&account_range(i), 2)?;
            let value = rows.into_iter().find(|(k, _)| *k == account(i)).map(|(_, v)| v);
            out.extend_from_slice(&balance(value)?.to_le_bytes());
        }
        Ok(out)
    }
}

/// The balances an audit returned.
pub fn audited(output: &[u8]) -> Vec<u64> {
    output.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes"))).collect()
}

/// The balance stored in an account's value.
pub fn stored_balance(value: Option<Vec<u8>>) -> u64 {
    balance(value).expect("a stored balance")
}

/// The bank's procedures and list-append.
pub fn registry() -> Registry {
    let mut registry = txn::builtin::registry();
    registry.register(Arc::new(Transfer));
    registry.register(Arc::new(Audit));
    registry
}
