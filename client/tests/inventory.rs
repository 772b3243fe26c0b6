//! Package inventory read from images: a dpkg database the test writes, and (when the corpus
//! is built) the corpus family, where PostgreSQL is in derived-2 only.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Output};

fn mirage(store: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mirage"))
        .arg("--store")
        .arg(store)
        .args(["--as", "admin"])
        .args(args)
        .output()
        .unwrap()
}

fn ok(o: Output) -> String {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap()
}

/// An RPM header: name, epoch, version, release, arch.
fn rpm_header() -> Vec<u8> {
    let fields: [(u32, u32, Vec<u8>); 5] = [
        (1000, 6, b"mariadb-server\0".to_vec()),
        (1003, 4, 3u32.to_be_bytes().to_vec()),
        (1001, 6, b"10.5.22\0".to_vec()),
        (1002, 6, b"1.el9\0".to_vec()),
        (1022, 6, b"x86_64\0".to_vec()),
    ];
    let (mut index, mut data) = (Vec::new(), Vec::new());
    for (tag, ty, bytes) in &fields {
        for v in [*tag, *ty, data.len() as u32, 1] {
            index.extend_from_slice(&v.to_be_bytes());
        }
        data.extend_from_slice(bytes);
    }
    let mut blob = (fields.len() as u32).to_be_bytes().to_vec();
    blob.extend_from_slice(&(data.len() as u32).to_be_bytes());
    blob.extend(index);
    blob.extend(data);
    blob
}

const BASE: &str = "Package: libc6\nStatus: install ok installed\nArchitecture: amd64\nVersion: 2.36-9\n\nPackage: removed-pkg\nStatus: deinstall ok config-files\nVersion: 1.0\n";

#[test]
fn inventory_search_and_aggregate_on_images_the_test_builds() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    for (name, extra) in [
        ("plain", ""),
        (
            "db",
            "\nPackage: postgresql-15\nStatus: install ok installed\nArchitecture: amd64\nVersion: 15.8-0+deb12u1\n",
        ),
    ] {
        let tree = dir.path().join(format!("tree-{name}"));
        let gen = mirage_client::demo::generate(&tree, 8, 1).unwrap();
        std::fs::create_dir_all(tree.join("var/lib/dpkg")).unwrap();
        std::fs::write(tree.join("var/lib/dpkg/status"), format!("{BASE}{extra}")).unwrap();
        let img = dir.path().join(format!("{name}.img"));
        mirage_client::demo::build_disk_image(&tree, &img, gen.bytes).unwrap();
        ok(mirage(&store, &["checkin", img.to_str().unwrap(), "--name", name]));
    }
    // An RPM image: rpmdb.sqlite with one header.
    let tree = dir.path().join("tree-rpm");
    let gen = mirage_client::demo::generate(&tree, 9, 1).unwrap();
    std::fs::create_dir_all(tree.join("var/lib/rpm")).unwrap();
    let db = tree.join("var/lib/rpm/rpmdb.sqlite");
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute_batch(
        "CREATE TABLE Packages (hnum INTEGER PRIMARY KEY AUTOINCREMENT, blob BLOB NOT NULL)",
    )
    .unwrap();
    conn.execute("INSERT INTO Packages (blob) VALUES (?1)", [&rpm_header()])
        .unwrap();
    drop(conn);
    let img = dir.path().join("rpm.img");
    mirage_client::demo::build_disk_image(&tree, &img, gen.bytes).unwrap();
    ok(mirage(
        &store,
        &["checkin", img.to_str().unwrap(), "--name", "rhel"],
    ));
    assert_eq!(
        ok(mirage(&store, &["inventory", "rhel"])),
        "3  mariadb-server 3:10.5.22-1.el9 x86_64 (rpm)\n"
    );
    let inv = ok(mirage(&store, &["inventory", "plain"]));
    assert_eq!(inv, "3  libc6 2.36-9 amd64 (dpkg)\n");
    let hits = ok(mirage(&store, &["search", "--package", "postgresql-15"]));
    assert_eq!(hits.lines().count(), 1, "{hits}");
    assert!(hits.starts_with("db@1 ") && hits.contains("postgresql-15=15.8-0+deb12u1"));
    assert_eq!(
        ok(mirage(
            &store,
            &["search", "--package", "postgresql-15=1.0"]
        )),
        ""
    );
    assert_eq!(
        ok(mirage(&store, &["search", "--package", "removed-pkg"])),
        ""
    );
    let agg = ok(mirage(
        &store,
        &["inventory", "--aggregate", "--match", "postgresql*|libc*"],
    ));
    assert_eq!(
        agg,
        "libc6 2.36-9  db@1 plain@1\npostgresql-15 15.8-0+deb12u1  db@1\n"
    );
    let dbs = ok(mirage(
        &store,
        &[
            "inventory",
            "--aggregate",
            "--match",
            "postgresql*|mariadb*|mysql*",
        ],
    ));
    assert_eq!(
        dbs,
        "mariadb-server 3:10.5.22-1.el9  rhel@1\npostgresql-15 15.8-0+deb12u1  db@1\n"
    );
}

#[test]
fn corpus_family_postgresql_is_in_derived_2_only() {
    let Some(home) = std::env::var_os("HOME") else {
        return;
    };
    let images = Path::new(&home).join(".cache/mirage-corpus/images");
    if !images.join("derived-3.img").exists() {
        eprintln!("SKIPPED: the corpus is not built (../shared/corpus/make-images.sh)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    for name in ["base", "derived-1", "derived-2", "derived-3"] {
        let img = images.join(format!("{name}.img"));
        ok(mirage(
            &store,
            &["checkin", img.to_str().unwrap(), "--name", name],
        ));
    }
    let hits = ok(mirage(&store, &["search", "--package", "postgresql-15"]));
    assert_eq!(hits.lines().count(), 1, "{hits}");
    assert!(hits.starts_with("derived-2@1 "), "{hits}");
    let agg = ok(mirage(
        &store,
        &[
            "inventory",
            "--aggregate",
            "--match",
            "postgresql*|mariadb*|mysql*",
        ],
    ));
    assert!(!agg.is_empty());
    assert!(agg.lines().all(|l| l.ends_with("  derived-2@1")), "{agg}");
}
