//! [`Request`]: what a log entry asks a shard to do, and its encoding in the log (the
//! `sealdb.v1.Entry` protobuf message).

use std::sync::Arc;

use clock::Timestamp;
use prost::Message;
use proto::v1;
use sequencer::{ClientId, Entry, ShardId};
use storage::{KeyRange, Limits};

use crate::error::TxnError;
use crate::outcome::AbortReason;
use crate::procedure::{Procedure, Registry};
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
            Request::Procedure { ranges, .. } => check_ranges(ranges, limits),
            Request::Interactive(c) => {
                c.reads.iter().try_for_each(|k| limits.check_key(k)).map_err(too_large)?;
                c.scans.iter().try_for_each(|r| limits.check_range(r)).map_err(too_large)?;
                let writes = c.writes.iter().map(|(k, v)| (k.as_slice(), v.as_deref()));
                limits.check_writes(writes).map_err(too_large)
            }
        }
    }

    /// The log payload, encoded straight into the shared buffer an [`sequencer::Entry`]
    /// holds. Consumes the request: its keys and values move into the message instead of
    /// being copied (a call's keys were copied twice more on their way to the log: into the
    /// message, then from a vector into the shared buffer).
    pub fn into_payload(self) -> Arc<[u8]> {
        let kind = match self {
            Request::Procedure { name, args, ranges } => {
                v1::entry::Kind::Procedure(v1::ProcedureCall {
                    name,
                    args,
                    ranges: ranges.into_iter().map(range_into_proto).collect(),
                })
            }
            Request::Interactive(c) => v1::entry::Kind::Interactive(v1::InteractiveCommit {
                read_ts: c.read_ts.as_u64(),
                reads: c
                    .reads
                    .into_iter()
                    .map(|key| v1::ReadVersion { key, version_ts: 0 })
                    .collect(),
                scans: c.scans.into_iter().map(range_into_proto).collect(),
                writes: c.writes.into_iter().map(|(key, value)| v1::Write { key, value }).collect(),
            }),
        };
        let entry = v1::Entry { client_id: Vec::new(), kind: Some(kind) };
        // One allocation of exactly the encoded length (`repeat_n` is of known length).
        let mut payload: Arc<[u8]> = std::iter::repeat_n(0, entry.encoded_len()).collect();
        let mut buf = Arc::get_mut(&mut payload).expect("a payload just made has no other owner");
        entry.encode(&mut buf).expect("the buffer holds the encoded length");
        debug_assert!(buf.is_empty(), "the encoding filled the buffer");
        payload
    }

    /// The log's entry for this request from `client_id`, to `participants`. A procedure
    /// call is encoded from a reference and kept whole beside its payload
    /// ([`Entry::decoded`]), so the shards running it in this process need not decode it; an
    /// interactive commit's keys and values move into its payload ([`Request::into_payload`])
    /// and nothing is kept.
    pub fn into_entry(self, client_id: ClientId, participants: Vec<ShardId>) -> Entry {
        match self {
            Request::Procedure { ref name, ref args, ref ranges } => {
                let payload = procedure_payload(name, args, ranges);
                Entry::new(client_id, participants, payload).with_decoded(Arc::new(self))
            }
            interactive => Entry::new(client_id, participants, interactive.into_payload()),
        }
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

/// [`Request::into_payload`]'s bytes for a procedure call, written from references: the
/// `sealdb.v1.Entry` message holding a `ProcedureCall`, fields in tag order, empty scalars
/// left out as protobuf 3 leaves them.
fn procedure_payload(name: &str, args: &[u8], ranges: &[KeyRange]) -> Arc<[u8]> {
    use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};
    let field_len = |tag: u32, len: usize| key_len(tag) + encoded_len_varint(len as u64) + len;
    let put_head = |tag: u32, len: usize, buf: &mut &mut [u8]| {
        encode_key(tag, WireType::LengthDelimited, buf);
        encode_varint(len as u64, buf);
    };
    let put = |tag: u32, bytes: &[u8], buf: &mut &mut [u8]| {
        put_head(tag, bytes.len(), buf);
        prost::bytes::BufMut::put_slice(buf, bytes);
    };
    let range_len = |r: &KeyRange| {
        let start = if r.start.is_empty() { 0 } else { field_len(1, r.start.len()) };
        start + r.end.as_ref().map_or(0, |e| field_len(2, e.len()))
    };
    let call_len = if name.is_empty() { 0 } else { field_len(1, name.len()) }
        + if args.is_empty() { 0 } else { field_len(2, args.len()) }
        + ranges.iter().map(|r| field_len(3, range_len(r))).sum::<usize>();
    let mut payload: Arc<[u8]> = std::iter::repeat_n(0, field_len(2, call_len)).collect();
    let mut buf = Arc::get_mut(&mut payload).expect("a payload just made has no other owner");
    put_head(2, call_len, &mut buf);
    if !name.is_empty() {
        put(1, name.as_bytes(), &mut buf);
    }
    if !args.is_empty() {
        put(2, args, &mut buf);
    }
    for r in ranges {
        put_head(3, range_len(r), &mut buf);
        if !r.start.is_empty() {
            put(1, &r.start, &mut buf);
        }
        if let Some(end) = &r.end {
            put(2, end, &mut buf);
        }
    }
    debug_assert!(buf.is_empty(), "the encoding filled the buffer");
    payload
}

/// The request calling procedure `name` of `registry` with `args`, with the key ranges the
/// procedure declares for them, in key order.
pub fn procedure_request(
    registry: &Registry,
    name: &str,
    args: &[u8],
) -> Result<Request, TxnError> {
    let (_, ranges) = declared_ranges(registry, name, args)?;
    Ok(Request::Procedure { name: name.to_string(), args: args.to_vec(), ranges })
}

/// Procedure `name` and the key ranges a call of it with `args` declares, in key order (so
/// the shards that check each key against them need not sort them; they still would for a
/// caller that sent them otherwise).
pub fn declared_ranges<'r>(
    registry: &'r Registry,
    name: &str,
    args: &[u8],
) -> Result<(&'r Arc<dyn Procedure>, Vec<KeyRange>), TxnError> {
    let procedure =
        registry.get(name).ok_or_else(|| TxnError::UnknownProcedure(name.to_string()))?;
    let mut ranges =
        procedure.ranges(args).map_err(|e| TxnError::Aborted(AbortReason::User(e.to_string())))?;
    ranges.sort_by(|a, b| a.start.cmp(&b.start));
    Ok((procedure, ranges))
}

/// A procedure call's declared ranges, checked: at least one, each within the limits.
pub(crate) fn check_ranges(ranges: &[KeyRange], limits: &Limits) -> Result<(), AbortReason> {
    if ranges.is_empty() {
        return Err(AbortReason::Malformed("a procedure call declares no key".into()));
    }
    let too_large = |e: storage::StorageError| AbortReason::TooLarge(e.to_string());
    ranges.iter().try_for_each(|r| limits.check_range(r)).map_err(too_large)
}

/// The error a caller gets for a request [`Request::check`] refused, or a read-only call that
/// aborted ([`crate::call_read_only`]).
pub fn refused(reason: AbortReason) -> TxnError {
    match reason {
        AbortReason::TooLarge(why) => TxnError::TooLarge(why),
        AbortReason::UnknownProcedure(name) => TxnError::UnknownProcedure(name),
        reason => TxnError::Aborted(reason),
    }
}

/// The shards `request` touches, in order; refused if none. The shards of
/// [`Request::ranges`], found without copying them.
pub fn participants(map: &ShardMap, request: &Request) -> Result<Vec<ShardId>, TxnError> {
    let mut p: Vec<ShardId> = Vec::new();
    match request {
        Request::Procedure { ranges, .. } => {
            p.extend(ranges.iter().flat_map(|r| map.shards_in(r)));
        }
        Request::Interactive(c) => {
            // A key's point range lies in the key's shard.
            p.extend(c.reads.iter().map(|k| map.shard_of(k)));
            p.extend(c.scans.iter().flat_map(|r| map.shards_in(r)));
            p.extend(c.writes.iter().map(|(k, _)| map.shard_of(k)));
        }
    }
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
    range_into_proto(r.clone())
}

/// [`range_to_proto`] of a range given up.
fn range_into_proto(r: KeyRange) -> v1::KeyRange {
    v1::KeyRange { start: r.start, end: r.end }
}

/// A key range from the wire.
pub fn range_from_proto(r: v1::KeyRange) -> KeyRange {
    KeyRange { start: r.start, end: r.end }
}

#[cfg(test)]
mod tests {
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
            let payload = request.clone().into_payload();
            assert_eq!(Request::decode(&payload), Ok(request.clone()));
            assert_eq!(Request::decode_shared(payload), Ok(request));
        }
        for garbage in [vec![0xff; 9], vec![0x0a, 0x05, 1]] {
            let refused = Request::decode(&garbage);
            assert!(refused.is_err(), "{garbage:?}");
            assert_eq!(Request::decode_shared(garbage), refused);
        }
    }

    /// The participants found without copying are the shards of [`Request::ranges`], over
    /// maps and requests drawn at random (keys over a small alphabet, so they fall on and
    /// beside splits; empty keys and ranges among them).
    #[test]
    fn participants_are_the_shards_of_the_request_ranges() {
        use rand::rngs::StdRng;
        use rand::{Rng, SeedableRng};
        for seed in 0..20u64 {
            eprintln!("seed {seed}");
            let mut rng = StdRng::seed_from_u64(seed);
            let key = |rng: &mut StdRng| -> Vec<u8> {
                (0..rng.random_range(0..3)).map(|_| rng.random_range(b'a'..b'e')).collect()
            };
            let mut splits: Vec<Vec<u8>> = (0..rng.random_range(0..6))
                .map(|_| key(&mut rng))
                .filter(|k| !k.is_empty())
                .collect();
            splits.sort();
            splits.dedup();
            let map = ShardMap::new(splits).expect("sorted, distinct, non-empty splits");
            let range = |rng: &mut StdRng| match rng.random_range(0..4) {
                0 => KeyRange::point(&key(rng)),
                1 => KeyRange::prefix(&key(rng)),
                2 => KeyRange { start: key(rng), end: Some(key(rng)) },
                _ => KeyRange::from(key(rng)),
            };
            for _ in 0..200 {
                let request = match rng.random_bool(0.5) {
                    true => Request::Procedure {
                        name: "p".into(),
                        args: Vec::new(),
                        ranges: (0..rng.random_range(0..4)).map(|_| range(&mut rng)).collect(),
                    },
                    false => Request::Interactive(InteractiveCommit {
                        read_ts: Timestamp::from_u64(1),
                        reads: (0..rng.random_range(0..3)).map(|_| key(&mut rng)).collect(),
                        scans: (0..rng.random_range(0..3)).map(|_| range(&mut rng)).collect(),
                        writes: (0..rng.random_range(0..3))
                            .map(|_| (key(&mut rng), None))
                            .collect(),
                    }),
                };
                let mut expected: Vec<ShardId> =
                    request.ranges().iter().flat_map(|r| map.shards_of(r)).collect();
                expected.sort_unstable();
                expected.dedup();
                match participants(&map, &request) {
                    Ok(found) => assert_eq!(found, expected, "{request:?} over {map:?}"),
                    Err(_) => assert!(expected.is_empty(), "{request:?} over {map:?}"),
                }
            }
        }
    }

    /// A procedure call's entry holds the bytes `into_payload` makes, written from references
    /// (empty names, arguments, starts and ends among the calls; keys long enough for
    /// multi-byte lengths), and keeps the call; an interactive commit's keeps nothing.
    /// Seeded; the seed is printed.
    #[test]
    fn an_entrys_payload_is_the_encoding_and_a_procedure_call_is_kept() {
        use rand::rngs::StdRng;
        use rand::{Rng, SeedableRng};
        for seed in 0..5u64 {
            eprintln!("seed {seed}");
            let mut rng = StdRng::seed_from_u64(seed);
            let bytes = |rng: &mut StdRng| -> Vec<u8> {
                let len = [0, 1, 3, 127, 128, 300][rng.random_range(0..6)];
                (0..len).map(|_| rng.random()).collect()
            };
            for _ in 0..300 {
                let request = Request::Procedure {
                    name: ["", "p", "new_order"][rng.random_range(0..3)].into(),
                    args: bytes(&mut rng),
                    ranges: (0..rng.random_range(0..40))
                        .map(|_| KeyRange {
                            start: bytes(&mut rng),
                            end: rng.random_bool(0.7).then(|| bytes(&mut rng)),
                        })
                        .collect(),
                };
                let entry = request.clone().into_entry(ClientId(3), vec![ShardId(1)]);
                assert_eq!(entry.payload, request.clone().into_payload(), "{request:?}");
                let kept = entry.decoded.expect("a procedure call is kept");
                assert_eq!(kept.downcast_ref::<Request>(), Some(&request));
                assert_eq!(Request::decode(&entry.payload), Ok(request));
            }
        }
        let interactive = Request::Interactive(InteractiveCommit {
            read_ts: Timestamp::from_u64(7),
            reads: vec![b"r".to_vec()],
            scans: Vec::new(),
            writes: vec![(b"w".to_vec(), Some(b"v".to_vec()))],
        });
        let entry = interactive.clone().into_entry(ClientId(3), vec![ShardId(1)]);
        assert!(entry.decoded.is_none());
        assert_eq!(Request::decode(&entry.payload), Ok(interactive));
    }
}
