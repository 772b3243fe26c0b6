//! The catalog's Raft storage (RocksDB log + catalog state machine) passes openraft's own
//! storage test suite, and the state machine applies catalog commands exactly as the embedded
//! catalog does, across a restart.
#![allow(clippy::unwrap_used)]

mod common;

use std::io;

use mirage_node::raft::log_store::RocksLogStore;
use mirage_node::raft::state_machine::CatalogStateMachine;
use mirage_node::raft::TypeConfig;
use openraft::testing::log::{StoreBuilder, Suite};
use openraft::StorageError;

struct Builder;

fn fail(e: io::Error) -> StorageError<TypeConfig> {
    use openraft::type_config::TypeConfigExt;
    StorageError::read(TypeConfig::err_from_error(&e))
}

impl StoreBuilder<TypeConfig, RocksLogStore, CatalogStateMachine, tempfile::TempDir> for Builder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, RocksLogStore, CatalogStateMachine), StorageError<TypeConfig>>
    {
        let dir = tempfile::tempdir().map_err(fail)?;
        let store = common::open(&dir.path().join("store"));
        let log = RocksLogStore::open(&dir.path().join("raft/log")).map_err(fail)?;
        let sm =
            CatalogStateMachine::new(store, &dir.path().join("raft/snapshots")).map_err(fail)?;
        Ok((dir, log, sm))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rocksdb_log_and_catalog_state_machine_pass_the_openraft_suite() {
    Suite::test_all(Builder).await.unwrap();
}

/// Catalog commands applied through the Raft state machine give the same state as the embedded
/// catalog given the same entries; a refused command is an answer, not a failure; the state and
/// the applied log id survive a reopen; a snapshot installed on an empty node reproduces both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_machine_applies_catalog_commands_like_the_embedded_catalog() {
    use futures_util::stream;
    use mirage_node::catalog::{Command, Time};
    use mirage_node::raft::{Entry, Proposal, Proposals};
    use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
    use openraft::testing::log_id;
    use openraft::EntryPayload;

    let cmds = [
        (
            "alice",
            Command::AddUser {
                name: "alice".into(),
                admin: true,
                token_sha256: Some("a".repeat(64)),
            },
        ),
        (
            "alice",
            Command::AddUser {
                name: "bob".into(),
                admin: false,
                token_sha256: None,
            },
        ),
        (
            "bob",
            Command::AddUser {
                name: "carol".into(),
                admin: false,
                token_sha256: None,
            },
        ),
        (
            "alice",
            Command::Lock {
                name: "nothing".into(),
                reason: "x".into(),
            },
        ),
    ];
    let entries: Vec<Entry> = cmds
        .iter()
        .enumerate()
        .map(|(i, (caller, c))| Entry {
            log_id: log_id::<TypeConfig>(1, 1, i as u64 + 1),
            payload: EntryPayload::Normal(Proposals(vec![Proposal {
                v: 1,
                caller: caller.to_string(),
                time: Time {
                    secs: 1_700_000_000 + i as i64,
                    nanos: 0,
                },
                command: c.clone(),
                id: None,
                token_sha256: None,
            }])),
        })
        .collect();

    let dir = tempfile::tempdir().unwrap();
    let store = common::open(&dir.path().join("store"));
    let mut sm = CatalogStateMachine::new(store.clone(), &dir.path().join("snap")).unwrap();
    let items = entries.clone().into_iter().map(|e| Ok((e, None)));
    sm.apply(stream::iter(items)).await.unwrap();
    // bob is no admin: carol was refused; the lock of a missing name too.
    let users = user_names(&store);
    assert_eq!(users, ["alice", "bob"]);
    let u = store
        .catalog()
        .user_by_token(&"a".repeat(64))
        .unwrap()
        .unwrap();
    assert_eq!(u.name, "alice");
    let (applied, _) = sm.applied_state().await.unwrap();
    assert_eq!(applied.unwrap().index, 4);
    // Applied commands are numbered on in the catalog log, refused ones are not logged.
    let logged = logged(&store);
    assert_eq!(logged, [1, 2]);

    // The embedded catalog, given the same entries, ends in the same state.
    let dir2 = tempfile::tempdir().unwrap();
    let embedded = common::open(dir2.path());
    for (caller, c) in &cmds {
        let _ = embedded.catalog().submit(caller, c.clone());
    }
    let strip = |m: std::collections::BTreeMap<Vec<u8>, Vec<u8>>| {
        // Creation times differ (the embedded catalog stamps its own clock).
        m.into_iter()
            .map(|(k, v)| {
                let mut j: serde_json::Value = serde_json::from_slice(&v).unwrap();
                if let Some(o) = j.as_object_mut() {
                    o.remove("created");
                }
                (k, j)
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(
        strip(store.catalog().dump().unwrap()),
        strip(embedded.catalog().dump().unwrap())
    );

    // Reopen: same state, same applied log id.
    let before = store.catalog().dump().unwrap();
    drop(sm);
    drop(store);
    let store = common::open(&dir.path().join("store"));
    let mut sm = CatalogStateMachine::new(store.clone(), &dir.path().join("snap")).unwrap();
    assert_eq!(store.catalog().dump().unwrap(), before);
    assert_eq!(sm.applied_state().await.unwrap().0.unwrap().index, 4);

    // A snapshot installed on an empty node reproduces state and log.
    let snap = sm.build_snapshot().await.unwrap();
    let dir3 = tempfile::tempdir().unwrap();
    let other = common::open(&dir3.path().join("store"));
    let mut sm3 = CatalogStateMachine::new(other.clone(), &dir3.path().join("snap")).unwrap();
    sm3.install_snapshot(&snap.meta, snap.snapshot.clone())
        .await
        .unwrap();
    assert_eq!(other.catalog().dump().unwrap(), before);
    assert_eq!(
        other.catalog().log().unwrap(),
        store.catalog().log().unwrap()
    );
    assert_eq!(sm3.applied_state().await.unwrap().0.unwrap().index, 4);
    let cur = sm3.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(cur.meta, snap.meta);

    // And it goes on exactly like the node it came from: the next command gets the same
    // catalog log index on both, and a request id remembered before the snapshot is still
    // answered from the first time.
    let next = |i: u64, id: &str| Entry {
        log_id: log_id::<TypeConfig>(1, 1, i),
        payload: EntryPayload::Normal(Proposals(vec![Proposal {
            v: 1,
            caller: "alice".into(),
            time: Time {
                secs: 1_700_000_100,
                nanos: 0,
            },
            command: Command::AddUser {
                name: format!("user-{id}"),
                admin: false,
                token_sha256: None,
            },
            id: Some(id.into()),
            token_sha256: None,
        }])),
    };
    for (sm, st) in [(&mut sm, &store), (&mut sm3, &other)] {
        sm.apply(stream::iter([Ok((next(5, "r5"), None))]))
            .await
            .unwrap();
        sm.apply(stream::iter([Ok((next(6, "r5"), None))]))
            .await
            .unwrap();
        let log = st.catalog().log().unwrap();
        assert_eq!(log.last().map(|e| e.index), Some(3), "{log:?}");
    }
    assert_eq!(
        other.catalog().dump().unwrap(),
        store.catalog().dump().unwrap()
    );
    assert_eq!(
        other.catalog().log().unwrap(),
        store.catalog().log().unwrap()
    );
}

/// Commands grouped in one entry are applied in order, each seeing the ones before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_grouped_in_one_entry_apply_in_order() {
    use futures_util::stream;
    use mirage_node::catalog::{Command, Time};
    use mirage_node::raft::{Entry, Proposal, Proposals};
    use openraft::storage::RaftStateMachine;
    use openraft::testing::log_id;
    use openraft::EntryPayload;

    let p = |caller: &str, command: Command| Proposal {
        v: 1,
        caller: caller.into(),
        time: Time { secs: 1, nanos: 0 },
        command,
        id: None,
        token_sha256: None,
    };
    let add = |name: &str, admin: bool| Command::AddUser {
        name: name.into(),
        admin,
        token_sha256: None,
    };
    let group = Proposals(vec![
        p("ann", add("ann", true)),
        p("ann", add("ben", true)),
        // ben exists only through the write just before: it must be visible here.
        p("ben", add("cid", false)),
        p("cid", add("dan", false)), // refused: cid is no admin
        p("ben", add("eve", false)),
    ]);
    let dir = tempfile::tempdir().unwrap();
    let store = common::open(&dir.path().join("store"));
    let mut sm = CatalogStateMachine::new(store.clone(), &dir.path().join("snap")).unwrap();
    let e = Entry {
        log_id: log_id::<TypeConfig>(1, 1, 1),
        payload: EntryPayload::Normal(group),
    };
    sm.apply(stream::iter([Ok((e, None))])).await.unwrap();
    let users = user_names(&store);
    assert_eq!(users, ["ann", "ben", "cid", "eve"]);
    let logged = logged(&store);
    assert_eq!(logged, [1, 2, 3, 4]);
}

/// A proposal sent again with the same request id (a retry after an unknown outcome) is
/// answered from the first time and applied once; a different id is a new command.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_request_is_applied_once() {
    use futures_util::stream;
    use mirage_node::catalog::Command;
    use mirage_node::raft::{Entry, Proposals};
    use openraft::storage::RaftStateMachine;
    use openraft::testing::log_id;
    use openraft::EntryPayload;

    let p = |id: &str, command: Command| by_ann(id, 10, command);
    let checkin = checkin_web();
    let add = Command::AddUser {
        name: "ann".into(),
        admin: true,
        token_sha256: None,
    };
    let entries = [
        Proposals(vec![p("a", add), p("r1", checkin.clone())]),
        Proposals(vec![p("r1", checkin.clone())]),
        Proposals(vec![p("r2", checkin)]),
    ];
    let dir = tempfile::tempdir().unwrap();
    let store = common::open(&dir.path().join("store"));
    let mut sm = CatalogStateMachine::new(store.clone(), &dir.path().join("snap")).unwrap();
    let items = entries.into_iter().enumerate().map(|(i, ps)| {
        Ok((
            Entry {
                log_id: log_id::<TypeConfig>(1, 1, i as u64 + 1),
                payload: EntryPayload::Normal(ps),
            },
            None,
        ))
    });
    sm.apply(stream::iter(items)).await.unwrap();
    let n = store.catalog().named("ann", "web").unwrap();
    assert_eq!(n.versions.len(), 2, "r1 applied once, r2 once: {n:?}");
}

/// Request ids are remembered for an hour of log time, then forgotten by the prune that runs
/// every 1024 log indexes; a recent id is still answered from the first time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_are_forgotten_an_hour_later() {
    use futures_util::stream;
    use mirage_node::catalog::Command;
    use mirage_node::raft::{Entry, Proposals};
    use openraft::storage::RaftStateMachine;
    use openraft::testing::log_id;
    use openraft::EntryPayload;

    let p = by_ann;
    let checkin = checkin_web();
    let add = Command::AddUser {
        name: "ann".into(),
        admin: true,
        token_sha256: None,
    };
    let later = 10 + 3600 + 5;
    let entries = [
        (
            1,
            Proposals(vec![p("a", 10, add), p("old", 10, checkin.clone())]),
        ),
        // Index 1024 prunes: "old" (10 s) is more than an hour before this entry.
        (1024, Proposals(vec![p("new", later, checkin.clone())])),
        // The same id again: forgotten, so applied as a new command.
        (1025, Proposals(vec![p("old", 10, checkin.clone())])),
        // A recent id again: remembered, not applied.
        (1026, Proposals(vec![p("new", later, checkin)])),
    ];
    let dir = tempfile::tempdir().unwrap();
    let store = common::open(&dir.path().join("store"));
    let mut sm = CatalogStateMachine::new(store.clone(), &dir.path().join("snap")).unwrap();
    let items = entries.into_iter().map(|(i, ps)| {
        Ok((
            Entry {
                log_id: log_id::<TypeConfig>(1, 1, i),
                payload: EntryPayload::Normal(ps),
            },
            None,
        ))
    });
    sm.apply(stream::iter(items)).await.unwrap();
    let n = store.catalog().named("ann", "web").unwrap();
    assert_eq!(n.versions.len(), 3, "old, new, old again: {n:?}");
}

/// A proposal by ann with request id `id`, submitted at `secs`.
fn by_ann(
    id: &str,
    secs: i64,
    command: mirage_node::catalog::Command,
) -> mirage_node::raft::Proposal {
    mirage_node::raft::Proposal {
        v: 1,
        caller: "ann".into(),
        time: mirage_node::catalog::Time { secs, nanos: 0 },
        command,
        id: Some(id.into()),
        token_sha256: None,
    }
}

/// A new version of `web`.
fn checkin_web() -> mirage_node::catalog::Command {
    mirage_node::catalog::Command::Checkin {
        name: "web".into(),
        image: mirage_format::Digest::of(mirage_format::Algorithm::Sha256, b"x").unwrap(),
        parent: None,
        description: String::new(),
    }
}

/// The indexes in `store`'s catalog log.
fn logged(store: &mirage_node::Store) -> Vec<u64> {
    store
        .catalog()
        .log()
        .unwrap()
        .iter()
        .map(|e| e.index)
        .collect()
}

/// The names of `store`'s users.
fn user_names(store: &mirage_node::Store) -> Vec<String> {
    store
        .catalog()
        .users()
        .unwrap()
        .into_iter()
        .map(|u| u.name)
        .collect()
}
