//! Large groups are written with direct I/O at aligned offsets, padded with zeros (volume
//! layout version 2); the padding is invisible to reads, recovery, verify and compaction.
#![allow(clippy::unwrap_used)]
mod common;

use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;

use common::*;
use mirage_format::chunking::EncodedItem;
use mirage_format::Algorithm;
use mirage_node::store::record::ALIGN;
use mirage_node::{SpanReads, StoreOptions};

fn volume_path(dir: &std::path::Path, id: u32) -> std::path::PathBuf {
    dir.join("volumes").join(format!("{id:08}.vol"))
}

/// Whether the filesystem under `dir` takes `O_DIRECT` (tmpfs does not).
fn direct_io_works(dir: &std::path::Path) -> bool {
    let p = dir.join("probe");
    let ok = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_DIRECT)
        .open(&p)
        .is_ok();
    let _ = std::fs::remove_file(p);
    ok
}

/// `n` incompressible blobs of 64 KiB (a batch of them is a "large" group).
fn big_blobs(first: u64, n: u64) -> Vec<EncodedItem> {
    (first..first + n)
        .map(|i| EncodedItem::blob(Algorithm::Sha256, &bytes(i, 64 << 10)).unwrap())
        .collect()
}

fn put(s: &mirage_node::Store, items: &[EncodedItem]) {
    s.put_many(items.iter().map(|i| i.bytes().to_vec()).collect())
        .unwrap();
}

#[test]
fn large_groups_are_aligned_and_padding_is_invisible_to_every_reader() {
    let dir = tempfile::tempdir().unwrap();
    let direct = direct_io_works(dir.path());
    let alg = Algorithm::Sha256;
    let first = big_blobs(0, 40);
    let small = blob(alg, 8); // 17 bytes
    let second = big_blobs(100, 40);
    {
        let s = open(dir.path());
        put(&s, &first);
        put(&s, std::slice::from_ref(&small));
        put(&s, &second);
        let starts: Vec<u64> = [&first[0], &second[0]]
            .iter()
            .map(|i| s.location(&i.digest()).unwrap().unwrap().offset)
            .collect();
        let small_at = s.location(&small.digest()).unwrap().unwrap().offset;
        if direct {
            for at in &starts {
                assert_eq!(at % ALIGN, 0, "a large group starts on a boundary: {at}");
            }
            // The small group follows the first large one's padding, unpadded itself; the
            // second large one starts at the next boundary after it.
            assert_eq!(small_at % ALIGN, 0);
            assert!(starts[1] > small_at && starts[1] - small_at <= 2 * ALIGN);
            let len = std::fs::metadata(volume_path(dir.path(), 1)).unwrap().len();
            assert_eq!(len % ALIGN, 0, "a direct group ends padded");
        } else {
            eprintln!(
                "no O_DIRECT under {}: alignment not checked",
                dir.path().display()
            );
        }
        let report = s.verify(|_| {}).unwrap();
        assert!(report.damaged.is_empty(), "{:?}", report.damaged);
    }
    // Recovery from the volumes alone walks over the padding without reporting damage.
    std::fs::remove_dir_all(dir.path().join("index")).unwrap();
    let s = open(dir.path());
    for i in first.iter().chain(&second).chain([&small]) {
        assert_eq!(read_ok(&s, &i.digest()), i.bytes());
    }
    assert!(s.verify(|_| {}).unwrap().damaged.is_empty());
    // Compaction reads every record (over the padding) and keeps every item.
    let report = s
        .compact(mirage_node::CompactOptions {
            level: 3,
            threads: 2,
        })
        .unwrap();
    assert_eq!(report.damaged, 0);
    assert_eq!(report.items, 81);
    for i in first.iter().chain(&second).chain([&small]) {
        assert_eq!(read_ok(&s, &i.digest()), i.bytes());
    }
}

#[test]
fn large_requests_holding_items_the_store_is_writing_are_written_once() {
    // A large request is laid out by its writer and written as it is only when all of it is
    // new; an item in it twice, or in another writer's request still on its way, sends it
    // through the committer's own layout. Either way each item is one record.
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let mut twice = big_blobs(0, 30);
    twice.push(twice[3].clone());
    let out = s
        .put_many(twice.iter().map(|i| i.bytes().to_vec()).collect())
        .unwrap();
    assert_eq!(out.iter().filter(|o| o.new).count(), 30);
    assert_each_written_once(&s, 30);
    // Two writers of overlapping large requests, many times over.
    std::thread::scope(|t| {
        for w in 0..2u64 {
            let s = &s;
            t.spawn(move || {
                for round in 0..12u64 {
                    let first = 1000 + round * 10 + w * 5;
                    let items = big_blobs(first, 20);
                    let pending = s.put_encoded_submit(items).unwrap();
                    pending.wait().unwrap();
                }
            });
        }
    });
    // Blobs 1000..=1134: 135 of them, and the first 30.
    assert_each_written_once(&s, 30 + 135);
    drop(s);
    // Recovery from the volumes alone finds the same.
    std::fs::remove_dir_all(dir.path().join("index")).unwrap();
    let s = open(dir.path());
    for i in big_blobs(0, 30).iter().chain(&big_blobs(1000, 135)) {
        assert_eq!(read_ok(&s, &i.digest()), i.bytes());
    }
    assert_each_written_once(&s, 30 + 135);
}

#[test]
fn a_direct_group_torn_by_a_crash_is_cut_and_the_store_stays_writable() {
    let dir = tempfile::tempdir().unwrap();
    let first = big_blobs(0, 40);
    let second = big_blobs(100, 40);
    let cut_at;
    {
        let s = open(dir.path());
        put(&s, &first);
        put(&s, &second);
        // Cut in the middle of the second group's tenth record, as a crash before the
        // fdatasync could leave it; the index then holds entries past the end.
        cut_at = s.location(&second[9].digest()).unwrap().unwrap().offset + 1000;
    }
    let f = OpenOptions::new()
        .write(true)
        .open(volume_path(dir.path(), 1))
        .unwrap();
    f.set_len(cut_at).unwrap();
    drop(f);
    let s = open(dir.path());
    for i in first.iter().chain(&second[..9]) {
        assert_eq!(read_ok(&s, &i.digest()), i.bytes());
    }
    for i in &second[9..] {
        assert!(!s.has(&i.digest()).unwrap(), "a cut item is not indexed");
    }
    // Writing again (large and small) works, and everything reads back after a reopen.
    put(&s, &second[9..]);
    let small = blob(Algorithm::Sha256, 4); // 17 bytes
    put(&s, std::slice::from_ref(&small));
    drop(s);
    let s = open(dir.path());
    for i in first.iter().chain(&second).chain([&small]) {
        assert_eq!(read_ok(&s, &i.digest()), i.bytes());
    }
    assert!(s.verify(|_| {}).unwrap().damaged.is_empty());
}

#[test]
fn zeros_between_records_are_damage_in_a_version_1_volume_and_padding_in_version_2() {
    use mirage_node::store::record::{encode_record, volume_header};
    use mirage_node::store::Compression;
    let alg = Algorithm::Sha256;
    let items: Vec<EncodedItem> = (0..3).map(|i| blob(alg, i * 4 + 1)).collect();
    for version in [1u32, 2] {
        let dir = tempfile::tempdir().unwrap();
        drop(open(dir.path()));
        std::fs::remove_dir_all(dir.path().join("index")).unwrap();
        let mut vol = volume_header(1).to_vec();
        vol[8..12].copy_from_slice(&version.to_le_bytes());
        for i in &items {
            vol.extend(encode_record(
                &i.digest(),
                mirage_format::ItemKind::Blob,
                Compression::None,
                i.bytes().len() as u32,
                i.bytes(),
            ));
            // Zeros up to the next boundary, as a direct group leaves them.
            let pad = (ALIGN - vol.len() as u64 % ALIGN) % ALIGN;
            vol.resize(vol.len() + pad as usize, 0);
        }
        std::fs::write(volume_path(dir.path(), 1), &vol).unwrap();
        let s = open(dir.path());
        for i in &items {
            assert_eq!(read_ok(&s, &i.digest()), i.bytes(), "version {version}");
        }
        let damaged = s.verify(|_| {}).unwrap().damaged.len();
        if version == 1 {
            assert!(damaged > 0, "version 1 has no padding: zeros are damage");
        } else {
            assert_eq!(damaged, 0, "version 2 skips padding silently");
        }
    }
}

/// Drops every volume of the store at `dir` from the page cache.
fn evict_volumes(dir: &std::path::Path) {
    for e in std::fs::read_dir(dir.join("volumes")).unwrap() {
        let f = std::fs::File::open(e.unwrap().path()).unwrap();
        f.sync_all().unwrap();
        rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::DontNeed).unwrap();
    }
}

#[test]
fn batch_reads_go_past_the_page_cache_only_for_what_it_does_not_hold() {
    let dir = tempfile::tempdir().unwrap();
    let direct = direct_io_works(dir.path());
    let alg = Algorithm::Sha256;
    // Every long span not cached goes direct (the measured way would start buffered).
    let s = open_with(
        dir.path(),
        StoreOptions {
            create: true,
            span_reads: SpanReads::Direct,
            ..StoreOptions::default()
        },
    );
    // Large groups, and small items (unaligned, written through the page cache) among them.
    let mut items = big_blobs(0, 30);
    for i in 0..12 {
        let small = blob(alg, 1000 + i);
        put(&s, std::slice::from_ref(&small));
        items.push(small);
    }
    items.extend(big_blobs(200, 30));
    put(&s, &items[42..]);
    put(&s, &items[..30]);
    let read_all = |s: &mirage_node::Store| read_intact(s, &items);
    evict_volumes(dir.path());
    let cold = read_all(&s);
    if direct {
        assert!(cold.direct_reads > 0, "cold long spans go direct: {cold:?}");
    }
    // Direct reads leave the page cache as it was: the next batch goes direct again.
    assert_eq!(read_all(&s).direct_reads, cold.direct_reads);
    // Once the cache holds the volume, every span is read from there.
    for e in std::fs::read_dir(dir.path().join("volumes")).unwrap() {
        std::fs::read(e.unwrap().path()).unwrap();
    }
    assert_eq!(read_all(&s).direct_reads, 0);
}

/// Direct reads among 20 cold batch reads of five items (one span of about 325 KiB each) from
/// a store opened with `reads`.
fn direct_reads_of_cold_batches(reads: SpanReads) -> u64 {
    let dir = tempfile::tempdir().unwrap();
    let s = open_with(
        dir.path(),
        StoreOptions {
            create: true,
            span_reads: reads,
            ..StoreOptions::default()
        },
    );
    let items = big_blobs(0, 100);
    put(&s, &items);
    let mut direct = 0;
    for batch in items.chunks(5) {
        evict_volumes(dir.path());
        let st = read_intact(&s, batch);
        assert_eq!(st.read_ops, 1, "{st:?}");
        direct += st.direct_reads;
    }
    direct
}

#[test]
fn span_reads_set_to_a_way_take_it_and_measured_ones_start_buffered() {
    if !direct_io_works(tempfile::tempdir().unwrap().path()) {
        return;
    }
    // Measured: the first 16 spans go buffered, the next epoch direct to measure that way.
    assert!(direct_reads_of_cold_batches(SpanReads::Measured) > 0);
    assert_eq!(direct_reads_of_cold_batches(SpanReads::Buffered), 0);
    assert_eq!(direct_reads_of_cold_batches(SpanReads::Direct), 20);
}
