//! No client ever read an image whose check-out differs from what was checked in: every
//! successful checkout's bytes hash to the SHA-256 of the disk image file that was stored
//! under that digest.

use std::collections::BTreeMap;

use crate::history::{Op, Outcome, Pair};

/// Checks every checkout of `pairs`; answers how many were compared.
pub fn identical(pairs: &[Pair]) -> Result<usize, String> {
    let mut source: BTreeMap<&str, &str> = BTreeMap::new();
    for p in pairs {
        if let (Op::Store { sha256, .. }, Some((_, Outcome::Stored { image }))) = (&p.op, &p.done) {
            source.insert(image, sha256);
        }
    }
    let mut compared = 0;
    let mut bad = Vec::new();
    for p in pairs {
        if let (Op::Checkout { image }, Some((seq, Outcome::CheckedOut { sha256 }))) =
            (&p.op, &p.done)
        {
            compared += 1;
            match source.get(image.as_str()) {
                Some(want) if *want == sha256 => {}
                Some(want) => bad.push(format!(
                    "client {} checked out {image} as {sha256}, stored as {want} (seq {seq})",
                    p.client
                )),
                None => bad.push(format!(
                    "client {} checked out {image}, never stored",
                    p.client
                )),
            }
        }
    }
    if bad.is_empty() {
        Ok(compared)
    } else {
        Err(format!(
            "{} of {compared} checkouts differ: {}",
            bad.len(),
            bad.join("; ")
        ))
    }
}
