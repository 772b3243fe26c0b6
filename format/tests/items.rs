//! Property, golden-vector and hostile-input tests of the item encoding.
#![allow(clippy::unwrap_used)]

use mirage_format::codec::Writer;
use mirage_format::*;
use proptest::prelude::*;

fn arb_alg() -> impl Strategy<Value = Algorithm> {
    prop_oneof![Just(Algorithm::Sha256), Just(Algorithm::Sha1)]
}

fn arb_digest() -> impl Strategy<Value = Digest> {
    (arb_alg(), any::<[u8; 32]>())
        .prop_map(|(alg, b)| Digest::from_bytes(alg, &b[..alg.digest_len()]).unwrap())
}

fn arb_name() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(
        any::<u8>().prop_filter("no / or NUL", |b| *b != b'/' && *b != 0),
        1..24,
    )
    .prop_filter("not . or ..", |n| n != b"." && n != b"..")
}

fn arb_ts() -> impl Strategy<Value = Timestamp> {
    (any::<i64>(), 0u32..1_000_000_000).prop_map(|(s, n)| Timestamp::new(s, n))
}

fn arb_bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..max)
}

fn arb_entry() -> impl Strategy<Value = TreeEntry> {
    let kinds = prop_oneof![
        Just(EntryKind::File),
        Just(EntryKind::Dir),
        Just(EntryKind::Symlink),
        Just(EntryKind::CharDev),
        Just(EntryKind::BlockDev),
        Just(EntryKind::Fifo),
        Just(EntryKind::Socket),
    ];
    let xattrs = proptest::collection::btree_map(
        proptest::collection::vec(1u8..=255, 1..16),
        arb_bytes(40),
        0..4,
    );
    (
        (
            arb_name(),
            kinds,
            0u32..=0o7777,
            any::<u32>(),
            any::<u32>(),
            any::<u64>(),
        ),
        (
            arb_ts(),
            arb_ts(),
            arb_ts(),
            proptest::option::of(arb_ts()),
            any::<u64>(),
        ),
        (
            xattrs,
            arb_digest(),
            any::<bool>(),
            proptest::collection::vec(1u8..=255, 1..60),
        ),
        (
            any::<u64>(),
            proptest::option::of(any::<u64>()),
            proptest::collection::vec((1u64..5000, 1u64..5000), 0..4),
        ),
    )
        .prop_map(
            |(
                (name, kind, mode, uid, gid, size),
                (mtime, atime, ctime, crtime, flags),
                (x, d, has, target),
                (rdev, lg, holes),
            )| {
                let mut e = TreeEntry::new(name, kind);
                e.mode = mode;
                e.uid = uid;
                e.gid = gid;
                e.size = size;
                e.mtime = mtime;
                e.atime = atime;
                e.ctime = ctime;
                e.crtime = crtime;
                e.flags = flags;
                e.xattrs = x
                    .into_iter()
                    .map(|(name, value)| Xattr { name, value })
                    .collect();
                match kind {
                    EntryKind::File => e.content = has.then_some(d),
                    EntryKind::Dir => e.content = Some(d),
                    EntryKind::Symlink => e.target = Some(target),
                    EntryKind::CharDev | EntryKind::BlockDev => e.rdev = Some(rdev),
                    _ => {}
                }
                if kind != EntryKind::Dir {
                    e.link_group = lg;
                }
                if kind == EntryKind::File {
                    let mut end = 0u64;
                    for (gap, len) in holes {
                        let offset = end + gap;
                        if offset.saturating_add(len) > size {
                            break;
                        }
                        e.holes.push((offset, len));
                        end = offset + len;
                    }
                }
                e
            },
        )
}

fn arb_tree() -> impl Strategy<Value = Tree> {
    proptest::collection::vec(arb_entry(), 0..12).prop_map(|v| {
        let mut m = std::collections::BTreeMap::new();
        for e in v {
            m.insert(e.name.clone(), e);
        }
        Tree::new(m.into_values().collect()).unwrap()
    })
}

fn arb_params() -> impl Strategy<Value = Params> {
    let v = prop_oneof![
        any::<u64>().prop_map(Param::U64),
        any::<i64>().prop_map(Param::I64),
        "[a-z0-9 ]{0,12}".prop_map(Param::Text),
        arb_bytes(12).prop_map(Param::Bytes),
    ];
    proptest::collection::btree_map("[a-z_]{1,10}", v, 0..5)
}

fn arb_extents(limit: u64) -> impl Strategy<Value = Vec<Extent>> {
    proptest::collection::vec((0u64..1000, 1u64..5000, arb_digest()), 0..10).prop_map(move |v| {
        let mut end = 0u64;
        let mut out = Vec::new();
        for (gap, len, digest) in v {
            let offset = end + gap;
            if offset + len > limit {
                break;
            }
            out.push(Extent {
                offset,
                len,
                digest,
            });
            end = offset + len;
        }
        out
    })
}

fn arb_item() -> impl Strategy<Value = Item> {
    let content = prop_oneof![
        Just(PartitionContent::Empty),
        arb_digest().prop_map(|digest| PartitionContent::Filesystem { digest }),
        arb_digest().prop_map(|digest| PartitionContent::Raw { digest }),
        (arb_bytes(16), arb_bytes(16), arb_params()).prop_map(|(uuid, label, params)| {
            PartitionContent::Swap {
                uuid,
                label,
                params,
            }
        }),
    ];
    let partition = (
        1u32..200,
        0u64..1 << 20,
        0u64..1 << 20,
        arb_bytes(16),
        arb_bytes(16),
        arb_bytes(8),
        any::<u64>(),
        arb_params(),
        content,
    )
        .prop_map(
            |(number, start, size, type_id, guid, name, attributes, params, content)| Partition {
                number,
                start,
                size,
                type_id,
                guid,
                name,
                attributes,
                params,
                content,
            },
        );
    prop_oneof![
        arb_bytes(300).prop_map(|data| Item::Blob { data }),
        (1u64..100_000).prop_flat_map(|size| arb_extents(size)
            .prop_map(move |chunks| Item::ChunkList(ChunkList { size, chunks }))),
        arb_tree().prop_map(Item::Tree),
        (
            "[a-z0-9]{1,8}",
            arb_bytes(16),
            arb_bytes(16),
            arb_params(),
            arb_digest(),
            proptest::option::of(arb_digest()),
            arb_extents(u64::MAX),
            arb_entry(),
        )
            .prop_map(
                |(fs_type, uuid, label, params, root, skeleton, pinned, e)| {
                    let mut root_attrs = TreeEntry::new(Vec::new(), EntryKind::Dir);
                    (root_attrs.mode, root_attrs.uid, root_attrs.gid) = (e.mode, e.uid, e.gid);
                    (root_attrs.mtime, root_attrs.crtime, root_attrs.xattrs) =
                        (e.mtime, e.crtime, e.xattrs);
                    Item::Filesystem(Filesystem {
                        fs_type,
                        uuid,
                        label,
                        params,
                        root,
                        root_attrs,
                        skeleton,
                        pinned,
                    })
                }
            ),
        (
            arb_bytes(16),
            arb_params(),
            proptest::collection::vec(partition, 0..5),
            arb_extents(1 << 22),
            prop_oneof![
                Just(TableType::None),
                Just(TableType::Mbr),
                Just(TableType::Gpt)
            ],
            9u32..13
        )
            .prop_map(|(disk_id, params, parts, regions, table, shift)| {
                let mut m = std::collections::BTreeMap::new();
                for p in parts {
                    m.insert(p.number, p);
                }
                Item::Disk(Disk {
                    size: 1 << 22,
                    sector_size: 1 << shift,
                    table,
                    disk_id,
                    params,
                    partitions: m.into_values().collect(),
                    regions,
                })
            }),
        (
            proptest::collection::btree_map(arb_name(), arb_digest(), 0..4),
            arb_params()
        )
            .prop_map(|(d, meta)| Item::Image(Image {
                disks: d
                    .into_iter()
                    .map(|(name, disk)| ImageDisk { name, disk })
                    .collect(),
                meta,
            })),
        (
            arb_digest(),
            arb_digest(),
            proptest::collection::vec((arb_name(), arb_name(), arb_entry(), 0u8..4), 0..6)
        )
            .prop_map(|(source, target, raw)| {
                let mut m = std::collections::BTreeMap::new();
                for (scope, dir, mut entry, op) in raw {
                    let mut path = dir;
                    path.push(b'/');
                    path.extend_from_slice(&entry.name);
                    let op = [
                        ChangeOp::Add,
                        ChangeOp::Modify,
                        ChangeOp::Delete,
                        ChangeOp::Metadata,
                    ][op as usize];
                    entry.name = path.rsplit(|b| *b == b'/').next().unwrap().to_vec();
                    let entry = (op != ChangeOp::Delete).then_some(entry);
                    m.insert(
                        (scope.clone(), path.clone()),
                        Change {
                            scope,
                            path,
                            op,
                            entry,
                        },
                    );
                }
                Item::Delta(Delta {
                    source,
                    target,
                    changes: m.into_values().collect(),
                })
            }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn decode_encode_is_identity_and_encoding_is_deterministic(item in arb_item()) {
        item.validate().unwrap();
        let bytes = item.encode();
        let back = Item::decode(&bytes).unwrap();
        prop_assert_eq!(&back, &item);
        prop_assert_eq!(back.encode(), bytes.clone());
        prop_assert_eq!(item.clone().encode(), bytes.clone());
        for alg in [Algorithm::Sha256, Algorithm::Sha1] {
            prop_assert_eq!(item.digest(alg).unwrap(), Digest::of(alg, &bytes).unwrap());
        }
    }

    #[test]
    fn tree_order_of_construction_does_not_matter(tree in arb_tree(), seed in any::<u64>()) {
        let mut shuffled = tree.entries.clone();
        let n = shuffled.len();
        if n > 1 {
            for i in 0..n {
                shuffled.swap(i, (seed as usize).wrapping_mul(i + 7) % n);
            }
        }
        let rebuilt = Tree::new(shuffled).unwrap();
        prop_assert_eq!(Item::Tree(rebuilt).encode(), Item::Tree(tree).encode());
    }

    #[test]
    fn every_truncation_and_mutation_is_an_error_or_a_valid_item(item in arb_item(), pos in any::<usize>(), byte in any::<u8>()) {
        let bytes = item.encode();
        if !matches!(item, Item::Blob { .. }) {
            for cut in 0..bytes.len() {
                prop_assert!(Item::decode(&bytes[..cut]).is_err(), "prefix of {} decoded", cut);
            }
        }
        let mut m = bytes.clone();
        let i = pos % m.len();
        m[i] = byte;
        if let Ok(v) = Item::decode(&m) {
            // Whatever decodes must be canonical: it re-encodes to the very same bytes.
            prop_assert_eq!(v.encode(), m);
        }
    }

    #[test]
    fn random_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..512), kind in 1u8..8) {
        let mut v = vec![kind, 1];
        v.extend_from_slice(&data);
        if let Ok(item) = Item::decode(&v) {
            prop_assert_eq!(item.encode(), v);
        }
    }
}

fn golden_items() -> Vec<(&'static str, Item)> {
    let blob = Item::Blob {
        data: b"hello, mirage\n".to_vec(),
    };
    let bd = blob.digest(Algorithm::Sha256).unwrap();
    let mut file = TreeEntry::new(&b"motd"[..], EntryKind::File);
    file.mode = 0o644;
    file.size = 14;
    file.mtime = Timestamp::new(-86_400, 123_456_789);
    file.atime = Timestamp::new(4_102_444_800, 1);
    file.ctime = Timestamp::new(1_700_000_000, 999_999_999);
    file.content = Some(bd);
    file.xattrs = vec![Xattr {
        name: b"user.note".to_vec(),
        value: vec![0, 1, 2],
    }];
    let mut link = TreeEntry::new(&b"l\xff"[..], EntryKind::Symlink);
    link.mode = 0o777;
    link.target = Some(b"motd".to_vec());
    let mut dev = TreeEntry::new(&b"null"[..], EntryKind::CharDev);
    dev.mode = 0o666;
    dev.rdev = Some((1 << 8) | 3);
    let tree = Item::Tree(Tree::new(vec![link, file, dev]).unwrap());
    let td = tree.digest(Algorithm::Sha256).unwrap();
    let chunks = Item::ChunkList(ChunkList {
        size: 1 << 30,
        chunks: vec![Extent {
            offset: 4096,
            len: 14,
            digest: bd,
        }],
    });
    let mut params = Params::new();
    params.insert("block_size".into(), Param::U64(4096));
    params.insert("features".into(), Param::Text("has_journal,extent".into()));
    let fs = Item::Filesystem(Filesystem {
        fs_type: "ext4".into(),
        uuid: vec![0x11; 16],
        label: b"root".to_vec(),
        params,
        root: td,
        root_attrs: {
            let mut r = TreeEntry::new(Vec::new(), EntryKind::Dir);
            r.mode = 0o755;
            r.mtime = Timestamp::new(1_700_000_000, 42);
            r
        },
        skeleton: None,
        pinned: vec![],
    });
    let fd = fs.digest(Algorithm::Sha256).unwrap();
    let disk = Item::Disk(Disk {
        size: 2 << 30,
        sector_size: 512,
        table: TableType::Gpt,
        disk_id: vec![0x22; 16],
        params: Params::new(),
        partitions: vec![Partition {
            number: 1,
            start: 1 << 20,
            size: 1 << 30,
            type_id: vec![0x33; 16],
            guid: vec![0x44; 16],
            name: b"r\0o\0o\0t\0".to_vec(),
            attributes: 0,
            params: Params::new(),
            content: PartitionContent::Filesystem { digest: fd },
        }],
        regions: vec![],
    });
    let dd = disk.digest(Algorithm::Sha256).unwrap();
    let image = Item::Image(Image {
        disks: vec![ImageDisk {
            name: b"vda".to_vec(),
            disk: dd,
        }],
        meta: Params::new(),
    });
    vec![
        ("blob", blob),
        ("tree", tree),
        ("chunklist", chunks),
        ("filesystem", fs),
        ("disk", disk),
        ("image", image.clone()),
        ("delta", delta(&image, bd)),
    ]
}

fn delta(image: &Item, content: Digest) -> Item {
    let target = image.digest(Algorithm::Sha256).unwrap();
    let mut e = TreeEntry::new(&b"motd"[..], EntryKind::File);
    e.mode = 0o600;
    e.size = 14;
    e.content = Some(content);
    Item::Delta(Delta {
        source: target,
        target,
        changes: vec![
            Change {
                scope: b"vda/1".to_vec(),
                path: b"etc/motd".to_vec(),
                op: ChangeOp::Modify,
                entry: Some(e),
            },
            Change {
                scope: b"vda/1".to_vec(),
                path: b"etc/old".to_vec(),
                op: ChangeOp::Delete,
                entry: None,
            },
        ],
    })
}

/// Pinned digests: any change to the encoding of these items fails here, loudly.
const GOLDEN: [(&str, &str, &str); 7] = [
    (
        "blob",
        "9bf111a143daf69b0c9cadcf3d8b52b29eb58afb7d03084c2e2686bd4762864f",
        "cacc2be9a3b9614409c2ae10c6085c3e04bc263c",
    ),
    (
        "tree",
        "e4457cfdc8cbac5ddff8c0d5d65c4d62379993b93fc70944de600e97cad04b08",
        "3c5c6da3c8d4bcc13c2f0c31e70d32eddd593f83",
    ),
    (
        "chunklist",
        "8ea6571b72bd11440b75f5c846d7657b60b7374bc135e215b43b42d121cefe47",
        "2d747c6fe29d37d44286dd835af5840959ab9a01",
    ),
    (
        "filesystem",
        "2155da27ab70de5258ac566435b2035ff38001e68a49325eb2567bf2dc7f51af",
        "90d13f933380f958f7810464394e902b1a25fca2",
    ),
    (
        "disk",
        "56e7c7323f1bd3a9b8bee30f65af04a69dfb15f130b88cb5213d4b7cae47f331",
        "38236ce0ea774fbd15bffff1dd0766fd5b104c49",
    ),
    (
        "image",
        "c372e32b32223297f249a0e98c7b07c39f8281b17b98f306b284bd5b5d2e1837",
        "9ad8b2d34de16e7d11057d533aa991617da8faeb",
    ),
    (
        "delta",
        "fea4362663b662267208e749e142e4b7faa8c08bd3994de01f4c796e01dbe6a2",
        "937d6c3b067ec9bcad66251c091fe432de7d6175",
    ),
];

#[test]
fn golden_vectors_pin_the_format() {
    let items = golden_items();
    let mut report = String::new();
    let mut ok = true;
    for ((name, item), (gname, g256, g1)) in items.iter().zip(GOLDEN) {
        assert_eq!(*name, gname);
        let d256 = item.digest(Algorithm::Sha256).unwrap().hex();
        let d1 = item.digest(Algorithm::Sha1).unwrap().hex();
        report.push_str(&format!("    (\"{name}\", \"{d256}\", \"{d1}\"),\n"));
        ok &= d256 == g256 && d1 == g1;
    }
    assert!(
        ok,
        "item digests changed; the format is pinned. Computed:\n{report}"
    );
}

fn entry_tree_bytes(names: &[&[u8]]) -> Vec<u8> {
    // Hand-built Tree encoding that bypasses the constructor's sorting and checks.
    let mut w = Writer::new();
    w.u8(ItemKind::Tree.code());
    w.u8(1);
    w.uvar(names.len() as u64);
    for n in names {
        w.bytes(n);
        w.u8(6); // fifo
        w.u8(0); // nothing optional
        for _ in 0..4 {
            w.uvar(0); // mode uid gid size
        }
        for _ in 0..3 {
            w.ivar(0);
            w.uvar(0);
        }
        w.uvar(0); // flags
        w.uvar(0); // xattrs
    }
    w.into_bytes()
}

#[test]
fn hostile_names_and_orders_are_refused() {
    assert!(Item::decode(&entry_tree_bytes(&[b"a", b"b"])).is_ok());
    for bad in [
        &[&b""[..]][..],
        &[b"."],
        &[b".."],
        &[b"a/b"],
        &[b"a\0b"],
        &[b"b", b"a"],
        &[b"a", b"a"],
    ] {
        let err = Item::decode(&entry_tree_bytes(bad)).unwrap_err();
        assert!(matches!(err, DecodeError::Invalid { .. }), "{bad:?}: {err}");
    }
    let long = vec![b'x'; tree::MAX_NAME + 1];
    assert!(Item::decode(&entry_tree_bytes(&[&long])).is_err());
}

#[test]
fn unknown_kinds_versions_and_huge_lengths_are_refused() {
    assert_eq!(Item::decode(&[]), Err(DecodeError::Truncated("item kind")));
    assert_eq!(Item::decode(&[0, 1]), Err(DecodeError::UnknownKind(0)));
    assert_eq!(Item::decode(&[99, 1, 0]), Err(DecodeError::UnknownKind(99)));
    assert!(matches!(
        Item::decode(&[3, 2, 0]),
        Err(DecodeError::UnsupportedVersion { version: 2, .. })
    ));
    // A tree claiming 2^62 entries in a handful of bytes.
    let mut w = Writer::new();
    w.u8(3);
    w.u8(1);
    w.uvar(1 << 62);
    w.raw(&[0; 8]);
    assert!(matches!(
        Item::decode(&w.into_bytes()),
        Err(DecodeError::TooLong { .. })
    ));
    // A name claiming u64::MAX bytes.
    let mut w = Writer::new();
    w.u8(3);
    w.u8(1);
    w.uvar(1);
    w.uvar(u64::MAX);
    w.raw(&[0; 32]);
    assert!(matches!(
        Item::decode(&w.into_bytes()),
        Err(DecodeError::TooLong { .. })
    ));
    // Trailing garbage after a complete item.
    let mut ok = Item::Tree(Tree::default()).encode();
    ok.push(0);
    assert_eq!(Item::decode(&ok), Err(DecodeError::TrailingBytes(1)));
}

#[test]
fn refs_cover_every_reference_once() {
    let items = golden_items();
    let tree = &items[1].1;
    assert_eq!(tree.refs().len(), 1);
    let fs = &items[3].1;
    let Item::Filesystem(f) = fs else { panic!() };
    assert_eq!(fs.refs(), vec![f.root]);
    assert!(items[0].1.refs().is_empty());
}

#[test]
fn json_view_is_readable() {
    let items = golden_items();
    let v = serde_json::to_value(&items[1].1).unwrap();
    assert_eq!(v["kind"], "tree");
    let names: Vec<_> = v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].clone())
        .collect();
    assert_eq!(names[0], serde_json::json!({"hex": "6cff"}));
    assert_eq!(names[1], "motd");
    assert!(v["entries"][1]["content"]
        .as_str()
        .unwrap()
        .starts_with("sha256:"));
    assert_eq!(serde_json::to_value(&items[0].1).unwrap()["size"], 14);
}

proptest! {
    #[test]
    fn blob_data_is_a_blobs_content_and_none_for_other_items(item in arb_item()) {
        let encoded = item.encode();
        match (&item, item::blob_data(&encoded).unwrap()) {
            (Item::Blob { data }, Some(got)) => prop_assert_eq!(got, &data[..]),
            (Item::Blob { .. }, None) => prop_assert!(false, "a blob without content"),
            (_, got) => prop_assert!(got.is_none()),
        }
    }
}

#[test]
fn blob_data_refuses_what_decode_refuses() {
    let mut unknown_version = item::encode_blob(b"abc");
    unknown_version[1] = 9;
    assert!(item::blob_data(&unknown_version).is_err());
    assert!(Item::decode(&unknown_version).is_err());
    assert!(item::blob_data(&[]).is_err());
    let too_long = item::encode_blob(&vec![0u8; item::MAX_ITEM]);
    assert!(item::blob_data(&too_long).is_err());
    assert!(Item::decode(&too_long).is_err());
}

#[test]
fn holes_round_trip_and_bad_ones_are_refused() {
    let file = |holes: Vec<(u64, u64)>| {
        let mut e = TreeEntry::new(&b"swap"[..], EntryKind::File);
        e.size = 1 << 20;
        e.holes = holes;
        e
    };
    let good = file(vec![(0, 4096), (8192, 4096), (1 << 19, 1 << 19)]);
    let item = Item::Tree(Tree::new(vec![good.clone()]).unwrap());
    let Item::Tree(back) = Item::decode(&item.encode()).unwrap() else {
        panic!("not a tree")
    };
    assert_eq!(back.entries, vec![good]);
    // An entry without holes encodes as before the field existed (the golden vectors pin it).
    let plain = Item::Tree(Tree::new(vec![file(Vec::new())]).unwrap()).encode();
    assert!(plain.len() < item.encode().len());
    for bad in [
        vec![(0, 0)],                  // empty
        vec![(4096, 4096), (0, 4096)], // unsorted
        vec![(0, 4096), (4096, 4096)], // touching: one hole written as two
        vec![(0, 8192), (4096, 8192)], // overlapping
        vec![((1 << 20) - 10, 11)],    // past the size
        vec![(u64::MAX - 1, 2)],       // overflowing
    ] {
        assert!(
            Tree::new(vec![file(bad.clone())]).is_err(),
            "{bad:?} accepted"
        );
    }
    let mut dir = TreeEntry::new(&b"d"[..], EntryKind::Dir);
    dir.content = Some(Digest::of(Algorithm::Sha256, b"t").unwrap());
    dir.holes = vec![(0, 1)];
    assert!(Tree::new(vec![dir]).is_err(), "holes on a directory");
    // A presence bit beyond the known ones is refused, not skipped.
    let mut bytes = entry_tree_bytes(&[b"a"]);
    let at = bytes.iter().position(|&b| b == 6).unwrap() + 1; // after the kind byte
    bytes[at] = 64;
    assert!(matches!(
        Item::decode(&bytes),
        Err(DecodeError::UnknownTag { .. })
    ));
}
