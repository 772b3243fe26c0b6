//! Package inventory read from the image itself: Debian's dpkg status database
//! (`/var/lib/dpkg/status`), Alpine's apk database (`/lib/apk/db/installed`) and RPM's SQLite
//! database (`/var/lib/rpm/rpmdb.sqlite`, or `/usr/lib/sysimage/rpm/rpmdb.sqlite`; the older
//! Berkeley DB and NDB formats are not read). A parsed database is cached in the store under
//! its content digest, so images that share a database (and every later query) never parse it
//! again.

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

const DATABASES: [(&str, &str); 4] = [
    ("/var/lib/dpkg/status", "dpkg"),
    ("/lib/apk/db/installed", "apk"),
    ("/var/lib/rpm/rpmdb.sqlite", "rpm"),
    ("/usr/lib/sysimage/rpm/rpmdb.sqlite", "rpm"),
];

/// RPM header tags read.
const TAG_NAME: u32 = 1000;
const TAG_VERSION: u32 = 1001;
const TAG_RELEASE: u32 = 1002;
const TAG_EPOCH: u32 = 1003;
const TAG_ARCH: u32 = 1022;

fn be32(b: &[u8], at: usize) -> Option<u32> {
    b.get(at..at + 4)
        .map(|x| u32::from_be_bytes([x[0], x[1], x[2], x[3]]))
}

/// One package from an RPM header blob (as stored in `rpmdb.sqlite`): an index of
/// (tag, type, offset, count) entries, then a data store. Every offset is checked.
pub fn parse_rpm_header(blob: &[u8]) -> Option<Package> {
    let il = be32(blob, 0)? as usize;
    let dl = be32(blob, 4)? as usize;
    let data_at = 8usize.checked_add(il.checked_mul(16)?)?;
    let data = blob.get(data_at..data_at.checked_add(dl)?)?;
    let (mut name, mut version, mut release, mut arch, mut epoch) = (None, None, None, None, None);
    for i in 0..il {
        let e = blob.get(8 + 16 * i..8 + 16 * (i + 1))?;
        let (tag, ty, off) = (be32(e, 0)?, be32(e, 4)?, be32(e, 8)? as usize);
        let string = || -> Option<String> {
            let s = data.get(off..)?;
            let end = s.iter().position(|b| *b == 0)?;
            Some(String::from_utf8_lossy(&s[..end]).into_owned())
        };
        match (tag, ty) {
            (TAG_NAME, 6 | 9) => name = string(),
            (TAG_VERSION, 6 | 9) => version = string(),
            (TAG_RELEASE, 6 | 9) => release = string(),
            (TAG_ARCH, 6 | 9) => arch = string(),
            (TAG_EPOCH, 4) => epoch = be32(data, off),
            _ => {}
        }
    }
    let mut v = format!("{}-{}", version?, release.unwrap_or_default());
    if let Some(e) = epoch {
        v = format!("{e}:{v}");
    }
    Some(Package {
        name: name?,
        version: v,
        arch: arch.unwrap_or_default(),
        db: "rpm".into(),
    })
}

/// Installed packages of an `rpmdb.sqlite` file (its `Packages` table of header blobs).
pub fn parse_rpm_sqlite(db: &[u8]) -> Result<Vec<Package>> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("rpmdb.sqlite");
    std::fs::write(&path, db)?;
    let conn = rusqlite::Connection::open_with_flags(
        &path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    let mut stmt = conn.prepare("SELECT blob FROM Packages")?;
    let rows = stmt.query_map([], |r| r.get::<_, Vec<u8>>(0))?;
    let mut out = Vec::new();
    for blob in rows {
        if let Some(p) = parse_rpm_header(&blob?) {
            out.push(p);
        }
    }
    out.sort();
    Ok(out)
}

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
                    let p = match db {
                        "dpkg" => parse_dpkg(&text),
                        "apk" => parse_apk(&text),
                        _ => match parse_rpm_sqlite(&text) {
                            Ok(p) => p,
                            Err(e) => {
                                tracing::warn!("{path} in partition {part}: {e:#}");
                                Vec::new()
                            }
                        },
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

    /// An RPM header blob with the given (tag, type, data) entries.
    pub(crate) fn rpm_header(fields: &[(u32, u32, Vec<u8>)]) -> Vec<u8> {
        let mut index = Vec::new();
        let mut data = Vec::new();
        for (tag, ty, bytes) in fields {
            index.extend_from_slice(&tag.to_be_bytes());
            index.extend_from_slice(&ty.to_be_bytes());
            index.extend_from_slice(&(data.len() as u32).to_be_bytes());
            index.extend_from_slice(&1u32.to_be_bytes());
            data.extend_from_slice(bytes);
        }
        let mut blob = (fields.len() as u32).to_be_bytes().to_vec();
        blob.extend_from_slice(&(data.len() as u32).to_be_bytes());
        blob.extend_from_slice(&index);
        blob.extend_from_slice(&data);
        blob
    }

    #[test]
    fn rpm_headers_and_hostile_blobs() {
        let h = rpm_header(&[
            (TAG_NAME, 6, b"postgresql-server\0".to_vec()),
            (TAG_EPOCH, 4, 2u32.to_be_bytes().to_vec()),
            (TAG_VERSION, 6, b"15.6\0".to_vec()),
            (TAG_RELEASE, 6, b"1.el9\0".to_vec()),
            (TAG_ARCH, 6, b"x86_64\0".to_vec()),
        ]);
        let p = parse_rpm_header(&h).unwrap();
        assert_eq!(
            (p.name.as_str(), p.version.as_str(), p.arch.as_str()),
            ("postgresql-server", "2:15.6-1.el9", "x86_64")
        );
        // Truncations, huge counts and offsets past the data never panic.
        for n in 0..h.len() {
            let _ = parse_rpm_header(&h[..n]);
        }
        let mut bad = h.clone();
        bad[..4].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(parse_rpm_header(&bad).is_none());
        let mut off = h.clone();
        off[16..20].copy_from_slice(&9999u32.to_be_bytes());
        assert!(parse_rpm_header(&off).is_none());
        // A whole database.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rpmdb.sqlite");
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(
            "CREATE TABLE Packages (hnum INTEGER PRIMARY KEY AUTOINCREMENT, blob BLOB NOT NULL)",
        )
        .unwrap();
        conn.execute("INSERT INTO Packages (blob) VALUES (?1)", [&h])
            .unwrap();
        drop(conn);
        let pkgs = parse_rpm_sqlite(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(pkgs, vec![p]);
        assert!(parse_rpm_sqlite(b"not a database").is_err());
    }
}
