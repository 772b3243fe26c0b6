//! Package inventory read from the image itself: Debian's dpkg status database
//! (`/var/lib/dpkg/status`) and Alpine's apk database (`/lib/apk/db/installed`). A parsed
//! database is cached in the store under its content digest, so images that share a database
//! (and every later query) never parse it again. RPM databases are not read yet.

use std::collections::BTreeMap;

use anyhow::Result;
use mirage_format::{Algorithm, Digest, EntryKind};
use mirage_node::Store;
use serde::{Deserialize, Serialize};

/// One installed package.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Package {
    /// Name.
    pub name: String,
    /// Version as the database states it.
    pub version: String,
    /// Architecture, where recorded.
    pub arch: String,
    /// `dpkg` or `apk`.
    pub db: String,
}

/// Installed packages of a dpkg status file (paragraphs whose `Status` ends in `installed`).
pub fn parse_dpkg(text: &[u8]) -> Vec<Package> {
    let text = String::from_utf8_lossy(text);
    let mut out = Vec::new();
    for para in text.split("\n\n") {
        let mut f: BTreeMap<&str, &str> = BTreeMap::new();
        for line in para.lines() {
            if line.starts_with([' ', '\t']) {
                continue;
            }
            if let Some((k, v)) = line.split_once(':') {
                f.insert(k.trim(), v.trim());
            }
        }
        let installed = f
            .get("Status")
            .is_some_and(|s| s.split_whitespace().last() == Some("installed"));
        if let (true, Some(name)) = (installed, f.get("Package")) {
            out.push(Package {
                name: name.to_string(),
                version: f.get("Version").unwrap_or(&"").to_string(),
                arch: f.get("Architecture").unwrap_or(&"").to_string(),
                db: "dpkg".into(),
            });
        }
    }
    out.sort();
    out
}

/// Installed packages of an apk database (`P:` name, `V:` version, `A:` architecture).
pub fn parse_apk(text: &[u8]) -> Vec<Package> {
    let text = String::from_utf8_lossy(text);
    let mut out = Vec::new();
    for para in text.split("\n\n") {
        let (mut name, mut version, mut arch) = (None, "", "");
        for line in para.lines() {
            match line.split_at_checked(2) {
                Some(("P:", v)) => name = Some(v),
                Some(("V:", v)) => version = v,
                Some(("A:", v)) => arch = v,
                _ => {}
            }
        }
        if let Some(name) = name {
            out.push(Package {
                name: name.into(),
                version: version.into(),
                arch: arch.into(),
                db: "apk".into(),
            });
        }
    }
    out.sort();
    out
}

const DATABASES: [(&str, &str); 2] = [
    ("/var/lib/dpkg/status", "dpkg"),
    ("/lib/apk/db/installed", "apk"),
];

fn cache_key(db: &str, content: &Digest) -> [u8; 32] {
    let mut k = [0u8; 32];
    let mut bytes = format!("mirage-inventory/1\0{db}\0").into_bytes();
    bytes.extend_from_slice(&content.key_bytes());
    if let Ok(d) = Digest::of(Algorithm::Sha256, &bytes) {
        k.copy_from_slice(d.as_bytes());
    }
    k
}

/// Packages installed in `image`, per partition that has a package database.
pub fn of_image(store: &Store, image: &Digest) -> Result<Vec<(u32, Vec<Package>)>> {
    let mut out = Vec::new();
    for (part, _) in crate::diff::filesystems(store, image)? {
        let mut pkgs = Vec::new();
        for (path, db) in DATABASES {
            let Ok(found) = crate::browse::ls(store, image, Some(part), path) else {
                continue;
            };
            let Some(e) = found.first().filter(|e| e.kind == EntryKind::File) else {
                continue;
            };
            let Some(content) = e.content else { continue };
            let key = cache_key(db, &content);
            let cached = store
                .hints(&[key])?
                .pop()
                .flatten()
                .and_then(|v| serde_json::from_slice::<Vec<Package>>(&v).ok());
            let parsed = match cached {
                Some(p) => p,
                None => {
                    let mut text = Vec::new();
                    crate::browse::cat(store, image, Some(part), path, &mut text)?;
                    let p = if db == "dpkg" {
                        parse_dpkg(&text)
                    } else {
                        parse_apk(&text)
                    };
                    store.put_hints(vec![(key, serde_json::to_vec(&p)?)])?;
                    p
                }
            };
            pkgs.extend(parsed);
        }
        if !pkgs.is_empty() {
            out.push((part, pkgs));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dpkg_and_apk_databases() {
        let dpkg = b"Package: libc6\nStatus: install ok installed\nVersion: 2.36-9\nArchitecture: amd64\nDescription: GNU C\n multi-line\n\nPackage: gone\nStatus: deinstall ok config-files\nVersion: 1\n\nPackage: postgresql-15\nStatus: install ok installed\nArchitecture: amd64\nVersion: 15.8-0+deb12u1\n";
        let p = parse_dpkg(dpkg);
        assert_eq!(
            p.iter()
                .map(|x| (x.name.as_str(), x.version.as_str()))
                .collect::<Vec<_>>(),
            vec![("libc6", "2.36-9"), ("postgresql-15", "15.8-0+deb12u1")]
        );
        let apk = b"C:Q1x\nP:musl\nV:1.2.4-r2\nA:x86_64\n\nP:busybox\nV:1.36.1-r5\nA:x86_64\n";
        let p = parse_apk(apk);
        assert_eq!(p[0].name, "busybox");
        assert_eq!(p[1].version, "1.2.4-r2");
        assert!(parse_dpkg(b"\xff\xfe garbage\n\n\n").is_empty());
    }
}
