//! Blobs read straight into their records (`Store::blob_segment`, `put_blobs_submit`): hashed
//! by the store where they lie, those it has (or that come twice) dropped, the rest written
//! in place as one group — through the page cache when small, directly when large — and
//! found by every reader, by `verify` and by recovery from the volumes alone.
#![allow(clippy::unwrap_used)]
mod common;

use common::*;
use mirage_format::chunking::{chunk_stream, Dense, EncodedItem};
use mirage_format::item::encode_blob;
use mirage_format::{Algorithm, Digest};
use mirage_node::store::Compression;
use mirage_node::{BlobSegment, Codec, StoreError, StoreOptions};

/// Reads `content` into a new record of `seg`, as the indexer reads a file; the CRC is
/// computed while it is in the cache when `seal`, else by the store.
fn read_in(seg: &mut BlobSegment, content: &[u8], seal: bool) -> usize {
    let slot = seg.reserve(content.len() as u64).unwrap();
    seg.encoding_mut(slot)[2..].copy_from_slice(content);
    if seal {
        seg.seal(slot);
    }
    slot
}

fn digest_of(content: &[u8]) -> Digest {
    EncodedItem::blob(Algorithm::Sha256, content)
        .unwrap()
        .digest()
}

/// Stores a segment of new, known, repeated, empty, released and chunked contents, `scale`
/// bytes each at most; checks outcomes, reads, `verify` and recovery.
fn a_segment_of_every_kind(scale: usize) {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let known = bytes(1, scale);
    s.put_many(vec![encode_blob(&known)]).unwrap();
    let fresh: Vec<Vec<u8>> = (10..16u64)
        .map(|i| bytes(i, scale / (i as usize - 9)))
        .collect();
    let mut seg = s.blob_segment(16 << 20);
    // In order: new, known, new, released, empty, the first again, new..., released last.
    let mut expect: Vec<(Vec<u8>, bool)> = Vec::new();
    read_in(&mut seg, &fresh[0], true);
    expect.push((fresh[0].clone(), true));
    read_in(&mut seg, &known, false);
    expect.push((known.clone(), false));
    read_in(&mut seg, &fresh[1], false);
    expect.push((fresh[1].clone(), true));
    let gone = read_in(&mut seg, &bytes(99, scale), true);
    seg.release(gone);
    read_in(&mut seg, b"", true);
    expect.push((Vec::new(), true));
    read_in(&mut seg, &fresh[0], true);
    expect.push((fresh[0].clone(), false));
    for f in &fresh[2..] {
        read_in(&mut seg, f, true);
        expect.push((f.clone(), true));
    }
    // Chunks come hashed by the chunker.
    let long = bytes(7, 3 * scale + 70_000);
    let (extents, _) = chunk_stream::<_, StoreError>(Dense(&long[..]), 0, Algorithm::Sha256, |c| {
        assert!(seg.push_chunk(&c).is_some());
        Ok(())
    })
    .unwrap();
    for e in &extents {
        let part = long[e.offset as usize..(e.offset + e.len) as usize].to_vec();
        assert_eq!(e.digest, digest_of(&part));
        expect.push((part, true));
    }
    let last = read_in(&mut seg, &bytes(98, 5000), true);
    seg.release(last);
    assert_eq!(seg.len(), expect.len());
    assert_eq!(
        seg.sizes(),
        expect.iter().map(|(c, _)| c.len() + 2).collect::<Vec<_>>()
    );

    let put = s.put_blobs_submit(seg).unwrap();
    let digests: Vec<Digest> = put.digests().collect();
    let out = put.wait().unwrap();
    let new = expect.iter().filter(|(_, n)| *n).count() as u64;
    for (((content, is_new), d), o) in expect.iter().zip(&digests).zip(&out) {
        assert_eq!(*d, digest_of(content));
        assert_eq!(o.digest, *d);
        assert_eq!(o.new, *is_new, "{} bytes", content.len());
        assert_eq!(read_ok(&s, d), encode_blob(content));
    }
    // A record after the segment: its padding lies between records.
    let after = bytes(97, 3000);
    s.put_many(vec![encode_blob(&after)]).unwrap();
    expect.push((after, true));
    assert_each_written_once(&s, new + 2);
    drop(s);
    // Recovery from the volumes alone finds the same records.
    std::fs::remove_dir_all(dir.path().join("index")).unwrap();
    let s = open(dir.path());
    for (content, _) in &expect {
        assert_eq!(read_ok(&s, &digest_of(content)), encode_blob(content));
    }
    assert_each_written_once(&s, new + 2);
}

#[test]
fn a_small_segment_is_written_in_place_through_the_page_cache() {
    a_segment_of_every_kind(20_000);
}

#[test]
fn a_large_segment_is_written_in_place_directly() {
    a_segment_of_every_kind(400_000);
}

#[test]
fn a_full_segment_refuses_a_blob_and_a_released_last_one_gives_its_room_back() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let mut seg = s.blob_segment(1 << 20);
    let mut n = 0;
    while seg.reserve(100_000).is_some() {
        n += 1;
    }
    assert!(n >= 10, "{n}");
    let full = seg.bytes();
    // The last record's room comes back once it is released, and serves the next.
    seg.release(n - 1);
    assert!(seg.bytes() < full);
    assert_eq!(seg.reserve(100_000), Some(n - 1));
    assert_eq!(seg.bytes(), full);
    // A blob larger than an item may be is refused, whatever the room.
    let mut big = s.blob_segment(64 << 20);
    assert!(big.reserve(mirage_format::item::MAX_ITEM as u64).is_none());
}

#[test]
fn a_segment_meets_writers_of_the_same_items_and_each_is_written_once() {
    // Items of a segment that another request is storing (on its way or just indexed)
    // are not written again; each writer gets every digest back. (The committer's own
    // check, for a request that reaches it between the segment's lookup and its commit, is
    // `store::blobs::tests` and direct_io's large_requests_holding_items_... .)
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    std::thread::scope(|t| {
        for w in 0..2u64 {
            let s = &s;
            t.spawn(move || {
                for round in 0..15u64 {
                    let first = round * 48 + w * 24;
                    let contents: Vec<Vec<u8>> =
                        (first..first + 48).map(|i| bytes(i, 150_000)).collect();
                    let (a, b) = contents.split_at(40);
                    // Most as items (6 MB, on their way while the segment is stored), the
                    // rest and the last of the items (and some of the other writer's) in a
                    // segment.
                    let items = a
                        .iter()
                        .map(|c| EncodedItem::blob(Algorithm::Sha256, c).unwrap())
                        .collect();
                    let p1 = s.put_encoded_submit(items).unwrap();
                    let mut seg = s.blob_segment(4 << 20);
                    for c in b.iter().chain(&a[39..]) {
                        read_in(&mut seg, c, true);
                    }
                    let p2 = s.put_blobs_submit(seg).unwrap();
                    p1.wait().unwrap();
                    p2.wait().unwrap();
                }
            });
        }
    });
    // Contents 0..(14 * 48 + 24 + 48).
    assert_each_written_once(&s, 744);
    for i in 0..744 {
        let c = bytes(i, 150_000);
        assert_eq!(read_ok(&s, &digest_of(&c)), encode_blob(&c));
    }
}

#[test]
fn a_compressing_store_compresses_the_blobs_of_a_segment() {
    let dir = tempfile::tempdir().unwrap();
    let s = open_with(
        dir.path(),
        StoreOptions {
            codec: Codec::Lz4,
            ..StoreOptions::default()
        },
    );
    let text: Vec<u8> = b"a line of text that repeats\n".repeat(5000);
    let mut seg = s.blob_segment(1 << 20);
    read_in(&mut seg, &text, true);
    read_in(&mut seg, &bytes(3, 30_000), false);
    let put = s.put_blobs_submit(seg).unwrap();
    let out = put.wait().unwrap();
    assert!(out.iter().all(|o| o.new));
    let loc = s.location(&out[0].digest).unwrap().unwrap();
    assert_eq!(loc.compression, Compression::Lz4);
    assert!((loc.stored_len as usize) < text.len() / 4);
    assert_eq!(read_ok(&s, &out[0].digest), encode_blob(&text));
    assert_eq!(read_ok(&s, &out[1].digest), encode_blob(&bytes(3, 30_000)));
    assert_each_written_once(&s, 2);
}

/// A segment of one blob and what `spoil` then does to it is refused with an error `check`
/// accepts; nothing is stored, and the store goes on taking segments.
fn refused(spoil: impl FnOnce(&mut BlobSegment), check: impl Fn(&StoreError) -> bool) {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let mut seg = s.blob_segment(1 << 20);
    read_in(&mut seg, &bytes(1, 1000), true);
    spoil(&mut seg);
    let err = s.put_blobs_submit(seg).unwrap_err();
    assert!(check(&err), "{err}");
    assert_eq!(s.verify(|_| {}).unwrap().records, 0);
    let mut seg = s.blob_segment(1 << 20);
    read_in(&mut seg, &bytes(1, 1000), true);
    assert!(s.put_blobs_submit(seg).unwrap().wait().unwrap()[0].new);
}

#[test]
fn chunks_hashed_with_another_algorithm_are_refused_and_nothing_is_stored() {
    let data = bytes(2, 200_000);
    refused(
        |seg| {
            chunk_stream::<_, StoreError>(Dense(&data[..]), 0, Algorithm::Sha1, |c| {
                assert!(seg.push_chunk(&c).is_some());
                Ok(())
            })
            .unwrap();
        },
        |e| matches!(e, StoreError::WrongAlgorithm { index: 1, .. }),
    );
}

#[test]
fn a_record_written_over_its_blob_header_is_refused_and_nothing_is_stored() {
    refused(
        |seg| {
            let slot = read_in(seg, &bytes(2, 1000), true);
            // A tree's kind byte where the blob's was.
            seg.encoding_mut(slot)[0] = 3;
        },
        |e| matches!(e, StoreError::InvalidItem { index: 1, .. }),
    );
}
