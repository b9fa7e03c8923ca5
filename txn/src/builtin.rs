//! Procedures every `sealdb` node registers ([`registry`]): `kv.put` and `kv.delete` for the
//! shell, and `list_append`, Jepsen's list-append workload, which checks histories of a
//! running cluster.
//!
//! `list_append` runs micro-ops on lists of integers stored under integer keys: read a list,
//! or append a value to one. Key `k` is stored as [`list_key`]`(k)`, which spreads keys
//! evenly over a [`ShardMap::uniform`](crate::ShardMap::uniform) map.
//!
//! Arguments, outputs and stored lists are the protobuf messages of `builtin.proto`
//! (`KvPutArgs`, `ListAppendArgs`, `ListAppendOutput`, `List`, ...), so a client in any
//! language encodes them from the `.proto` files alone; the functions here are the Rust
//! side's helpers.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use prost::Message;
use proto::v1;
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

/// Arguments a built-in procedure cannot decode: the call aborts, alike on every shard.
fn malformed(procedure: &str, e: prost::DecodeError) -> ProcError {
    ProcError::Abort(format!("{procedure} arguments: {e}"))
}

/// `kv.put` arguments (`KvPutArgs`).
pub fn put_args(key: &[u8], value: &[u8]) -> Vec<u8> {
    v1::KvPutArgs { key: key.to_vec(), value: value.to_vec() }.encode_to_vec()
}

/// `kv.delete` arguments (`KvDeleteArgs`).
pub fn delete_args(key: &[u8]) -> Vec<u8> {
    v1::KvDeleteArgs { key: key.to_vec() }.encode_to_vec()
}

/// The output of a procedure that returns nothing (`Empty`): no bytes.
fn empty() -> Vec<u8> {
    v1::Empty {}.encode_to_vec()
}

/// Writes one key (see [`put_args`]).
pub struct KvPut;

impl Procedure for KvPut {
    fn name(&self) -> &str {
        "kv.put"
    }
    fn ranges(&self, args: &[u8]) -> Result<Vec<KeyRange>, ProcError> {
        let args = v1::KvPutArgs::decode(args).map_err(|e| malformed("kv.put", e))?;
        Ok(vec![KeyRange::point(&args.key)])
    }
    fn run(&self, ctx: &mut dyn Context, args: &[u8]) -> Result<Vec<u8>, ProcError> {
        let args = v1::KvPutArgs::decode(args).map_err(|e| malformed("kv.put", e))?;
        ctx.put(&args.key, &args.value)?;
        Ok(empty())
    }
}

/// Deletes one key (see [`delete_args`]).
pub struct KvDelete;

impl Procedure for KvDelete {
    fn name(&self) -> &str {
        "kv.delete"
    }
    fn ranges(&self, args: &[u8]) -> Result<Vec<KeyRange>, ProcError> {
        let args = v1::KvDeleteArgs::decode(args).map_err(|e| malformed("kv.delete", e))?;
        Ok(vec![KeyRange::point(&args.key)])
    }
    fn run(&self, ctx: &mut dyn Context, args: &[u8]) -> Result<Vec<u8>, ProcError> {
        let args = v1::KvDeleteArgs::decode(args).map_err(|e| malformed("kv.delete", e))?;
        ctx.delete(&args.key)?;
        Ok(empty())
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

/// `list_append` arguments for `ops` (`ListAppendArgs`).
pub fn encode_list_ops(ops: &[ListOp]) -> Vec<u8> {
    use v1::list_op::Op;
    let ops = ops
        .iter()
        .map(|op| match *op {
            ListOp::Read(key) => v1::ListOp { key, op: Some(Op::Read(true)) },
            ListOp::Append(key, v) => v1::ListOp { key, op: Some(Op::Append(v)) },
        })
        .collect();
    v1::ListAppendArgs { ops }.encode_to_vec()
}

/// The micro-ops in `list_append` arguments.
pub fn decode_list_ops(args: &[u8]) -> Result<Vec<ListOp>, ProcError> {
    use v1::list_op::Op;
    let args = v1::ListAppendArgs::decode(args).map_err(|e| malformed("list_append", e))?;
    // Each read returns a whole list: many reads would make the output, not the work, grow
    // with the square of the call.
    if args.ops.len() > MAX_LIST_OPS {
        return Err(ProcError::Abort(format!(
            "list_append arguments: more than {MAX_LIST_OPS} micro-ops"
        )));
    }
    args.ops
        .into_iter()
        .map(|op| match op.op {
            Some(Op::Read(_)) => Ok(ListOp::Read(op.key)),
            Some(Op::Append(v)) => Ok(ListOp::Append(op.key, v)),
            None => Err(ProcError::Abort("list_append arguments: a micro-op of no kind".into())),
        })
        .collect()
}

/// A stored list (`List`); an absent key is the empty list.
pub fn decode_list(value: Option<&[u8]>) -> Result<Vec<u64>, prost::DecodeError> {
    Ok(v1::List::decode(value.unwrap_or_default())?.values)
}

/// A list as stored (`List`).
pub fn encode_list(list: &[u64]) -> Vec<u8> {
    v1::List { values: list.to_vec() }.encode_to_vec()
}

/// The lists a `list_append` call read, from its output (`ListAppendOutput`).
pub fn decode_list_output(output: &[u8]) -> Result<Vec<Vec<u64>>, prost::DecodeError> {
    Ok(v1::ListAppendOutput::decode(output)?.reads.into_iter().map(|l| l.values).collect())
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
                    let list = decode_list(stored.as_deref())
                        .map_err(|e| ProcError::Abort(format!("list {k} is not a list: {e}")))?;
                    e.insert((list, false))
                }
            };
            match op {
                ListOp::Read(_) => reads.push(v1::List { values: list.clone() }),
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
        Ok(v1::ListAppendOutput { reads }.encode_to_vec())
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

    /// Regression: the text output of a call with one read of an empty list was empty, the
    /// same as that of a call with no reads.
    #[test]
    fn outputs_of_no_reads_and_of_one_read_of_nothing_differ() {
        let mut ctx = Counting::default();
        let none = ListAppend.run(&mut ctx, &encode_list_ops(&[ListOp::Append(1, 5)])).unwrap();
        let one = ListAppend.run(&mut ctx, &encode_list_ops(&[ListOp::Read(2)])).unwrap();
        assert_eq!(decode_list_output(&none).unwrap(), Vec::<Vec<u64>>::new());
        assert_eq!(decode_list_output(&one).unwrap(), vec![Vec::<u64>::new()]);
    }

    #[test]
    fn arguments_that_are_not_the_message_abort_the_call() {
        let err = KvPut.ranges(b"\xff\xff\xff").unwrap_err();
        assert!(err.to_string().contains("kv.put arguments"), "{err}");
        assert!(ListAppend.ranges(b"\x0a\x02\x08").is_err(), "a truncated micro-op");
    }
}
