//! Storage engine behaviour: closure, dedup under concurrency, damage, torn tails, batch reads.
#![allow(clippy::unwrap_used)]

mod common;

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;

use common::*;
use mirage_format::chunking::EncodedItem;
use mirage_format::{Algorithm, Digest};
use mirage_node::store::record::HEADER_LEN;
use mirage_node::{ReadOptions, Store, StoreError, StoreOptions};

fn volume_path(dir: &std::path::Path, id: u32) -> std::path::PathBuf {
    dir.join("volumes").join(format!("{id:08}.vol"))
}

#[test]
fn items_round_trip_and_survive_reopen_with_every_codec() {
    use mirage_node::Codec;
    for codec in [Codec::None, Codec::Lz4, Codec::Zstd(1), Codec::Zstd(-3)] {
        let dir = tempfile::tempdir().unwrap();
        let alg = Algorithm::Sha256;
        let mut blobs: Vec<_> = (0..40).map(|i| blob(alg, i)).collect();
        // Text that every codec compresses (the others are noise LZ4 cannot shrink).
        let text = b"mirage stores disk images as files. ".repeat(20_000);
        blobs.push(mirage_format::chunking::EncodedItem::blob(alg, &text).unwrap());
        let tree = tree_of(alg, &blobs.iter().collect::<Vec<_>>());
        let opts = StoreOptions {
            codec,
            ..StoreOptions::default()
        };
        {
            let s = open_with(dir.path(), opts.clone());
            let mut batch: Vec<Vec<u8>> = blobs.iter().map(|b| b.bytes().to_vec()).collect();
            batch.push(tree.bytes().to_vec());
            let out = s.put_many(batch).unwrap();
            assert!(out.iter().all(|o| o.new));
            // Items from outside are hashed by the store (side by side): the same digests.
            let want: Vec<_> = blobs.iter().chain([&tree]).map(|i| i.digest()).collect();
            let got: Vec<_> = out.iter().map(|o| o.digest).collect();
            assert_eq!(got, want);
            // Storing again stores nothing.
            assert!(s.put(tree.bytes().to_vec()).map(|o| !o.new).unwrap());
        }
        // Reopened with another codec: records say how they were written.
        let s = open_with(
            dir.path(),
            StoreOptions {
                codec: Codec::None,
                ..opts
            },
        );
        for b in &blobs {
            assert_eq!(read_ok(&s, &b.digest()), b.bytes(), "{codec}");
        }
        assert_eq!(read_ok(&s, &tree.digest()), tree.bytes());
        let st = s.stats().unwrap();
        assert_eq!(st.items, 42);
        let compressed = codec != Codec::None;
        assert_eq!(
            st.stored_bytes < st.logical_bytes,
            compressed,
            "{codec}: {st:?}"
        );
        let report = s.verify(|_| {}).unwrap();
        assert!(report.damaged.is_empty(), "{:?}", report.damaged);
        assert_eq!(report.items_ok, 42);
    }
}

#[test]
fn missing_references_are_refused_and_batches_are_atomic() {
    let dir = tempfile::tempdir().unwrap();
    let alg = Algorithm::Sha256;
    let s = open(dir.path());
    let (a, b) = (blob(alg, 1), blob(alg, 2));
    let tree = tree_of(alg, &[&a, &b]);
    s.put(a.bytes().to_vec()).unwrap();
    match s.put(tree.bytes().to_vec()) {
        Err(StoreError::MissingReferences { digest, missing }) => {
            assert_eq!(digest, tree.digest());
            assert_eq!(missing, vec![b.digest()]);
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(!s.has(&tree.digest()).unwrap());
    // A refused batch stores nothing, not even its valid members.
    let c = blob(alg, 3);
    let lonely = tree_of(alg, &[&blob(alg, 99)]);
    assert!(s
        .put_many(vec![c.bytes().to_vec(), lonely.bytes().to_vec()])
        .is_err());
    assert!(!s.has(&c.digest()).unwrap());
    // Of several parents, the refusal names the first one with a missing reference, and only
    // the references that are missing.
    let fine = tree_of(alg, &[&a]);
    let (d, e) = (blob(alg, 4), blob(alg, 5));
    let short = tree_of(alg, &[&a, &d, &e]);
    match s.put_many(vec![
        fine.bytes().to_vec(),
        e.bytes().to_vec(),
        short.bytes().to_vec(),
    ]) {
        Err(StoreError::MissingReferences { digest, missing }) => {
            assert_eq!(digest, short.digest());
            assert_eq!(missing, vec![d.digest()]);
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(!s.has(&fine.digest()).unwrap());
    // References arriving in the same batch satisfy the closure, in any order.
    s.put_many(vec![tree.bytes().to_vec(), b.bytes().to_vec()])
        .unwrap();
    assert!(s.has(&tree.digest()).unwrap());
    // Garbage and foreign algorithms are refused with a reason.
    assert!(matches!(
        s.put(vec![3, 1, 0xff]),
        Err(StoreError::InvalidItem { index: 0, .. })
    ));
    let sha1_tree = tree_of(Algorithm::Sha1, &[&blob(Algorithm::Sha1, 5)]);
    assert!(matches!(
        s.put(sha1_tree.bytes().to_vec()),
        Err(StoreError::WrongAlgorithm { .. })
    ));
}

#[test]
fn eight_concurrent_writers_store_each_item_once() {
    let dir = tempfile::tempdir().unwrap();
    let alg = Algorithm::Sha256;
    let s = open(dir.path());
    let threads: Vec<_> = (0..8u64)
        .map(|t| {
            let s = s.clone();
            std::thread::spawn(move || {
                // Writer t stores items t*25 .. t*25+100: each item is wanted by up to 4 writers.
                let mut new = 0;
                for chunk in (t * 25..t * 25 + 100).collect::<Vec<_>>().chunks(7) {
                    let batch = chunk.iter().map(|i| blob(alg, *i).into_bytes()).collect();
                    new += s.put_many(batch).unwrap().iter().filter(|o| o.new).count();
                }
                new
            })
        })
        .collect();
    let stored_new: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
    let unique = 7 * 25 + 100;
    assert_eq!(stored_new, unique, "each item reported new exactly once");
    let report = s.verify(|_| {}).unwrap();
    assert_eq!(
        report.records, unique as u64,
        "volumes hold one record per item"
    );
    assert_eq!(report.items_ok, unique as u64);
    assert!(report.damaged.is_empty());
}

#[test]
fn a_flipped_byte_gives_an_integrity_error_naming_the_item() {
    let dir = tempfile::tempdir().unwrap();
    let alg = Algorithm::Sha256;
    let items: Vec<_> = (0..20).map(|i| blob(alg, i)).collect();
    let victim = items[9].digest();
    let loc;
    {
        let s = open(dir.path());
        s.put_many(items.iter().map(|i| i.bytes().to_vec()).collect())
            .unwrap();
        loc = s.location(&victim).unwrap().unwrap();
    }
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(volume_path(dir.path(), loc.volume))
        .unwrap();
    let at = loc.offset + HEADER_LEN as u64 + u64::from(loc.stored_len) / 2;
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at).unwrap();
    f.write_all_at(&[b[0] ^ 0x01], at).unwrap();
    drop(f);
    let s = open(dir.path());
    match s.get(&victim) {
        Err(StoreError::Integrity {
            digest,
            volume,
            offset,
            ..
        }) => {
            assert_eq!((digest, volume, offset), (victim, loc.volume, loc.offset));
            let msg = s.get(&victim).unwrap_err().to_string();
            assert!(msg.contains(&victim.to_text()), "{msg}");
        }
        other => panic!("expected an integrity error, got {other:?}"),
    }
    for i in items.iter().filter(|i| i.digest() != victim) {
        assert_eq!(read_ok(&s, &i.digest()), i.bytes());
    }
    // Batch reads serve the others and report the victim.
    let wanted: Vec<Digest> = items.iter().map(|i| i.digest()).collect();
    let mut bad = Vec::new();
    let stats = s
        .get_many(&wanted, None, ReadOptions::default(), |d, r| {
            if r.is_err() {
                bad.push(d)
            }
        })
        .unwrap();
    assert_eq!((stats.served, bad), (20, vec![victim]));
    let report = s.verify(|_| {}).unwrap();
    assert_eq!(report.damaged.len(), 1, "{:?}", report.damaged);
    assert_eq!(report.damaged[0].digest, Some(victim));
    assert_eq!(report.items_ok, 19);
    // The store stays writable, and the victim can be stored again... but not while indexed:
    // the damaged copy is reported, not silently replaced.
    s.put(blob(alg, 1000).into_bytes()).unwrap();
}

#[test]
fn a_torn_tail_is_cut_on_open_and_the_store_stays_writable() {
    let dir = tempfile::tempdir().unwrap();
    let alg = Algorithm::Sha256;
    let items: Vec<_> = (0..10).map(|i| blob(alg, i)).collect();
    let good_len;
    {
        let s = open(dir.path());
        s.put_many(items.iter().map(|i| i.bytes().to_vec()).collect())
            .unwrap();
        good_len = std::fs::metadata(volume_path(dir.path(), 1)).unwrap().len();
    }
    // A record torn by a crash: a valid header with half its payload.
    let torn = blob(alg, 77);
    let rec = mirage_node::store::record::encode_record(
        &torn.digest(),
        mirage_format::ItemKind::Blob,
        mirage_node::store::Compression::None,
        torn.bytes().len() as u32,
        torn.bytes(),
    );
    let f = OpenOptions::new()
        .append(true)
        .open(volume_path(dir.path(), 1))
        .unwrap();
    std::io::Write::write_all(&mut &f, &rec[..rec.len() / 2]).unwrap();
    drop(f);
    let s = open(dir.path());
    assert_eq!(
        std::fs::metadata(volume_path(dir.path(), 1)).unwrap().len(),
        good_len
    );
    assert!(!s.has(&torn.digest()).unwrap());
    for i in &items {
        read_ok(&s, &i.digest());
    }
    let more = blob(alg, 500);
    assert!(s.put(more.bytes().to_vec()).unwrap().new);
    drop(s);
    let s = open(dir.path());
    read_ok(&s, &more.digest());
    assert!(s.verify(|_| {}).unwrap().damaged.is_empty());
}

#[test]
fn a_volume_cut_inside_its_checkpoint_loses_only_the_cut_items() {
    let dir = tempfile::tempdir().unwrap();
    let alg = Algorithm::Sha256;
    let items: Vec<_> = (0..10).map(|i| blob(alg, i)).collect();
    let last;
    {
        let s = open(dir.path());
        s.put_many(items.iter().map(|i| i.bytes().to_vec()).collect())
            .unwrap();
        last = items
            .iter()
            .map(|i| (s.location(&i.digest()).unwrap().unwrap(), i.digest()))
            .max_by_key(|(l, _)| l.offset)
            .unwrap();
    }
    let f = OpenOptions::new()
        .write(true)
        .open(volume_path(dir.path(), 1))
        .unwrap();
    f.set_len(last.0.offset + 10).unwrap();
    drop(f);
    let s = open(dir.path());
    assert_eq!(
        std::fs::metadata(volume_path(dir.path(), 1)).unwrap().len(),
        last.0.offset
    );
    assert!(
        !s.has(&last.1).unwrap(),
        "an item cut off the volume is no longer indexed"
    );
    for i in items.iter().filter(|i| i.digest() != last.1) {
        read_ok(&s, &i.digest());
    }
    s.put(blob(alg, 9).into_bytes()).unwrap();
    assert!(s.verify(|_| {}).unwrap().damaged.is_empty());
}

#[test]
fn unindexed_records_past_the_checkpoint_are_reindexed() {
    let dir = tempfile::tempdir().unwrap();
    let alg = Algorithm::Sha256;
    let items: Vec<_> = (0..6).map(|i| blob(alg, i)).collect();
    let tree = tree_of(alg, &items.iter().collect::<Vec<_>>());
    {
        let s = open(dir.path());
        let mut b: Vec<_> = items.iter().map(|i| i.bytes().to_vec()).collect();
        b.push(tree.bytes().to_vec());
        s.put_many(b).unwrap();
    }
    // Throw the index away entirely: the volumes alone rebuild it.
    std::fs::remove_dir_all(dir.path().join("index")).unwrap();
    let s = open(dir.path());
    read_ok(&s, &tree.digest());
    let table = s.location_table(&tree.digest()).unwrap().unwrap();
    assert_eq!(table.entries.len(), 6);
    for i in &items {
        read_ok(&s, &i.digest());
    }
}

#[test]
fn batch_reads_follow_the_location_table_in_volume_order() {
    let dir = tempfile::tempdir().unwrap();
    let alg = Algorithm::Sha1;
    let s = open_with(
        dir.path(),
        StoreOptions {
            algorithm: Some(alg),
            max_volume_size: 300_000,
            ..StoreOptions::default()
        },
    );
    assert_eq!(s.algorithm(), Algorithm::Sha1);
    let items: Vec<_> = (0..30).map(|i| blob(alg, i)).collect();
    for i in items.iter().rev() {
        s.put(i.bytes().to_vec()).unwrap();
    }
    let tree = tree_of(alg, &items.iter().collect::<Vec<_>>());
    s.put(tree.bytes().to_vec()).unwrap();
    assert!(s.stats().unwrap().volumes > 3, "small volumes rotate");
    let wanted: Vec<Digest> = items.iter().map(|i| i.digest()).collect();
    let mut order = Vec::new();
    let stats = s
        .get_many(
            &wanted,
            Some(&tree.digest()),
            ReadOptions::default(),
            |d, r| {
                let bytes = r.unwrap();
                assert_eq!(Digest::of(alg, &bytes).unwrap(), d);
                order.push(s.location(&d).unwrap().unwrap());
            },
        )
        .unwrap();
    assert_eq!(stats.served, 30);
    assert_eq!(stats.table_hits, 30);
    assert_eq!(stats.index_lookups, 0);
    assert!(order
        .windows(2)
        .all(|w| (w[0].volume, w[0].offset) < (w[1].volume, w[1].offset)));
    assert!(
        stats.read_ops < 30,
        "adjacent records are read together ({} reads)",
        stats.read_ops
    );
    // Without a context every location comes from the index.
    let stats = s
        .get_many(&wanted, None, ReadOptions::default(), |_, r| {
            assert!(r.is_ok())
        })
        .unwrap();
    assert_eq!((stats.table_hits, stats.index_lookups), (0, 30));
    // A store refuses to be reopened with another algorithm.
    drop(s);
    let err = mirage_node::Store::open(
        dir.path(),
        StoreOptions {
            algorithm: Some(Algorithm::Sha256),
            ..StoreOptions::default()
        },
    )
    .unwrap_err();
    assert!(err.to_string().contains("sha1"), "{err}");
}

#[test]
fn opening_a_directory_without_a_store_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let err = mirage_node::Store::open(dir.path(), StoreOptions::default()).unwrap_err();
    assert!(err.to_string().contains("mirage init"), "{err}");
    // A volume whose header is garbage, with no valid record after it, is refused, not
    // overwritten (an empty volume's damaged header is rewritten: it holds nothing).
    drop(open(dir.path()));
    let f = OpenOptions::new()
        .write(true)
        .open(volume_path(dir.path(), 1))
        .unwrap();
    f.write_all_at(&[b"NOTAVOLUME".as_slice(), &[7u8; 90]].concat(), 0)
        .unwrap();
    let err = mirage_node::Store::open(dir.path(), StoreOptions::default()).unwrap_err();
    assert!(err.to_string().contains("volume header"), "{err}");
}

#[test]
fn recovery_indexes_only_records_whose_references_are_present() {
    let dir = tempfile::tempdir().unwrap();
    let alg = Algorithm::Sha256;
    let (a, b) = (blob(alg, 1), blob(alg, 2));
    {
        let s = open(dir.path());
        s.put(a.bytes().to_vec()).unwrap();
    }
    // Records past the checkpoint, as a crash in the middle of a group could leave them: a
    // tree whose child never reached the disk, and a tree whose child is stored.
    let orphan = tree_of(alg, &[&b]);
    let fine = tree_of(alg, &[&a]);
    let f = OpenOptions::new()
        .append(true)
        .open(volume_path(dir.path(), 1))
        .unwrap();
    for t in [&orphan, &fine] {
        let rec = mirage_node::store::record::encode_record(
            &t.digest(),
            mirage_format::ItemKind::Tree,
            mirage_node::store::Compression::None,
            t.bytes().len() as u32,
            t.bytes(),
        );
        std::io::Write::write_all(&mut &f, &rec).unwrap();
    }
    drop(f);
    let s = open(dir.path());
    assert!(
        !s.has(&orphan.digest()).unwrap(),
        "a parent without its child must not appear"
    );
    assert_eq!(read_ok(&s, &fine.digest()), fine.bytes());
    assert_eq!(
        s.location_table(&fine.digest())
            .unwrap()
            .unwrap()
            .entries
            .len(),
        1
    );
    // Once the child arrives the parent can be stored normally.
    s.put_many(vec![b.bytes().to_vec(), orphan.bytes().to_vec()])
        .unwrap();
    read_ok(&s, &orphan.digest());
}

#[test]
fn a_request_never_straddles_two_volumes() {
    let dir = tempfile::tempdir().unwrap();
    let alg = Algorithm::Sha256;
    let s = open_with(
        dir.path(),
        StoreOptions {
            max_volume_size: 500_000,
            ..StoreOptions::default()
        },
    );
    for batch in 0..6u64 {
        let items: Vec<_> = (0..5).map(|i| blob(alg, 1000 + batch * 10 + i)).collect();
        s.put_many(items.iter().map(|i| i.bytes().to_vec()).collect())
            .unwrap();
        let vols: std::collections::HashSet<u32> = items
            .iter()
            .map(|i| s.location(&i.digest()).unwrap().unwrap().volume)
            .collect();
        assert_eq!(vols.len(), 1, "batch {batch} spread over volumes {vols:?}");
    }
    assert!(s.stats().unwrap().volumes >= 2);
}

#[test]
fn items_encoded_in_process_store_like_raw_bytes_and_keep_the_closure_check() {
    let dir = tempfile::tempdir().unwrap();
    let alg = Algorithm::Sha256;
    let s = open(dir.path());
    let blobs: Vec<_> = (0..8).map(|i| blob(alg, i)).collect();
    let tree = tree_of(alg, &blobs.iter().collect::<Vec<_>>());
    // The tree alone: its children are missing, so it is refused.
    assert!(matches!(
        s.put_encoded(vec![tree.clone()]),
        Err(StoreError::MissingReferences { .. })
    ));
    let mut batch = blobs.clone();
    batch.push(tree.clone());
    let out = s.put_encoded(batch).unwrap();
    assert!(out.iter().all(|o| o.new));
    assert_eq!(out.last().unwrap().digest, tree.digest());
    assert_eq!(read_ok(&s, &tree.digest()), tree.bytes());
    // The same bytes through the hashing path are already there.
    assert!(!s.put(tree.bytes().to_vec()).unwrap().new);
    // A SHA-1 item is refused by a SHA-256 store whichever way it comes.
    let sha1 = blob(Algorithm::Sha1, 99);
    assert!(matches!(
        s.put_encoded(vec![sha1]),
        Err(StoreError::WrongAlgorithm { .. })
    ));
}

#[test]
fn compaction_recompresses_drops_old_volumes_and_keeps_tables_and_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let alg = Algorithm::Sha256;
    let opts = StoreOptions {
        create: true,
        max_volume_size: 512 << 10,
        codec: mirage_node::Codec::None,
        ..StoreOptions::default()
    };
    let s = open_with(dir.path(), opts.clone());
    let items: Vec<_> = (0..40).map(|i| blob(alg, i)).collect();
    for chunk in items.chunks(5) {
        s.put_encoded(chunk.to_vec()).unwrap();
    }
    let tree = tree_of(alg, &items.iter().collect::<Vec<_>>());
    s.put_encoded(vec![tree.clone()]).unwrap();
    let before = s.stats().unwrap();
    assert!(before.volumes > 3, "small volumes rotate");
    let old_ids: Vec<u32> = items
        .iter()
        .map(|i| s.location(&i.digest()).unwrap().unwrap().volume)
        .collect();
    let r = s
        .compact(mirage_node::CompactOptions {
            level: 9,
            threads: 2,
        })
        .unwrap();
    assert_eq!(r.items, 41, "{r:?}");
    assert_eq!((r.dropped, r.damaged), (0, 0), "{r:?}");
    assert!(r.bytes_after < r.bytes_before, "{r:?}");
    for v in old_ids {
        assert!(
            !volume_path(dir.path(), v).exists(),
            "volume {v} still there"
        );
    }
    // Every item reads back the same, and the tree's location table was rewritten: a read in
    // its context needs no index lookup.
    let wanted: Vec<Digest> = items.iter().map(|i| i.digest()).collect();
    let stats = s
        .get_many(
            &wanted,
            Some(&tree.digest()),
            ReadOptions::default(),
            |d, r| {
                let want = items.iter().find(|i| i.digest() == d).unwrap();
                assert_eq!(r.unwrap(), want.bytes());
            },
        )
        .unwrap();
    assert_eq!(
        (stats.served, stats.table_hits, stats.index_lookups),
        (40, 40, 0)
    );
    // Writes go on after a compaction, and everything survives a reopen and verifies clean.
    s.put_encoded(vec![blob(alg, 1000)]).unwrap();
    drop(s);
    let s = open_with(dir.path(), opts);
    assert_eq!(read_ok(&s, &tree.digest()), tree.bytes());
    assert_eq!(
        read_ok(&s, &blob(alg, 1000).digest()),
        blob(alg, 1000).bytes()
    );
    let report = s.verify(|_| {}).unwrap();
    assert!(report.damaged.is_empty(), "{:?}", report.damaged);
    assert_eq!(report.items_ok, 42);
    // A second compaction finds nothing to drop and keeps every item.
    let again = s
        .compact(mirage_node::CompactOptions {
            level: 9,
            threads: 1,
        })
        .unwrap();
    assert_eq!((again.items, again.dropped), (42, 0));
}

#[test]
fn counts_follow_writes_rotations_and_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let alg = Algorithm::Sha256;
    let s = open_with(
        dir.path(),
        StoreOptions {
            create: true,
            max_volume_size: 512 << 10,
            codec: mirage_node::Codec::None,
            ..StoreOptions::default()
        },
    );
    let matches_stats = |s: &mirage_node::Store| {
        let (c, st) = (s.counts().unwrap(), s.stats().unwrap());
        assert_eq!((c.items, c.stored_bytes), (st.items, st.stored_bytes));
        c.items
    };
    let items: Vec<_> = (0..40).map(|i| blob(alg, 100 + i)).collect();
    s.put_encoded(items[..10].to_vec()).unwrap();
    assert_eq!(matches_stats(&s), 10, "first count: a scan");
    // Later writes (rotating volumes, with duplicates) are added by the committer.
    for chunk in items.chunks(5) {
        s.put_encoded(chunk.to_vec()).unwrap();
    }
    let tree = tree_of(alg, &items.iter().collect::<Vec<_>>());
    s.put_encoded(vec![tree]).unwrap();
    assert_eq!(matches_stats(&s), 41);
    // Compaction recompresses: the stored bytes change and are counted again.
    s.compact(mirage_node::CompactOptions {
        level: 9,
        threads: 2,
    })
    .unwrap();
    assert_eq!(matches_stats(&s), 41);
}

/// A flipped byte in a volume's header (magic, version or id) does not keep the store from
/// opening when the records after it are intact: the header is rewritten and every item is
/// served. A file whose header is damaged and holds no valid record is refused, named.
#[test]
fn a_damaged_volume_header_is_rewritten_when_its_records_are_intact() {
    let alg = Algorithm::Sha256;
    let items: Vec<_> = (0..20).map(|i| blob(alg, 700 + i)).collect();
    for at in [0u64, 5, 9, 13] {
        let dir = tempfile::tempdir().unwrap();
        let volume;
        {
            let s = open(dir.path());
            s.put_many(items.iter().map(|i| i.bytes().to_vec()).collect())
                .unwrap();
            volume = s.location(&items[0].digest()).unwrap().unwrap().volume;
        }
        let path = volume_path(dir.path(), volume);
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let mut b = [0u8; 1];
        f.read_exact_at(&mut b, at).unwrap();
        f.write_all_at(&[b[0] ^ 0x5a], at).unwrap();
        drop(f);
        let s = open(dir.path());
        for i in &items {
            assert_eq!(read_ok(&s, &i.digest()), i.bytes(), "flip at {at}");
        }
        drop(s);
        // Rewritten: a second open finds nothing to mend.
        let head = std::fs::read(&path).unwrap();
        assert_eq!(
            mirage_node::store::record::parse_volume_header(&head[..16]),
            Ok((volume, mirage_node::store::record::VOLUME_VERSION)),
            "flip at {at}"
        );
    }
    // Garbage from the header on: refused, naming the file, and left as it is.
    let dir = tempfile::tempdir().unwrap();
    drop(open(dir.path()));
    let path = volume_path(dir.path(), 1);
    let garbage = bytes(9, 4096);
    std::fs::write(&path, &garbage).unwrap();
    let e = mirage_node::Store::open(dir.path(), StoreOptions::default()).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("00000001.vol") && msg.contains("no valid record"),
        "{msg}"
    );
    assert_eq!(std::fs::read(&path).unwrap(), garbage);
}

#[test]
fn concurrent_pipelined_writers_across_many_volume_seals_lose_and_repeat_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let alg = Algorithm::Sha256;
    let opts = || StoreOptions {
        max_volume_size: 1_000_000,
        max_group_bytes: 800_000,
        ..StoreOptions::default()
    };
    let s = open_with(dir.path(), opts());
    // Four writers, several batches in flight each; their blobs overlap, so many are
    // duplicates of items another writer has in the committer's group, the syncer's pipeline
    // or a volume sealed a moment ago. Each batch ends with a tree of its blobs.
    std::thread::scope(|sc| {
        for w in 0..4u64 {
            let s = &s;
            sc.spawn(move || {
                let mut pending = std::collections::VecDeque::new();
                for b in 0..12u64 {
                    let blobs: Vec<_> = (0..6).map(|i| blob(alg, (w + b * 6 + i) % 60)).collect();
                    let tree = tree_of(alg, &blobs.iter().collect::<Vec<_>>());
                    let mut items = blobs;
                    items.push(tree);
                    pending.push_back(s.put_encoded_submit(items).unwrap());
                    if pending.len() > 3 {
                        pending.pop_front().unwrap().wait().unwrap();
                    }
                }
                for p in pending {
                    p.wait().unwrap();
                }
            });
        }
    });
    let check = |s: &mirage_node::Store| {
        for i in 0..60u64 {
            read_ok(s, &blob(alg, i).digest());
        }
        let again: Vec<Vec<u8>> = (0..60u64).map(|i| blob(alg, i).bytes().to_vec()).collect();
        assert!(s.put_many(again).unwrap().iter().all(|o| !o.new));
    };
    check(&s);
    let st = s.stats().unwrap();
    assert!(
        st.volumes >= 3,
        "{} volumes: the test must cross seals",
        st.volumes
    );
    // Each distinct blob and tree stored once: 60 blobs and at most 4 x 12 trees.
    assert!((60..=60 + 48).contains(&st.items), "{} items", st.items);
    drop(s);
    let s = mirage_node::Store::open(dir.path(), opts()).unwrap();
    check(&s);
    assert_eq!(s.stats().unwrap().items, st.items);
}

#[test]
fn items_of_a_span_mostly_unwanted_are_copied_out_and_the_others_shared() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(
        dir.path(),
        StoreOptions {
            create: true,
            codec: mirage_node::Codec::None,
            ..StoreOptions::default()
        },
    )
    .unwrap();
    let alg = Algorithm::Sha256;
    // Alternately an item of 8 KB and one of 40 KB, stored together: any two of them lie
    // closer than the merge distance, so a batch of them is one read.
    let items: Vec<EncodedItem> = (0..40)
        .map(|i| EncodedItem::blob(alg, &bytes(i, if i % 2 == 0 { 8000 } else { 40_000 })).unwrap())
        .collect();
    s.put_many(items.iter().map(|i| i.bytes().to_vec()).collect())
        .unwrap();
    // The small ones alone are a sixth of their span: copied out.
    let st = read_intact(&s, items.iter().step_by(2));
    assert_eq!((st.read_ops, st.served, st.copied), (1, 20, 20), "{st:?}");
    // All of them: shared.
    let st = read_intact(&s, &items);
    assert_eq!((st.read_ops, st.served, st.copied), (1, 40, 0), "{st:?}");
    // The large ones alone are most of their span: shared.
    let st = read_intact(&s, items.iter().skip(1).step_by(2));
    assert_eq!((st.read_ops, st.copied), (1, 0), "{st:?}");
}
