//! The catalog state machine on a real store: the ACL matrix, version chains, delete marks,
//! locks, and deterministic replay of the log.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use mirage_format::{Algorithm, Digest};
use mirage_node::catalog::{
    apply, CatalogError, Command, ImageState, ImportedAcl, ImportedVersion, Time, View,
};
use mirage_node::{Store, StoreOptions};

fn img(n: u8) -> Digest {
    Digest::of(Algorithm::Sha256, &[n]).unwrap()
}

fn open(dir: &std::path::Path) -> Store {
    Store::open(
        dir,
        StoreOptions {
            create: true,
            ..Default::default()
        },
    )
    .unwrap()
}

/// root (admin), owner, writer, reader, stranger; `web` owned by owner with versions 1 and 2,
/// writer and reader granted.
fn setup(dir: &std::path::Path) -> Store {
    let s = open(dir);
    let c = s.catalog();
    let add = |caller: &str, name: &str, admin: bool| {
        c.submit(
            caller,
            Command::AddUser {
                name: name.into(),
                admin,
                token_sha256: None,
            },
        )
        .unwrap();
    };
    add("root", "root", true);
    for u in ["owner", "writer", "reader", "stranger"] {
        add("root", u, false);
    }
    for i in [1, 2] {
        c.submit(
            "owner",
            Command::Checkin {
                name: "web".into(),
                image: img(i),
                parent: None,
                description: String::new(),
            },
        )
        .unwrap();
    }
    c.submit(
        "owner",
        Command::Acl {
            name: "web".into(),
            grant_read: vec!["reader".into()],
            grant_write: vec!["writer".into()],
            revoke: vec![],
        },
    )
    .unwrap();
    s
}

fn code(r: Result<impl std::fmt::Debug, CatalogError>) -> &'static str {
    match r {
        Ok(_) => "ok",
        Err(e) => e.code(),
    }
}

#[test]
fn acl_matrix() {
    type Op = fn(&Store, &str) -> &'static str;
    let ops: Vec<(&str, Op)> = vec![
        ("read", |s, u| code(s.catalog().resolve(u, "web@1"))),
        ("list", |s, u| {
            if s.catalog().list(u).unwrap().iter().any(|n| n.name == "web") {
                "ok"
            } else {
                "hidden"
            }
        }),
        ("checkin", |s, u| {
            code(s.catalog().submit(
                u,
                Command::Checkin {
                    name: "web".into(),
                    image: img(9),
                    parent: None,
                    description: String::new(),
                },
            ))
        }),
        ("default", |s, u| {
            code(s.catalog().submit(
                u,
                Command::SetDefault {
                    name: "web".into(),
                    version: 1,
                },
            ))
        }),
        ("delete", |s, u| {
            code(s.catalog().submit(
                u,
                Command::Delete {
                    name: "web".into(),
                    version: 1,
                },
            ))
        }),
        ("acl", |s, u| {
            code(s.catalog().submit(
                u,
                Command::Acl {
                    name: "web".into(),
                    grant_read: vec!["stranger".into()],
                    grant_write: vec![],
                    revoke: vec![],
                },
            ))
        }),
        ("lock", |s, u| {
            code(s.catalog().submit(
                u,
                Command::Lock {
                    name: "web".into(),
                    reason: "patching".into(),
                },
            ))
        }),
        ("derive", |s, u| {
            code(s.catalog().submit(
                u,
                Command::Derive {
                    source: "web".into(),
                    version: None,
                    name: format!("{u}-copy"),
                },
            ))
        }),
    ];
    // Expected outcome per user, in the order root, owner, writer, reader, stranger.
    let expect: BTreeMap<&str, [&str; 5]> = [
        ("read", ["ok", "ok", "ok", "ok", "not_found"]),
        ("list", ["ok", "ok", "ok", "ok", "hidden"]),
        ("checkin", ["ok", "ok", "ok", "denied", "denied"]),
        ("default", ["ok", "ok", "ok", "denied", "not_found"]),
        ("delete", ["ok", "ok", "denied", "denied", "not_found"]),
        ("acl", ["ok", "ok", "denied", "denied", "not_found"]),
        ("lock", ["ok", "denied", "denied", "denied", "not_found"]),
        ("derive", ["ok", "ok", "ok", "ok", "not_found"]),
    ]
    .into_iter()
    .collect();
    let users = ["root", "owner", "writer", "reader", "stranger"];
    let mut failures = Vec::new();
    for (name, op) in &ops {
        for (i, u) in users.iter().enumerate() {
            let dir = tempfile::tempdir().unwrap();
            let s = setup(dir.path());
            let before = s.catalog().dump().unwrap();
            let got = op(&s, u);
            let want = expect[name][i];
            if got != want {
                failures.push(format!("{name} as {u}: got {got}, want {want}"));
            }
            // A refused command changes nothing.
            if got != "ok" && got != "hidden" {
                assert_eq!(s.catalog().dump().unwrap(), before, "{name} as {u}");
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
    // The stranger's refusal of a taken name does not say it exists.
    let dir = tempfile::tempdir().unwrap();
    let s = setup(dir.path());
    let e = s
        .catalog()
        .submit(
            "stranger",
            Command::Checkin {
                name: "web".into(),
                image: img(7),
                parent: None,
                description: String::new(),
            },
        )
        .unwrap_err();
    assert!(!e.to_string().contains("exists"), "{e}");
    assert_eq!(
        s.catalog().named("stranger", "web").unwrap_err(),
        s.catalog()
            .named("stranger", "nonexistent")
            .unwrap_err()
            .renamed("web")
    );
}

trait Renamed {
    fn renamed(self, to: &str) -> Self;
}

impl Renamed for CatalogError {
    fn renamed(self, to: &str) -> Self {
        match self {
            CatalogError::NotFound(_) => CatalogError::NotFound(to.into()),
            other => other,
        }
    }
}

#[test]
fn version_chains_defaults_deletes_and_locks() {
    let dir = tempfile::tempdir().unwrap();
    let s = setup(dir.path());
    let c = s.catalog();
    let n = c.named("owner", "web").unwrap();
    assert_eq!(n.default, 2);
    assert_eq!(c.resolve("reader", "web").unwrap().image, img(2));
    // Provenance: version 2's image has version 1's as parent (the default at the time).
    assert_eq!(c.image(&img(2)).unwrap().unwrap().parent, Some(img(1)));
    // Rollback.
    c.submit(
        "writer",
        Command::SetDefault {
            name: "web".into(),
            version: 1,
        },
    )
    .unwrap();
    assert_eq!(c.resolve("reader", "web").unwrap().image, img(1));
    // A new version becomes the default; old versions never change.
    c.submit(
        "writer",
        Command::Checkin {
            name: "web".into(),
            image: img(3),
            parent: None,
            description: "third".into(),
        },
    )
    .unwrap();
    let n = c.named("owner", "web").unwrap();
    assert_eq!(n.default, 3);
    assert_eq!(
        n.versions.iter().map(|v| v.image).collect::<Vec<_>>(),
        vec![img(1), img(2), img(3)]
    );
    assert_eq!(c.image(&img(3)).unwrap().unwrap().parent, Some(img(1)));
    // Delete the default: it moves back, the metadata stays, the image is marked deleted.
    c.submit(
        "owner",
        Command::Delete {
            name: "web".into(),
            version: 3,
        },
    )
    .unwrap();
    let n = c.named("owner", "web").unwrap();
    assert_eq!(n.default, 2);
    assert!(n.versions[2].deleted);
    let rec = c.image(&img(3)).unwrap().unwrap();
    assert_eq!(rec.state, ImageState::Deleted);
    assert_eq!(rec.parent, Some(img(1)));
    assert_eq!(c.resolve("owner", "web@3").unwrap_err().code(), "deleted");
    // An image another name still uses stays active when one reference goes.
    c.submit(
        "reader",
        Command::Derive {
            source: "web".into(),
            version: Some(1),
            name: "mine".into(),
        },
    )
    .unwrap();
    c.submit(
        "owner",
        Command::Delete {
            name: "web".into(),
            version: 1,
        },
    )
    .unwrap();
    assert_eq!(c.image(&img(1)).unwrap().unwrap().state, ImageState::Active);
    assert_eq!(c.named("reader", "mine").unwrap().owner, "reader");
    // Locks refuse changes with the reason, and lift.
    c.submit(
        "root",
        Command::Lock {
            name: "web".into(),
            reason: "CVE patching".into(),
        },
    )
    .unwrap();
    let e = c
        .submit(
            "owner",
            Command::Checkin {
                name: "web".into(),
                image: img(4),
                parent: None,
                description: String::new(),
            },
        )
        .unwrap_err();
    assert_eq!(e.code(), "locked");
    assert!(e.to_string().contains("CVE patching"), "{e}");
    for cmd in [
        Command::SetDefault {
            name: "web".into(),
            version: 2,
        },
        Command::Delete {
            name: "web".into(),
            version: 2,
        },
    ] {
        assert_eq!(c.submit("owner", cmd).unwrap_err().code(), "locked");
    }
    c.submit("root", Command::Unlock { name: "web".into() })
        .unwrap();
    c.submit(
        "owner",
        Command::Checkin {
            name: "web".into(),
            image: img(4),
            parent: None,
            description: String::new(),
        },
    )
    .unwrap();
    assert_eq!(c.named("owner", "web").unwrap().default, 4);
}

/// An in-memory view for replaying a log.
#[derive(Default)]
struct Mem(BTreeMap<Vec<u8>, Vec<u8>>);

impl View for Mem {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, CatalogError> {
        Ok(self.0.get(key).cloned())
    }
    fn scan_prefix(&self, prefix: &[u8]) -> Result<mirage_node::catalog::Pairs, CatalogError> {
        Ok(self
            .0
            .range(prefix.to_vec()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }
}

#[test]
fn replaying_the_log_gives_the_same_state_and_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = setup(dir.path());
        let c = s.catalog();
        c.submit(
            "owner",
            Command::Delete {
                name: "web".into(),
                version: 1,
            },
        )
        .unwrap();
        c.submit(
            "reader",
            Command::Derive {
                source: "web".into(),
                version: None,
                name: "fork".into(),
            },
        )
        .unwrap();
        // Refused commands are not logged.
        let before = c.log().unwrap().len();
        assert!(c
            .submit(
                "reader",
                Command::Delete {
                    name: "web".into(),
                    version: 2
                }
            )
            .is_err());
        assert_eq!(c.log().unwrap().len(), before);
    }
    let s = open(dir.path());
    let c = s.catalog();
    let log = c.log().unwrap();
    assert_eq!(
        log.iter().map(|e| e.index).collect::<Vec<_>>(),
        (1..=log.len() as u64).collect::<Vec<_>>()
    );
    for _ in 0..2 {
        let mut mem = Mem::default();
        for e in &log {
            let done = apply(&mem, e).unwrap();
            for (k, v) in done.writes {
                match v {
                    Some(v) => mem.0.insert(k, v),
                    None => mem.0.remove(&k),
                };
            }
        }
        assert_eq!(mem.0, c.dump().unwrap());
    }
}

#[test]
fn deltas_need_both_images_visible_and_leases_belong_to_their_holder() {
    use mirage_node::catalog::Time;
    let dir = tempfile::tempdir().unwrap();
    let s = setup(dir.path());
    let c = s.catalog();
    let delta = img(100);
    let add = |who: &str| {
        c.submit(
            who,
            Command::AddDelta {
                source: img(1),
                target: img(2),
                delta,
            },
        )
    };
    assert_eq!(add("stranger").unwrap_err().code(), "not_found");
    add("reader").unwrap();
    assert_eq!(c.delta(&img(1), &img(2)).unwrap().unwrap().delta, delta);
    assert!(c.delta(&img(2), &img(1)).unwrap().is_none());
    let until = Time {
        secs: 2_000_000_000,
        nanos: 0,
    };
    c.submit(
        "writer",
        Command::Lease {
            id: "upload-1".into(),
            roots: vec![img(7)],
            expires: until,
        },
    )
    .unwrap();
    let leases = c.leases().unwrap();
    assert_eq!(leases.len(), 1);
    assert_eq!(
        (leases[0].holder.as_str(), leases[0].expires),
        ("writer", until)
    );
    // Another user cannot release it (it is not theirs); the holder can.
    assert!(c
        .submit(
            "reader",
            Command::ReleaseLease {
                id: "upload-1".into()
            }
        )
        .is_err());
    c.submit(
        "writer",
        Command::ReleaseLease {
            id: "upload-1".into(),
        },
    )
    .unwrap();
    assert!(c.leases().unwrap().is_empty());
}

/// Applies `command` by `caller` to `mem` as entry `index`; returns the bytes it wrote.
fn run(mem: &mut Mem, index: u64, caller: &str, command: Command) -> usize {
    let e = mirage_node::catalog::LogEntry {
        v: 1,
        index,
        time: mirage_node::catalog::Time {
            secs: index as i64,
            nanos: 0,
        },
        caller: caller.into(),
        command,
    };
    let done = apply(&*mem, &e).unwrap();
    let mut bytes = 0;
    for (k, v) in done.writes {
        bytes += k.len() + v.as_ref().map_or(0, Vec::len);
        match v {
            Some(v) => mem.0.insert(k, v),
            None => mem.0.remove(&k),
        };
    }
    bytes
}

fn checkin(name: &str, image: Digest) -> Command {
    Command::Checkin {
        name: name.into(),
        image,
        parent: None,
        description: String::new(),
    }
}

fn mem_with_admin() -> Mem {
    let mut mem = Mem::default();
    let add = Command::AddUser {
        name: "ann".into(),
        admin: true,
        token_sha256: None,
    };
    run(&mut mem, 1, "ann", add);
    mem
}

/// Adding a version writes a few small records, not the chain: the cost of the 500th version
/// is that of the 2nd.
#[test]
fn a_new_version_costs_the_same_however_long_the_chain() {
    let mut mem = mem_with_admin();
    run(&mut mem, 2, "ann", checkin("web", img(0)));
    let second = run(&mut mem, 3, "ann", checkin("web", img(1)));
    let mut last = 0;
    for i in 4..500u64 {
        last = run(&mut mem, i, "ann", checkin("web", img((i % 250) as u8)));
    }
    assert!(
        last <= second + 16,
        "version 498 wrote {last} bytes, version 2 wrote {second}"
    );
}

/// A record of version 1 (versions inline) reads as before and is rewritten as version 2
/// (versions under their own keys) by its next change, the chain intact.
#[test]
fn a_record_of_version_1_is_upgraded_by_its_next_change() {
    let mut mem = mem_with_admin();
    let version = |n: u32, i: u8, deleted: bool| {
        serde_json::json!({"number": n, "image": img(i), "created": {"secs": 1, "nanos": 0},
                           "creator": "ann", "deleted": deleted})
    };
    let legacy = serde_json::json!({
        "v": 1, "name": "web", "owner": "ann", "readers": [], "writers": [],
        "versions": [version(1, 1, false), version(2, 2, true), version(3, 3, false)],
        "default": 3, "lock": null
    });
    mem.0
        .insert(b"n/web".to_vec(), serde_json::to_vec(&legacy).unwrap());
    let mut deleting = Mem(mem.0.clone());
    run(&mut mem, 2, "ann", checkin("web", img(4)));
    let head: mirage_node::catalog::Named =
        serde_json::from_slice(&mem.0[b"n/web".as_slice()]).unwrap();
    assert_eq!((head.v, head.count, head.default), (2, 4, 4));
    assert!(head.versions.is_empty());
    for (n, i, deleted) in [
        (1u32, 1u8, false),
        (2, 2, true),
        (3, 3, false),
        (4, 4, false),
    ] {
        let key = [b"v/web\0".as_slice(), &n.to_be_bytes()].concat();
        let v: mirage_node::catalog::Version = serde_json::from_slice(&mem.0[&key]).unwrap();
        assert_eq!((v.number, v.image, v.deleted), (n, img(i), deleted));
    }
    // Deleting the default of a version 1 record moves the default to the newest version left,
    // skipping deleted ones.
    run(
        &mut deleting,
        2,
        "ann",
        Command::Delete {
            name: "web".into(),
            version: 3,
        },
    );
    let head: mirage_node::catalog::Named =
        serde_json::from_slice(&deleting.0[b"n/web".as_slice()]).unwrap();
    assert_eq!((head.v, head.count, head.default), (2, 3, 1));
}

/// The cluster layout: admins record version 1 once, then change it one version at a time
/// (optionally only from the version they looked at); everyone reads every version.
#[test]
fn layout_versions_are_kept_and_only_admins_change_them() {
    use mirage_cluster_config::{Layout, LayoutChange, Topology};
    use mirage_node::catalog::{Query, QueryAnswer};

    let dir = tempfile::tempdir().unwrap();
    let s = setup(dir.path());
    let c = s.catalog();
    let t = Topology::parse(include_str!(
        "../../cluster-config/examples/three-nodes.toml"
    ))
    .unwrap();
    let first = Layout::from_topology(&t);
    let init = |who: &str| {
        c.submit(
            who,
            Command::InitLayout {
                layout: first.clone(),
            },
        )
    };
    assert_eq!(code(init("owner")), "denied");
    assert_eq!(init("root").unwrap().layout, Some(1));
    assert_eq!(code(init("root")), "invalid", "only once");
    let add = |expect: Option<u64>| Command::ChangeLayout {
        expect,
        change: LayoutChange::Add {
            id: 4,
            address: "10.0.0.4:7300".into(),
            zone: "rack1".into(),
            capacity_gb: 4000,
        },
    };
    assert_eq!(code(c.submit("owner", add(None))), "denied");
    assert_eq!(code(c.submit("root", add(Some(7)))), "invalid");
    assert_eq!(c.submit("root", add(Some(1))).unwrap().layout, Some(2));
    // The same id again: refused by the layout's own rules.
    assert_eq!(code(c.submit("root", add(None))), "invalid");
    let read = |v: Option<u64>| match c.query("stranger", &Query::Layout { version: v }) {
        Ok(QueryAnswer::Layout(l)) => l,
        other => panic!("{other:?}"),
    };
    let now = read(None).unwrap();
    assert_eq!((now.version, now.nodes.len()), (2, 4));
    assert_eq!(read(Some(1)).unwrap(), first);
    assert_eq!(read(Some(3)), None);
    assert!(!now.moved_partitions(&first).is_empty());
}

fn imported(image: Digest, deleted: bool, parent: Option<Digest>) -> ImportedVersion {
    ImportedVersion {
        image,
        created: Time {
            secs: 1_000 + i64::from(image.as_bytes()[0]),
            nanos: 7,
        },
        creator: "alice@there".into(),
        deleted,
        parent,
        description: format!("from {}", image.to_text()),
        labels: [("os".to_string(), "debian".to_string())].into(),
    }
}

fn import(name: &str, versions: Vec<ImportedVersion>, default: u32, force: bool) -> Command {
    Command::Import {
        name: name.into(),
        versions,
        default,
        acl: None,
        force,
    }
}

#[test]
fn imports_keep_the_chain_grow_a_prefix_and_refuse_another_history() {
    let dir = tempfile::tempdir().unwrap();
    let s = setup(dir.path());
    let c = s.catalog();
    // A new name: exactly the source's chain, delete mark, times, creators and provenance.
    let chain = vec![
        imported(img(10), false, Some(img(9))),
        imported(img(11), true, Some(img(10))),
        imported(img(12), false, Some(img(10))),
    ];
    let r = c
        .submit("writer", import("app", chain.clone(), 3, false))
        .unwrap();
    assert_eq!((r.version, r.image), (Some(3), Some(img(12))));
    let n = c.named("writer", "app").unwrap();
    assert_eq!(n.owner, "writer");
    assert_eq!(n.default, 3);
    let got: Vec<(Digest, bool, &str, Time)> = n
        .versions
        .iter()
        .map(|v| (v.image, v.deleted, v.creator.as_str(), v.created))
        .collect();
    let want: Vec<(Digest, bool, &str, Time)> = chain
        .iter()
        .map(|v| (v.image, v.deleted, v.creator.as_str(), v.created))
        .collect();
    assert_eq!(got, want);
    let rec = c.image(&img(12)).unwrap().unwrap();
    assert_eq!((rec.parent, rec.state), (Some(img(10)), ImageState::Active));
    assert_eq!(rec.labels["os"], "debian");
    assert_eq!(
        c.image(&img(11)).unwrap().unwrap().state,
        ImageState::Deleted
    );

    // The same history, grown there: a new version and a delete mark on version 1. Its
    // default (version 1) is deleted, so here the default is the newest live version.
    let mut grown = chain.clone();
    grown[0].deleted = true;
    grown.push(imported(img(13), false, Some(img(12))));
    let r = c
        .submit("writer", import("app", grown.clone(), 1, false))
        .unwrap();
    assert_eq!((r.version, r.image), (Some(4), Some(img(13))));
    let n = c.named("writer", "app").unwrap();
    assert_eq!(n.versions.len(), 4);
    assert!(n.versions[0].deleted && n.versions[1].deleted && !n.versions[2].deleted);
    // Importing it again changes nothing.
    c.submit("writer", import("app", grown.clone(), 4, false))
        .unwrap();
    assert_eq!(c.named("writer", "app").unwrap(), n);

    // Another history: refused with `conflict`, unless forced (appended, never replaced).
    let other = vec![
        imported(img(20), false, None),
        imported(img(13), false, None),
    ];
    assert_eq!(
        code(c.submit("writer", import("app", other.clone(), 2, false))),
        "conflict"
    );
    assert_eq!(c.named("writer", "app").unwrap(), n);
    let r = c.submit("writer", import("app", other, 2, true)).unwrap();
    assert_eq!((r.version, r.image), (Some(5), Some(img(20))));

    // ACLs: a reader may not import into the name; only an admin imports for another owner.
    assert_eq!(
        code(c.submit(
            "reader",
            import("web", vec![imported(img(1), false, None)], 1, false)
        )),
        "denied"
    );
    let acl = ImportedAcl {
        owner: "owner".into(),
        readers: ["reader".to_string()].into(),
        writers: Default::default(),
    };
    let mut cmd = import("lib", vec![imported(img(30), false, None)], 1, false);
    if let Command::Import { acl: a, .. } = &mut cmd {
        *a = Some(acl);
    }
    assert_eq!(code(c.submit("writer", cmd.clone())), "denied");
    c.submit("root", cmd).unwrap();
    let lib = c.named("reader", "lib").unwrap();
    assert_eq!(lib.owner, "owner");
}
