//! [`StorageKey`]: the typed keys storage writes to an engine, and their encoding.

use clock::{Epoch, Timestamp};

use crate::keycode::{DecodeError, KeyDecoder, KeyEncoder, escaped_len};

const META: u8 = 0x00;
const VERSION: u8 = 0x01;

/// A key in a shard's engine. All engine bytes are the encoding of one of these.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageKey<'a> {
    /// Shard bookkeeping, outside the user key space.
    Meta(MetaKey),
    /// One version of a user key, written at `ts`. Versions of a key sort newest first.
    Version {
        /// The user key.
        key: &'a [u8],
        /// The commit timestamp of this version.
        ts: Timestamp,
    },
}

/// Names of bookkeeping records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum MetaKey {
    /// The last window whose writes are applied (the watermark).
    AppliedWindow,
    /// Entries the shard deferred to the window after its watermark.
    Deferred,
    /// The shard's local verdicts on the multi-shard entries of a window, for participants
    /// that replay the window after a crash.
    Verdicts(Epoch),
    /// The chained digest of every window applied so far (16 bytes): equal on replicas that
    /// applied the same windows.
    Digest,
    /// The outcome of the transaction submitted under a client id, kept for the retention
    /// period by the shard that is its lowest participant.
    Outcome(u128),
    /// The client ids whose outcomes window `e` decided, with the window's timestamp: what
    /// expires together.
    OutcomesOf(Epoch),
    /// The garbage-collection horizon: reads below it are refused, versions only they could
    /// see may be gone.
    GcHorizon,
}

impl MetaKey {
    fn encode(self, e: KeyEncoder) -> KeyEncoder {
        match self {
            MetaKey::AppliedWindow => e.u8(0x01),
            MetaKey::Deferred => e.u8(0x02),
            MetaKey::Verdicts(epoch) => e.u8(0x03).u64(epoch.0),
            MetaKey::Digest => e.u8(0x04),
            MetaKey::Outcome(id) => e.u8(0x05).u64((id >> 64) as u64).u64(id as u64),
            MetaKey::OutcomesOf(epoch) => e.u8(0x06).u64(epoch.0),
            MetaKey::GcHorizon => e.u8(0x07),
        }
    }
}

/// The engine key of `key`'s version at `ts` (tag, escaped key, terminator, timestamp), in a
/// buffer with room for `more` bytes after it: allocated once.
fn version_key(key: &[u8], ts: Timestamp, more: usize) -> KeyEncoder {
    version_fields(KeyEncoder::with_capacity(escaped_len(key) + 11 + more), key, ts)
}

fn version_fields(e: KeyEncoder, key: &[u8], ts: Timestamp) -> KeyEncoder {
    e.u8(VERSION).bytes(key).u64_desc(ts.as_u64())
}

impl StorageKey<'_> {
    /// The engine bytes of this key.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            StorageKey::Meta(meta) => meta.encode(KeyEncoder::new().u8(META)).finish(),
            StorageKey::Version { key, ts } => version_key(key, *ts, 0).finish(),
        }
    }

    /// Appends the engine bytes of this key to `out` ([`StorageKey::encode`] into a buffer
    /// shared with other keys).
    pub fn encode_onto(&self, out: &mut Vec<u8>) {
        let e = KeyEncoder::onto(std::mem::take(out));
        *out = match self {
            StorageKey::Meta(meta) => meta.encode(e.u8(META)).finish(),
            StorageKey::Version { key, ts } => version_fields(e, key, *ts).finish(),
        };
    }

    /// The epoch of an encoded `MetaKey::OutcomesOf` key.
    pub fn decode_outcomes_of(bytes: &[u8]) -> Result<Epoch, DecodeError> {
        let mut d = KeyDecoder::new(bytes);
        if d.u8()? != META || d.u8()? != 0x06 {
            return Err(DecodeError { what: "outcome index tag" });
        }
        let epoch = Epoch(d.u64()?);
        d.finish()?;
        Ok(epoch)
    }

    /// Decodes a version key into its user key and timestamp.
    pub fn decode_version(bytes: &[u8]) -> Result<(Vec<u8>, Timestamp), DecodeError> {
        let mut d = KeyDecoder::new(bytes);
        if d.u8()? != VERSION {
            return Err(DecodeError { what: "version tag" });
        }
        let key = d.bytes()?;
        let ts = Timestamp::from_u64(d.u64_desc()?);
        d.finish()?;
        Ok((key, ts))
    }

    /// The bytes every version of `key` starts with, and no other key does.
    pub fn version_prefix(key: &[u8]) -> Vec<u8> {
        KeyEncoder::with_capacity(escaped_len(key) + 3).u8(VERSION).bytes(key).finish()
    }

    /// The first engine key after every version of `key` (and before the next user key's).
    pub fn after_versions(key: &[u8]) -> Vec<u8> {
        version_key(key, Timestamp::ZERO, 1).u8(0).finish()
    }

    /// The bytes every version of every user key starting with `prefix` starts with, and no
    /// other key does: how an engine tells such keys apart without decoding them.
    pub fn versions_under(prefix: &[u8]) -> Vec<u8> {
        KeyEncoder::with_capacity(escaped_len(prefix) + 1).u8(VERSION).bytes_start(prefix).finish()
    }

    /// The first engine key of the version space.
    pub fn versions_start() -> Vec<u8> {
        vec![VERSION]
    }

    /// The first engine key after the version space.
    pub fn versions_end() -> Vec<u8> {
        vec![VERSION + 1]
    }

    /// The version prefix (see [`StorageKey::version_prefix`]) of encoded engine bytes that
    /// look like a version key, without decoding them: everything but the timestamp. Engines
    /// use it to build per-key filters (RocksDB's prefix Bloom filters); `None` for other keys.
    pub fn version_prefix_of(encoded: &[u8]) -> Option<&[u8]> {
        match encoded.first() {
            Some(&VERSION) if encoded.len() > TS_BYTES => {
                Some(&encoded[..encoded.len() - TS_BYTES])
            }
            _ => None,
        }
    }
}

impl StorageKey<'_> {
    /// The version prefix and the timestamp of encoded engine bytes that look like a version
    /// key, without decoding the user key; `None` for other keys.
    pub fn split_version(encoded: &[u8]) -> Option<(&[u8], Timestamp)> {
        let prefix = StorageKey::version_prefix_of(encoded)?;
        let ts: [u8; TS_BYTES] = encoded[prefix.len()..].try_into().ok()?;
        Some((prefix, Timestamp::from_u64(!u64::from_be_bytes(ts))))
    }
}

/// A version key ends with its timestamp, eight bytes.
const TS_BYTES: usize = 8;
