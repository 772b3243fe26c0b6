//! Catalog reads that run while commands are applied see every command whole: a read of
//! several keys (a name, then its versions or one version) is answered from one moment.
#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use mirage_format::{Algorithm, Digest};
use mirage_node::catalog::{Command, Pending, Query, QueryAnswer, Replicated, Time};
use mirage_node::{Store, StoreOptions};

fn img(n: u32) -> Digest {
    Digest::of(Algorithm::Sha256, &n.to_le_bytes()).unwrap()
}

fn checkin(n: u32) -> Command {
    Command::Checkin {
        name: "web".into(),
        image: img(n),
        parent: None,
        description: String::new(),
    }
}

/// A store with admin `root` and version 1 of `web`, written by `write`.
fn store_with_web(dir: &std::path::Path, write: &(dyn Fn(&Store, u64, Command) + Sync)) -> Store {
    let s = Store::open(
        dir,
        StoreOptions {
            create: true,
            ..Default::default()
        },
    )
    .unwrap();
    let add = Command::AddUser {
        name: "root".into(),
        admin: true,
        token_sha256: None,
    };
    write(&s, 1, add);
    write(&s, 2, checkin(1));
    s
}

/// Checkins only, each written by `write` (with its log index): at every moment the default
/// is the newest version, and version `k` holds image `k`. Readers of the name (directly and
/// as a query), of its default (resolve) and of the list check that while a writer checks in
/// version after version.
fn reads_see_each_checkin_whole(write: &(dyn Fn(&Store, u64, Command) + Sync)) {
    let dir = tempfile::tempdir().unwrap();
    let s = store_with_web(dir.path(), write);
    let c = s.catalog();
    const VERSIONS: u32 = 300;
    let done = AtomicBool::new(false);
    let reads = AtomicU64::new(0);
    std::thread::scope(|sc| {
        sc.spawn(|| {
            for n in 2..=VERSIONS {
                write(&s, u64::from(n) + 1, checkin(n));
            }
            done.store(true, Ordering::Release);
        });
        for reader in 0..2 {
            let (done, reads) = (&done, &reads);
            sc.spawn(move || {
                while !done.load(Ordering::Acquire) {
                    let named = match reader {
                        0 => c.named("root", "web").unwrap(),
                        _ => match c
                            .query("root", &Query::Named { name: "web".into() })
                            .unwrap()
                        {
                            QueryAnswer::Named(n) => n,
                            other => panic!("{other:?}"),
                        },
                    };
                    let count = named.versions.len() as u32;
                    assert_eq!(
                        named.default, count,
                        "a chain of {count} versions with default {}",
                        named.default
                    );
                    for (k, v) in named.versions.iter().enumerate() {
                        assert_eq!(v.image, img(k as u32 + 1));
                    }
                    let r = c.resolve("root", "web").unwrap();
                    let v = r.version.unwrap();
                    assert_eq!(r.image, img(v), "version {v} resolved to another image");
                    let listed = c.list("root").unwrap();
                    assert_eq!(listed[0].default, listed[0].versions.len() as u32);
                    reads.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
    });
    assert!(reads.load(Ordering::Relaxed) > 0);
    let end = c.named("root", "web").unwrap();
    assert_eq!(
        (end.default, end.versions.len()),
        (VERSIONS, VERSIONS as usize)
    );
}

/// The embedded catalog: each command synced on its own.
#[test]
fn reads_during_submitted_checkins_see_each_checkin_whole() {
    reads_see_each_checkin_whole(&|s, _, cmd| {
        s.catalog().submit("root", cmd).unwrap();
    });
}

/// A cluster node's state machine: entries applied unsynced (the Raft log is synced), so
/// a write is in progress only for a moment and reads mostly run live, through the cache.
#[test]
fn reads_during_replicated_checkins_see_each_checkin_whole() {
    reads_see_each_checkin_whole(&|s, index, command| {
        let entry = Replicated {
            index,
            commands: vec![Pending {
                time: Time { secs: 1, nanos: 0 },
                caller: "root".into(),
                command,
                id: None,
                token_sha256: None,
            }],
            meta: Vec::new(),
        };
        let answers = s.catalog().apply_replicated(&[entry]).unwrap();
        assert!(answers[0][0].is_ok(), "{answers:?}");
    });
}
