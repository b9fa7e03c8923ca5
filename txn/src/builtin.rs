//! Procedures every `sealdb` node registers ([`registry`]): `kv.put` and `kv.delete` for the
//! shell, and `list_append`, Jepsen's list-append workload, which checks histories of a
//! running cluster.
//!
//! `list_append` runs micro-ops on lists of integers stored under integer keys: read a list,
//! or append a value to one. Arguments are text, `r:3 a:5:17` (read key 3, append 17 to key
//! 5); the output is the lists read, in order, each as comma-separated values, separated by
//! `;`. Key `k` is stored as [`list_key`]`(k)`, which spreads keys evenly over a
//! [`ShardMap::uniform`](crate::ShardMap::uniform) map.

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
        let keys = decode_list_ops(args)?.into_iter().map(|op| match op {
            ListOp::Read(k) | ListOp::Append(k, _) => k,
        });
        Ok(keys.map(|k| KeyRange::point(&list_key(k))).collect())
    }
    fn run(&self, ctx: &mut dyn Context, args: &[u8]) -> Result<Vec<u8>, ProcError> {
        let mut reads = Vec::new();
        for op in decode_list_ops(args)? {
            let (ListOp::Read(k) | ListOp::Append(k, _)) = op;
            let stored = ctx.get(&list_key(k))?;
            let mut list = decode_list(stored.as_deref()).map_err(ProcError::Abort)?;
            match op {
                ListOp::Read(_) => reads.push(encode_list(&list)),
                ListOp::Append(_, v) => {
                    list.push(v);
                    ctx.put(&list_key(k), &encode_list(&list))?;
                }
            }
        }
        Ok(reads.join(&b";"[..]))
    }
}
