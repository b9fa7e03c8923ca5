//! [`Request`]: what a log entry asks a shard to do, and its encoding in the log (the
//! `sealdb.v1.Entry` protobuf message).

use clock::Timestamp;
use prost::Message;
use proto::v1;
use sequencer::ShardId;
use storage::{KeyRange, Limits};

use crate::error::TxnError;
use crate::outcome::AbortReason;
use crate::procedure::Registry;
use crate::shard_map::ShardMap;

/// A read-write transaction as it travels through the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// A call of a registered procedure.
    Procedure {
        /// The procedure's name.
        name: String,
        /// Its arguments.
        args: Vec<u8>,
        /// The key ranges it declared.
        ranges: Vec<KeyRange>,
    },
    /// The commit of an optimistic interactive transaction.
    Interactive(InteractiveCommit),
}

/// A log payload that is not a request: every shard that reads it finds the same, and aborts
/// the entry alike.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed entry: {0}")]
pub struct MalformedEntry(pub String);

/// What an interactive transaction did, for validation and apply.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct InteractiveCommit {
    /// The snapshot it read at.
    pub read_ts: Timestamp,
    /// Keys it read (absent keys included).
    pub reads: Vec<Vec<u8>>,
    /// Ranges it scanned.
    pub scans: Vec<KeyRange>,
    /// Its writes: `None` deletes.
    pub writes: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

impl Request {
    /// The key ranges the request touches, for routing.
    pub fn ranges(&self) -> Vec<KeyRange> {
        match self {
            Request::Procedure { ranges, .. } => ranges.clone(),
            Request::Interactive(c) => {
                let point = |k: &Vec<u8>| KeyRange::point(k);
                c.reads
                    .iter()
                    .map(point)
                    .chain(c.scans.iter().cloned())
                    .chain(c.writes.iter().map(|(k, _)| point(k)))
                    .collect()
            }
        }
    }

    /// Refuses a request no shard could run within `limits`: a key, range bound or value
    /// over the limits, or more bytes of writes than one transaction may make. The sequencer
    /// refuses such a request before it is logged; a shard that finds one in the log anyway
    /// (an older node logged it) aborts it, the same way on every participant, before it
    /// reads anything. Sizes only: whether a procedure exists, and what it writes, are
    /// decided when it runs.
    pub fn check(&self, limits: &Limits) -> Result<(), AbortReason> {
        let too_large = |e: storage::StorageError| AbortReason::TooLarge(e.to_string());
        match self {
            Request::Procedure { ranges, .. } => {
                if ranges.is_empty() {
                    return Err(AbortReason::Malformed("a procedure call declares no key".into()));
                }
                ranges.iter().try_for_each(|r| limits.check_range(r)).map_err(too_large)
            }
            Request::Interactive(c) => {
                c.reads.iter().try_for_each(|k| limits.check_key(k)).map_err(too_large)?;
                c.scans.iter().try_for_each(|r| limits.check_range(r)).map_err(too_large)?;
                let writes = c.writes.iter().map(|(k, v)| (k.as_slice(), v.as_deref()));
                limits.check_writes(writes).map_err(too_large)
            }
        }
    }

    /// The log payload.
    pub fn encode(&self) -> Vec<u8> {
        let kind = match self {
            Request::Procedure { name, args, ranges } => {
                v1::entry::Kind::Procedure(v1::ProcedureCall {
                    name: name.clone(),
                    args: args.clone(),
                    ranges: ranges.iter().map(range_to_proto).collect(),
                })
            }
            Request::Interactive(c) => v1::entry::Kind::Interactive(v1::InteractiveCommit {
                read_ts: c.read_ts.as_u64(),
                reads: c
                    .reads
                    .iter()
                    .map(|k| v1::ReadVersion { key: k.clone(), version_ts: 0 })
                    .collect(),
                scans: c.scans.iter().map(range_to_proto).collect(),
                writes: c
                    .writes
                    .iter()
                    .map(|(k, v)| v1::Write { key: k.clone(), value: v.clone() })
                    .collect(),
            }),
        };
        v1::Entry { client_id: Vec::new(), kind: Some(kind) }.encode_to_vec()
    }

    /// Decodes a log payload. An undecodable payload is a deterministic error: every shard
    /// refuses the same entry.
    pub fn decode(payload: &[u8]) -> Result<Request, MalformedEntry> {
        Request::decode_shared(prost::bytes::Bytes::copy_from_slice(payload))
    }

    /// [`Request::decode`] of a payload held in shared memory (a log entry's, say), without
    /// copying it. From a shared buffer each key and value is copied once, into its own
    /// vector; from a plain slice, prost copies each into a buffer of its own first (an
    /// allocation, a copy and a free more for every key of every declared range: a TPC-C
    /// New-Order declares over thirty ranges).
    pub fn decode_shared(
        payload: impl AsRef<[u8]> + Send + 'static,
    ) -> Result<Request, MalformedEntry> {
        let payload = prost::bytes::Bytes::from_owner(payload);
        let entry = v1::Entry::decode(payload).map_err(|e| MalformedEntry(e.to_string()))?;
        match entry.kind {
            Some(v1::entry::Kind::Procedure(p)) => Ok(Request::Procedure {
                name: p.name,
                args: p.args,
                ranges: p.ranges.into_iter().map(range_from_proto).collect(),
            }),
            Some(v1::entry::Kind::Interactive(c)) => Ok(Request::Interactive(InteractiveCommit {
                read_ts: Timestamp::from_u64(c.read_ts),
                reads: c.reads.into_iter().map(|r| r.key).collect(),
                scans: c.scans.into_iter().map(range_from_proto).collect(),
                writes: c.writes.into_iter().map(|w| (w.key, w.value)).collect(),
            })),
            None => Err(MalformedEntry("no transaction in it".into())),
        }
    }
}

/// The request calling procedure `name` of `registry` with `args`, with the key ranges the
/// procedure declares for them.
pub fn procedure_request(
    registry: &Registry,
    name: &str,
    args: &[u8],
) -> Result<Request, TxnError> {
    let procedure =
        registry.get(name).ok_or_else(|| TxnError::UnknownProcedure(name.to_string()))?;
    let ranges =
        procedure.ranges(args).map_err(|e| TxnError::Aborted(AbortReason::User(e.to_string())))?;
    Ok(Request::Procedure { name: name.to_string(), args: args.to_vec(), ranges })
}

/// The error a caller gets for a request [`Request::check`] refused.
pub fn refused(reason: AbortReason) -> TxnError {
    match reason {
        AbortReason::TooLarge(why) => TxnError::TooLarge(why),
        reason => TxnError::Aborted(reason),
    }
}

/// The shards `request` touches, in order; refused if none.
pub fn participants(map: &ShardMap, request: &Request) -> Result<Vec<ShardId>, TxnError> {
    let mut p: Vec<ShardId> = request.ranges().iter().flat_map(|r| map.shards_of(r)).collect();
    p.sort_unstable();
    p.dedup();
    if p.is_empty() {
        return Err(TxnError::Aborted(AbortReason::Malformed(
            "the transaction touches no key".into(),
        )));
    }
    Ok(p)
}

/// A key range on the wire.
pub fn range_to_proto(r: &KeyRange) -> v1::KeyRange {
    v1::KeyRange { start: r.start.clone(), end: r.end.clone() }
}

/// A key range from the wire.
pub fn range_from_proto(r: v1::KeyRange) -> KeyRange {
    KeyRange { start: r.start, end: r.end }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    /// A payload decodes to the same request, or the same refusal, from a slice or shared.
    #[test]
    fn a_payload_decodes_the_same_from_a_slice_or_shared() {
        let procedure = Request::Procedure {
            name: "p".into(),
            args: vec![1, 2, 3],
            ranges: vec![KeyRange::point(b"a"), KeyRange::from(b"b\0".to_vec()), KeyRange::all()],
        };
        let interactive = Request::Interactive(InteractiveCommit {
            read_ts: Timestamp::from_u64(7),
            reads: vec![b"r".to_vec(), Vec::new()],
            scans: vec![KeyRange::prefix(b"s")],
            writes: vec![(b"w".to_vec(), Some(b"v".to_vec())), (b"x".to_vec(), None)],
        });
        for request in [procedure, interactive] {
            let payload: Arc<[u8]> = request.encode().into();
            assert_eq!(Request::decode(&payload), Ok(request.clone()));
            assert_eq!(Request::decode_shared(payload), Ok(request));
        }
        for garbage in [vec![0xff; 9], vec![0x0a, 0x05, 1]] {
            let refused = Request::decode(&garbage);
            assert!(refused.is_err(), "{garbage:?}");
            assert_eq!(Request::decode_shared(garbage), refused);
        }
    }
}
