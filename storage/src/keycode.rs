//! The order-preserving key codec: typed values in, bytes out, and the bytes sort exactly as
//! the values do.
//!
//! Every key sealdb writes is built here, from storage's own [`crate::StorageKey`] to the
//! benchmark's table keys; nobody concatenates key bytes by hand. Composite keys are written
//! field by field with a [`KeyEncoder`], and compare field by field:
//!
//! ```text
//!   u8, u32, u64     fixed width, big-endian                     7u64 -> 00 .. 00 07
//!   i64              big-endian with the sign bit flipped        -1   -> 7f ff .. ff
//!   bytes, str       0x00 escaped as 00 ff, ended by 00 01       "a\0" -> 61 00 ff 00 01
//! ```
//!
//! The escaping makes variable-length fields *prefix-free*: no encoded field is a prefix of
//! another, so `("a", 2)` sorts before `("ab", 1)` just as the tuples do, and everything
//! starting with the encoding of `"a"` belongs to the key `"a"`.

use std::fmt;

const ESCAPE: u8 = 0x00;
const ESCAPED_ZERO: u8 = 0xff;
const TERMINATOR: u8 = 0x01;

/// How many bytes [`KeyEncoder::bytes_start`] writes for `v`: each zero byte takes two.
pub fn escaped_len(v: &[u8]) -> usize {
    v.len() + v.iter().filter(|&&b| b == ESCAPE).count()
}

/// Builds an order-preserving key field by field.
#[derive(Debug, Default, Clone)]
pub struct KeyEncoder {
    buf: Vec<u8>,
}

impl KeyEncoder {
    /// An empty key.
    pub fn new() -> KeyEncoder {
        KeyEncoder { buf: Vec::new() }
    }

    /// An empty key with room for `n` bytes.
    pub fn with_capacity(n: usize) -> KeyEncoder {
        KeyEncoder { buf: Vec::with_capacity(n) }
    }

    /// A key appended to `buf`'s bytes ([`KeyEncoder::finish`] gives them back, the key after
    /// them): for keys written into a buffer shared with others.
    pub fn onto(buf: Vec<u8>) -> KeyEncoder {
        KeyEncoder { buf }
    }

    /// Appends a one-byte field (a tag).
    pub fn u8(mut self, v: u8) -> KeyEncoder {
        self.buf.push(v);
        self
    }

    /// Appends a `u32`.
    pub fn u32(mut self, v: u32) -> KeyEncoder {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }

    /// Appends a `u64`.
    pub fn u64(mut self, v: u64) -> KeyEncoder {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }

    /// Appends an `i64`, negative numbers first.
    pub fn i64(mut self, v: i64) -> KeyEncoder {
        self.buf.extend_from_slice(&((v as u64) ^ (1 << 63)).to_be_bytes());
        self
    }

    /// Appends a `u64` that sorts in *descending* order (newest-first versions).
    pub fn u64_desc(mut self, v: u64) -> KeyEncoder {
        self.buf.extend_from_slice(&(!v).to_be_bytes());
        self
    }

    /// Appends a variable-length byte string.
    pub fn bytes(self, v: &[u8]) -> KeyEncoder {
        let mut e = self.escaped(v, 2);
        e.buf.extend_from_slice(&[ESCAPE, TERMINATOR]);
        e
    }

    /// Appends the start of a byte string: every [`KeyEncoder::bytes`] field whose value
    /// starts with `v` starts with these bytes, and no other does.
    pub fn bytes_start(self, v: &[u8]) -> KeyEncoder {
        self.escaped(v, 0)
    }

    /// Appends `v` escaped, with room for `more` bytes after it.
    fn escaped(mut self, v: &[u8], more: usize) -> KeyEncoder {
        self.buf.reserve(escaped_len(v) + more);
        for &b in v {
            if b == ESCAPE {
                self.buf.extend_from_slice(&[ESCAPE, ESCAPED_ZERO]);
            } else {
                self.buf.push(b);
            }
        }
        self
    }

    /// Appends a string.
    pub fn str(self, v: &str) -> KeyEncoder {
        self.bytes(v.as_bytes())
    }

    /// The encoded key.
    pub fn finish(self) -> Vec<u8> {
        self.buf
    }
}

/// Bytes that are not a key of the expected shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    /// What was being decoded.
    pub what: &'static str,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "malformed key: bad {}", self.what)
    }
}

impl std::error::Error for DecodeError {}

/// Reads back the fields a [`KeyEncoder`] wrote, in the same order.
#[derive(Debug, Clone)]
pub struct KeyDecoder<'a> {
    rest: &'a [u8],
}

impl<'a> KeyDecoder<'a> {
    /// A decoder over `key`.
    pub fn new(key: &'a [u8]) -> KeyDecoder<'a> {
        KeyDecoder { rest: key }
    }

    fn take<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], DecodeError> {
        let (head, rest) = self.rest.split_first_chunk::<N>().ok_or(DecodeError { what })?;
        self.rest = rest;
        Ok(*head)
    }

    /// Reads a one-byte field.
    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take::<1>("u8")?[0])
    }

    /// Reads a `u32`.
    pub fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.take("u32")?))
    }

    /// Reads a `u64`.
    pub fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.take("u64")?))
    }

    /// Reads an `i64`.
    pub fn i64(&mut self) -> Result<i64, DecodeError> {
        Ok((u64::from_be_bytes(self.take("i64")?) ^ (1 << 63)) as i64)
    }

    /// Reads a descending `u64`.
    pub fn u64_desc(&mut self) -> Result<u64, DecodeError> {
        Ok(!u64::from_be_bytes(self.take("u64_desc")?))
    }

    /// Reads a byte string.
    pub fn bytes(&mut self) -> Result<Vec<u8>, DecodeError> {
        let what = "byte string";
        // The rest is at least as long as the string it encodes.
        let mut out = Vec::with_capacity(self.rest.len());
        let mut i = 0;
        while let Some(&b) = self.rest.get(i) {
            if b != ESCAPE {
                out.push(b);
                i += 1;
                continue;
            }
            match self.rest.get(i + 1) {
                Some(&ESCAPED_ZERO) => out.push(0),
                Some(&TERMINATOR) => {
                    self.rest = &self.rest[i + 2..];
                    return Ok(out);
                }
                _ => return Err(DecodeError { what }),
            }
            i += 2;
        }
        Err(DecodeError { what })
    }

    /// Reads a string.
    pub fn str(&mut self) -> Result<String, DecodeError> {
        String::from_utf8(self.bytes()?).map_err(|_| DecodeError { what: "utf-8 string" })
    }

    /// Fails unless every byte was read.
    pub fn finish(self) -> Result<(), DecodeError> {
        if self.rest.is_empty() { Ok(()) } else { Err(DecodeError { what: "trailing bytes" }) }
    }
}
