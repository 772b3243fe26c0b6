//! Credentials: user bearer tokens (random, shown once, stored as SHA-256) and the cluster
//! secret that nodes present to each other.

use sha2::{Digest as _, Sha256};

/// Prefix of every user token (so a leaked one is recognisable in logs and scanners).
pub const TOKEN_PREFIX: &str = "mrg_";

/// A new random token and its hash (hex SHA-256).
pub fn new_token() -> (String, String) {
    let bytes: [u8; 32] = rand::random();
    let token = format!("{TOKEN_PREFIX}{}", hex::encode(bytes));
    let h = token_hash(&token);
    (token, h)
}

/// Hex SHA-256 of a token, as the catalog stores it.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Compares two secrets in time independent of where they differ.
pub fn same_secret(a: &[u8], b: &[u8]) -> bool {
    let ha = Sha256::digest(a);
    let hb = Sha256::digest(b);
    ha.iter()
        .zip(hb.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

/// Reads the cluster secret file: its first line, trimmed; at least 16 bytes.
pub fn read_secret(path: &std::path::Path) -> std::io::Result<String> {
    let text = std::fs::read_to_string(path)?;
    let s = text.lines().next().unwrap_or("").trim().to_string();
    if s.len() < 16 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "{}: the cluster secret must be at least 16 characters",
                path.display()
            ),
        ));
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_distinct_and_hash_stably() {
        let (a, ha) = new_token();
        let (b, hb) = new_token();
        assert_ne!(a, b);
        assert_ne!(ha, hb);
        assert!(a.starts_with(TOKEN_PREFIX));
        assert_eq!(token_hash(&a), ha);
        assert_eq!(ha.len(), 64);
        assert!(same_secret(b"secret-one", b"secret-one"));
        assert!(!same_secret(b"secret-one", b"secret-two"));
    }
}
