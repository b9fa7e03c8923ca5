//! Procedures every `sealdb` node registers ([`registry`]): `kv.put` and `kv.delete` for the
//! shell, and `list_append`, Jepsen's list-append workload, which checks histories of a
//! running cluster.
//!
//! `list_append` runs micro-ops on lists of integers stored under integer keys: read a list,
//! or append a value to one. Arguments are text, `r:3 a:5:17` (read key 3, append 17 to key
//! 5); the output is the lists read, in order, each as comma-separated values, separated by
//! `;`. Key `k` is stored as [`list_key`]`(k)`, which spreads keys evenly over a
//! [`ShardMap::uniform`](crate::ShardMap::uniform) map.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use storage::KeyRange;

use crate::procedure::{Context, ProcError, Procedure, Registry};

/// The procedures the `sealdb` binary registers.
pub fn registry() -> Registry {
    let mut registry = Registry::new();
    registry.register(Arc::new(KvPut));
    registry.register(Arc::new(KvDelete));
    registry.register(Arc::new(ListAppend));
    registry
}

/// `kv.put` arguments: the key's length (u32, little-endian), the key, the value.
pub fn put_args(key: &[u8], value: &[u8]) -> Vec<u8> {
    let mut args = (key.len() as u32).to_le_bytes().to_vec();
    args.extend_from_slice(key);
    args.extend_from_slice(value);
    args
}

fn split_put_args(args: &[u8]) -> Result<(&[u8], &[u8]), ProcError> {
    let bad = || ProcError::Abort("kv.put arguments: u32 key length, key, value".into());
    let (len, rest) = args.split_first_chunk::<4>().ok_or_else(bad)?;
    let len = u32::from_le_bytes(*len) as usize;
    if rest.len() < len {
        return Err(bad());
    }
    Ok(rest.split_at(len))
}

/// Writes one key (see [`put_args`]).
pub struct KvPut;

impl Procedure for KvPut {
    fn name(&self) -> &str {
        "kv.put"
    }
    fn ranges(&self, args: &[u8]) -> Result<Vec<KeyRange>, ProcError> {
        Ok(vec![KeyRange::point(split_put_args(args)?.0)])
    }
    fn run(&self, ctx: &mut dyn Context, args: &[u8]) -> Result<Vec<u8>, ProcError> {
        let (key, value) = split_put_args(args)?;
        ctx.put(key, value)?;
        Ok(Vec::new())
    }
}

/// Deletes one key; the arguments are the key.
pub struct KvDelete;

impl Procedure for KvDelete {
    fn name(&self) -> &str {
        "kv.delete"
    }
    fn ranges(&self, args: &[u8]) -> Result<Vec<KeyRange>, ProcError> {
        Ok(vec![KeyRange::point(args)])
    }
    fn run(&self, ctx: &mut dyn Context, args: &[u8]) -> Result<Vec<u8>, ProcError> {
        ctx.delete(args)?;
        Ok(Vec::new())
    }
}

/// One list-append micro-op.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListOp {
    /// Read key `k`'s list.
    Read(u64),
    /// Append a value to key `k`'s list.
    Append(u64, u64),
}

/// Where key `k`'s list is stored: a scrambled first eight bytes, so keys spread over shards.
pub fn list_key(k: u64) -> Vec<u8> {
    let mut key = k.wrapping_mul(0x9e37_79b9_7f4a_7c15).to_be_bytes().to_vec();
    key.extend_from_slice(b"/list");
    key
}

/// The most micro-ops one `list_append` call may hold.
pub const MAX_LIST_OPS: usize = 1_000;

/// `list_append` arguments for `ops`.
pub fn encode_list_ops(ops: &[ListOp]) -> Vec<u8> {
    let parts: Vec<String> = ops
        .iter()
        .map(|op| match op {
            ListOp::Read(k) => format!("r:{k}"),
            ListOp::Append(k, v) => format!("a:{k}:{v}"),
        })
        .collect();
    parts.join(" ").into_bytes()
}

/// The micro-ops in `list_append` arguments.
pub fn decode_list_ops(args: &[u8]) -> Result<Vec<ListOp>, ProcError> {
    let bad = |what: &str| ProcError::Abort(format!("list_append arguments: {what}"));
    let text = std::str::from_utf8(args).map_err(|_| bad("not UTF-8"))?;
    // Each read returns a whole list: many reads would make the output, not the work, grow
    // with the square of the call.
    if text.split(' ').count() > MAX_LIST_OPS {
        return Err(bad(&format!("more than {MAX_LIST_OPS} micro-ops")));
    }
    text.split(' ')
        .map(|op| {
            let number = |s: &str| s.parse::<u64>().map_err(|_| bad(op));
            match op.split(':').collect::<Vec<_>>().as_slice() {
                ["r", k] => Ok(ListOp::Read(number(k)?)),
                ["a", k, v] => Ok(ListOp::Append(number(k)?, number(v)?)),
                _ => Err(bad(op)),
            }
        })
        .collect()
}

/// A stored list.
pub fn decode_list(value: Option<&[u8]>) -> Result<Vec<u64>, String> {
    match value {
        None | Some(b"") => Ok(Vec::new()),
        Some(v) => std::str::from_utf8(v)
            .map_err(|_| "a list that is not UTF-8".to_string())?
            .split(',')
            .map(|x| x.parse().map_err(|_| format!("a list holding {x:?}")))
            .collect(),
    }
}

/// A list as stored.
pub fn encode_list(list: &[u64]) -> Vec<u8> {
    list.iter().map(u64::to_string).collect::<Vec<_>>().join(",").into_bytes()
}

/// The lists a `list_append` call read, from its output.
pub fn decode_list_output(output: &[u8]) -> Result<Vec<Vec<u64>>, String> {
    let text = std::str::from_utf8(output).map_err(|_| "output is not UTF-8".to_string())?;
    text.split(';').map(|list| decode_list(Some(list.as_bytes()))).collect()
}

/// Jepsen's list-append transaction (see the module's documentation).
pub struct ListAppend;

impl Procedure for ListAppend {
    fn name(&self) -> &str {
        "list_append"
    }
    fn ranges(&self, args: &[u8]) -> Result<Vec<KeyRange>, ProcError> {
        let keys: BTreeSet<u64> = decode_list_ops(args)?
            .into_iter()
            .map(|op| match op {
                ListOp::Read(k) | ListOp::Append(k, _) => k,
            })
            .collect();
        Ok(keys.into_iter().map(|k| KeyRange::point(&list_key(k))).collect())
    }
    /// Each list is read once and written once, whatever the number of micro-ops: work is
    /// linear in the arguments and the lists' lengths.
    fn run(&self, ctx: &mut dyn Context, args: &[u8]) -> Result<Vec<u8>, ProcError> {
        let mut lists: BTreeMap<u64, (Vec<u64>, bool)> = BTreeMap::new();
        let mut reads = Vec::new();
        for op in decode_list_ops(args)? {
            let (ListOp::Read(k) | ListOp::Append(k, _)) = op;
            let (list, changed) = match lists.entry(k) {
                Entry::Occupied(e) => e.into_mut(),
                Entry::Vacant(e) => {
                    let stored = ctx.get(&list_key(k))?;
                    let list = decode_list(stored.as_deref()).map_err(ProcError::Abort)?;
                    e.insert((list, false))
                }
            };
            match op {
                ListOp::Read(_) => reads.push(encode_list(list)),
                ListOp::Append(_, v) => {
                    list.push(v);
                    *changed = true;
                }
            }
        }
        for (k, (list, changed)) in lists {
            if changed {
                ctx.put(&list_key(k), &encode_list(&list))?;
            }
        }
        Ok(reads.join(&b";"[..]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A context over a map that counts reads and writes.
    #[derive(Default)]
    struct Counting {
        data: BTreeMap<Vec<u8>, Vec<u8>>,
        gets: usize,
        puts: usize,
    }

    impl Context for Counting {
        fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, ProcError> {
            self.gets += 1;
            Ok(self.data.get(key).cloned())
        }
        fn scan(&mut self, _: &KeyRange, _: usize) -> Result<crate::Rows, ProcError> {
            unreachable!("list_append does not scan")
        }
        fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), ProcError> {
            self.puts += 1;
            self.data.insert(key.to_vec(), value.to_vec());
            Ok(())
        }
        fn delete(&mut self, _: &[u8]) -> Result<(), ProcError> {
            unreachable!("list_append does not delete")
        }
        fn now(&self) -> clock::Timestamp {
            clock::Timestamp::ZERO
        }
    }

    /// Regression: each append read, decoded, re-encoded and wrote the whole list, so one call
    /// of 16,000 appends to one key froze its shard for seconds (quadratic work). Now each
    /// list is read and written once per call.
    #[test]
    fn a_call_reads_and_writes_each_list_once_whatever_its_length() {
        let mut ops: Vec<ListOp> =
            (0..MAX_LIST_OPS as u64 - 2).map(|v| ListOp::Append(1, v)).collect();
        ops.insert(10, ListOp::Read(1));
        ops.push(ListOp::Append(2, 7));
        let mut ctx = Counting::default();
        let output = ListAppend.run(&mut ctx, &encode_list_ops(&ops)).unwrap();
        assert_eq!((ctx.gets, ctx.puts), (2, 2), "one read and one write per key");
        assert_eq!(decode_list_output(&output).unwrap(), vec![(0..10).collect::<Vec<u64>>()]);
        let stored = decode_list(ctx.data.get(&list_key(1)).map(Vec::as_slice)).unwrap();
        assert_eq!(stored, (0..MAX_LIST_OPS as u64 - 2).collect::<Vec<_>>());
        assert_eq!(ListAppend.ranges(&encode_list_ops(&ops)).unwrap().len(), 2, "one range a key");
    }

    #[test]
    fn a_call_of_more_micro_ops_than_the_bound_is_refused() {
        let ops: Vec<ListOp> = (0..=MAX_LIST_OPS as u64).map(|v| ListOp::Append(1, v)).collect();
        let err = ListAppend.ranges(&encode_list_ops(&ops)).unwrap_err();
        assert!(err.to_string().contains("more than 1000 micro-ops"), "{err}");
    }
}
