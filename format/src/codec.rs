//! Canonical binary primitives: minimal LEB128 varints, length-prefixed byte strings,
//! algorithm-tagged digests. The reader is bounded: no length field can make it allocate more
//! than the input it was given, and non-minimal encodings are refused so that every value has
//! exactly one encoding.

use crate::digest::{Algorithm, Digest};

/// Decoding errors. Every hostile input maps to one of these; decoding never panics.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
pub enum DecodeError {
    /// Input ended inside a field.
    #[error("truncated input: {0} needs more bytes")]
    Truncated(&'static str),
    /// A varint is longer than 10 bytes or overflows 64 bits.
    #[error("varint overflow in {0}")]
    VarintOverflow(&'static str),
    /// A varint has redundant trailing zero groups (not the canonical encoding).
    #[error("non-canonical varint in {0}")]
    NonCanonicalVarint(&'static str),
    /// A length or count is larger than the remaining input or a fixed limit.
    #[error("{field}: length {len} exceeds the limit {limit}")]
    TooLong {
        /// Field being read.
        field: &'static str,
        /// Claimed length.
        len: u64,
        /// Allowed maximum.
        limit: u64,
    },
    /// The item kind byte is unknown.
    #[error("unknown item kind {0}")]
    UnknownKind(u8),
    /// The item format version is not supported by this build.
    #[error("unsupported version {version} of item kind {kind}")]
    UnsupportedVersion {
        /// Kind name.
        kind: &'static str,
        /// Version found.
        version: u8,
    },
    /// An enum tag inside a payload is unknown.
    #[error("unknown {field} tag {tag}")]
    UnknownTag {
        /// Field being read.
        field: &'static str,
        /// Tag found.
        tag: u64,
    },
    /// Bytes left over after a complete value.
    #[error("{0} trailing bytes after the item")]
    TrailingBytes(usize),
    /// A structurally valid value breaks a rule of the format.
    #[error("invalid {what}: {why}")]
    Invalid {
        /// What was being checked.
        what: &'static str,
        /// Why it is invalid.
        why: String,
    },
}

/// Shorthand for [`DecodeError::Invalid`].
pub(crate) fn invalid(what: &'static str, why: impl Into<String>) -> DecodeError {
    DecodeError::Invalid {
        what,
        why: why.into(),
    }
}

/// Append-only canonical writer.
#[derive(Debug, Default)]
pub struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    /// Empty writer.
    pub fn new() -> Self {
        Self::default()
    }

    /// The bytes written.
    pub fn into_bytes(self) -> Vec<u8> {
        self.buf
    }

    /// One byte.
    pub fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }

    /// Unsigned LEB128, minimal.
    pub fn uvar(&mut self, mut v: u64) {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                self.buf.push(b);
                return;
            }
            self.buf.push(b | 0x80);
        }
    }

    /// Signed value, zigzag then LEB128.
    pub fn ivar(&mut self, v: i64) {
        self.uvar(((v << 1) ^ (v >> 63)) as u64);
    }

    /// Length-prefixed bytes.
    pub fn bytes(&mut self, b: &[u8]) {
        self.uvar(b.len() as u64);
        self.buf.extend_from_slice(b);
    }

    /// Raw bytes, no prefix.
    pub fn raw(&mut self, b: &[u8]) {
        self.buf.extend_from_slice(b);
    }

    /// Algorithm code then the hash bytes.
    pub fn digest(&mut self, d: &Digest) {
        self.u8(d.algorithm().code());
        self.buf.extend_from_slice(d.as_bytes());
    }
}

/// Bounded reader over a byte slice.
#[derive(Debug)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// Reader at the start of `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    /// Bytes not yet read.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Error unless everything was consumed.
    pub fn finish(&self) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            n => Err(DecodeError::TrailingBytes(n)),
        }
    }

    /// One byte.
    pub fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        let b = *self
            .buf
            .get(self.pos)
            .ok_or(DecodeError::Truncated(field))?;
        self.pos += 1;
        Ok(b)
    }

    /// Minimal unsigned LEB128.
    pub fn uvar(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        let mut v: u64 = 0;
        for i in 0..10 {
            let b = self.u8(field)?;
            let part = u64::from(b & 0x7f);
            if i == 9 && part > 1 {
                return Err(DecodeError::VarintOverflow(field));
            }
            v |= part << (7 * i);
            if b & 0x80 == 0 {
                if b == 0 && i > 0 {
                    return Err(DecodeError::NonCanonicalVarint(field));
                }
                return Ok(v);
            }
        }
        Err(DecodeError::VarintOverflow(field))
    }

    /// Unsigned varint that must fit `u32`.
    pub fn u32var(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        let v = self.uvar(field)?;
        u32::try_from(v).map_err(|_| DecodeError::TooLong {
            field,
            len: v,
            limit: u64::from(u32::MAX),
        })
    }

    /// Zigzag signed varint.
    pub fn ivar(&mut self, field: &'static str) -> Result<i64, DecodeError> {
        let u = self.uvar(field)?;
        Ok(((u >> 1) as i64) ^ -((u & 1) as i64))
    }

    /// A length that must not exceed `limit` nor the remaining input.
    fn len(&mut self, field: &'static str, limit: usize) -> Result<usize, DecodeError> {
        let n = self.uvar(field)?;
        let cap = limit.min(self.remaining()) as u64;
        if n > cap {
            return Err(DecodeError::TooLong {
                field,
                len: n,
                limit: cap,
            });
        }
        Ok(n as usize)
    }

    /// Length-prefixed bytes, at most `limit` long.
    pub fn bytes(&mut self, field: &'static str, limit: usize) -> Result<&'a [u8], DecodeError> {
        let n = self.len(field, limit)?;
        self.take(field, n)
    }

    /// Exactly `n` raw bytes.
    pub fn take(&mut self, field: &'static str, n: usize) -> Result<&'a [u8], DecodeError> {
        if n > self.remaining() {
            return Err(DecodeError::Truncated(field));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    /// Everything left.
    pub fn rest(&mut self) -> &'a [u8] {
        let s = &self.buf[self.pos..];
        self.pos = self.buf.len();
        s
    }

    /// An element count. Every element takes at least `min_elem` bytes, so the count is bounded
    /// by the remaining input and pre-allocation stays proportional to the input.
    pub fn count(&mut self, field: &'static str, min_elem: usize) -> Result<usize, DecodeError> {
        let n = self.uvar(field)?;
        let cap = (self.remaining() / min_elem.max(1)) as u64;
        if n > cap {
            return Err(DecodeError::TooLong {
                field,
                len: n,
                limit: cap,
            });
        }
        Ok(n as usize)
    }

    /// Algorithm-tagged digest.
    pub fn digest(&mut self, field: &'static str) -> Result<Digest, DecodeError> {
        let code = self.u8(field)?;
        let alg = Algorithm::from_code(code).ok_or(DecodeError::UnknownTag {
            field,
            tag: u64::from(code),
        })?;
        let raw = self.take(field, alg.digest_len())?;
        Digest::from_bytes(alg, raw).ok_or(DecodeError::Truncated(field))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn varints_roundtrip(u in any::<u64>(), i in any::<i64>()) {
            let mut w = Writer::new();
            w.uvar(u);
            w.ivar(i);
            let bytes = w.into_bytes();
            let mut r = Reader::new(&bytes);
            prop_assert_eq!(r.uvar("u").unwrap(), u);
            prop_assert_eq!(r.ivar("i").unwrap(), i);
            r.finish().unwrap();
        }

        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut r = Reader::new(&data);
            let _ = r.uvar("x");
            let _ = r.bytes("y", 1 << 20);
            let _ = r.count("z", 1);
            let _ = r.digest("d");
        }
    }

    #[test]
    fn non_canonical_and_overflowing_varints_are_refused() {
        assert_eq!(
            Reader::new(&[0x80, 0x00]).uvar("v"),
            Err(DecodeError::NonCanonicalVarint("v"))
        );
        assert_eq!(
            Reader::new(&[0xff; 11]).uvar("v"),
            Err(DecodeError::VarintOverflow("v"))
        );
        assert_eq!(
            Reader::new(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02]).uvar("v"),
            Err(DecodeError::VarintOverflow("v"))
        );
        let mut max = Writer::new();
        max.uvar(u64::MAX);
        assert_eq!(Reader::new(&max.into_bytes()).uvar("v"), Ok(u64::MAX));
    }

    #[test]
    fn huge_lengths_are_bounded_by_the_input() {
        let mut w = Writer::new();
        w.uvar(u64::MAX / 2);
        w.raw(b"abc");
        let bytes = w.into_bytes();
        assert!(matches!(
            Reader::new(&bytes).bytes("b", usize::MAX),
            Err(DecodeError::TooLong { .. })
        ));
        assert!(matches!(
            Reader::new(&bytes).count("c", 1),
            Err(DecodeError::TooLong { .. })
        ));
    }
}
