//! Typed key/value parameters (filesystem, disk and partition settings) and the JSON view of
//! byte strings.

use std::collections::BTreeMap;

use crate::codec::{invalid, DecodeError, Reader, Writer};

/// One parameter value.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(untagged)]
pub enum Param {
    /// Unsigned number.
    U64(u64),
    /// Signed number.
    I64(i64),
    /// Text.
    Text(String),
    /// Raw bytes.
    Bytes(#[serde(with = "crate::params::bytes_view")] Vec<u8>),
}

/// Parameters sorted by key (byte order): one canonical encoding per map.
pub type Params = BTreeMap<String, Param>;

/// Longest parameter key.
pub const MAX_PARAM_KEY: usize = 128;
/// Longest parameter value (bytes or text).
pub const MAX_PARAM_VALUE: usize = 1 << 20;

pub(crate) fn write_params(w: &mut Writer, p: &Params) {
    w.uvar(p.len() as u64);
    for (k, v) in p {
        w.bytes(k.as_bytes());
        match v {
            Param::U64(x) => {
                w.u8(1);
                w.uvar(*x);
            }
            Param::I64(x) => {
                w.u8(2);
                w.ivar(*x);
            }
            Param::Text(s) => {
                w.u8(3);
                w.bytes(s.as_bytes());
            }
            Param::Bytes(b) => {
                w.u8(4);
                w.bytes(b);
            }
        }
    }
}

pub(crate) fn read_params(r: &mut Reader<'_>) -> Result<Params, DecodeError> {
    let n = r.count("params", 4)?;
    let mut out = Params::new();
    let mut prev: Option<String> = None;
    for _ in 0..n {
        let key = r.bytes("param key", MAX_PARAM_KEY)?;
        let key = std::str::from_utf8(key)
            .map_err(|_| invalid("param key", "not UTF-8"))?
            .to_owned();
        if key.is_empty() {
            return Err(invalid("param key", "empty"));
        }
        if let Some(p) = &prev {
            if p.as_bytes() >= key.as_bytes() {
                return Err(invalid(
                    "params",
                    format!("key {key:?} unsorted or duplicate"),
                ));
            }
        }
        let tag = r.u8("param tag")?;
        let value = match tag {
            1 => Param::U64(r.uvar("param u64")?),
            2 => Param::I64(r.ivar("param i64")?),
            3 => Param::Text(
                std::str::from_utf8(r.bytes("param text", MAX_PARAM_VALUE)?)
                    .map_err(|_| invalid("param text", "not UTF-8"))?
                    .to_owned(),
            ),
            4 => Param::Bytes(r.bytes("param bytes", MAX_PARAM_VALUE)?.to_vec()),
            t => {
                return Err(DecodeError::UnknownTag {
                    field: "param",
                    tag: u64::from(t),
                })
            }
        };
        prev = Some(key.clone());
        out.insert(key, value);
    }
    Ok(out)
}

/// Serde helper: bytes as a string when they are UTF-8, else as `{"hex": "..."}`.
/// Names on disk are bytes, not text; this keeps the JSON view readable and lossless.
pub mod bytes_view {
    use serde::ser::SerializeMap;

    /// Serializes `b`.
    pub fn serialize<S: serde::Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
        match std::str::from_utf8(b) {
            Ok(text) => s.serialize_str(text),
            Err(_) => {
                let mut m = s.serialize_map(Some(1))?;
                m.serialize_entry("hex", &hex::encode(b))?;
                m.end()
            }
        }
    }
}

/// Serde helper for `Option<Vec<u8>>` with [`bytes_view`].
pub mod opt_bytes_view {
    /// Serializes `b`.
    pub fn serialize<S: serde::Serializer>(b: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match b {
            Some(v) => super::bytes_view::serialize(v, s),
            None => s.serialize_none(),
        }
    }
}
