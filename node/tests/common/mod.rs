//! Helpers shared by the store tests: deterministic item sets.
#![allow(dead_code, clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use mirage_format::chunking::EncodedItem;
use mirage_format::{Algorithm, EntryKind, Item, Tree, TreeEntry};
use mirage_node::{Store, StoreOptions};

/// Deterministic pseudo-random bytes.
pub fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Blob `i`: sizes vary from a few bytes to ~200 KiB; some compress well.
pub fn blob(alg: Algorithm, i: u64) -> EncodedItem {
    let len = match i % 4 {
        0 => 17,
        1 => 4096,
        2 => 60_000,
        _ => 200_000,
    };
    let mut data = bytes(i, len);
    if i % 3 == 0 {
        data.iter_mut().step_by(2).for_each(|b| *b = 0);
    }
    EncodedItem::blob(alg, &data).unwrap()
}

/// Reads `items` with one batch read, checks that each came back intact and none is missing,
/// and returns the read's figures.
pub fn read_intact<'a>(
    s: &Store,
    items: impl IntoIterator<Item = &'a EncodedItem>,
) -> mirage_node::ReadStats {
    let items: Vec<&EncodedItem> = items.into_iter().collect();
    let ds: Vec<mirage_format::Digest> = items.iter().map(|i| i.digest()).collect();
    let mut got = std::collections::HashMap::new();
    let st = s
        .get_many(&ds, None, mirage_node::ReadOptions::default(), |d, r| {
            got.insert(d, r.unwrap());
        })
        .unwrap();
    for i in items {
        assert_eq!(got[&i.digest()], i.bytes(), "every item intact");
    }
    assert!(st.missing.is_empty());
    st
}

/// A tree referencing the given blobs as files.
pub fn tree_of(alg: Algorithm, blobs: &[&EncodedItem]) -> EncodedItem {
    let entries = blobs
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let mut e = TreeEntry::new(format!("file-{i:05}").into_bytes(), EntryKind::File);
            e.mode = 0o644;
            e.size = b.bytes().len() as u64 - 2;
            e.content = Some(b.digest());
            e
        })
        .collect();
    EncodedItem::new(alg, &Item::Tree(Tree::new(entries).unwrap())).unwrap()
}

pub fn open(dir: &std::path::Path) -> Store {
    Store::open(
        dir,
        StoreOptions {
            create: true,
            ..StoreOptions::default()
        },
    )
    .unwrap()
}

pub fn open_with(dir: &std::path::Path, opts: StoreOptions) -> Store {
    Store::open(
        dir,
        StoreOptions {
            create: true,
            ..opts
        },
    )
    .unwrap()
}

/// Reads an item and checks it hashes to its digest.
pub fn read_ok(store: &Store, d: &mirage_format::Digest) -> Vec<u8> {
    let bytes = store
        .get(d)
        .unwrap()
        .unwrap_or_else(|| panic!("{d:#} missing"));
    assert_eq!(
        mirage_format::Digest::of(d.algorithm(), &bytes).unwrap(),
        *d
    );
    bytes
}

/// Records in the volumes against items in the index: every item written once.
pub fn assert_each_written_once(s: &Store, items: u64) {
    let report = s.verify(|_| {}).unwrap();
    assert!(report.damaged.is_empty(), "{:?}", report.damaged);
    assert_eq!(report.items_ok, items);
    assert_eq!(report.records, items, "a record written twice");
}

/// An upload body of the node API: each item as `u32 length (big-endian) ‖ bytes`.
pub fn frames(items: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for i in items {
        out.extend_from_slice(&(i.len() as u32).to_be_bytes());
        out.extend_from_slice(i);
    }
    out
}

/// An HTTP client that sends `token` as its bearer token.
pub fn http_client(token: &str) -> reqwest::Client {
    let mut h = reqwest::header::HeaderMap::new();
    h.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {token}").parse().unwrap(),
    );
    reqwest::Client::builder()
        .default_headers(h)
        .build()
        .unwrap()
}

/// The admin token a node wrote into its store directory.
pub fn admin_token(store_dir: &std::path::Path) -> String {
    std::fs::read_to_string(store_dir.join("admin.token"))
        .unwrap()
        .trim()
        .to_string()
}

/// Starts `mirage-node serve` on port 0; returns the process and its base URL.
pub fn start_standalone(store_dir: &std::path::Path) -> (std::process::Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_mirage-node"))
        .args(["serve", "--listen", "127.0.0.1:0", "--store"])
        .arg(store_dir)
        .env("MIRAGE_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let base = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string();
    (child, base)
}

/// POSTs `body` as JSON to `url` and decodes the JSON answer.
pub async fn post_json(
    http: &reqwest::Client,
    url: String,
    body: &serde_json::Value,
) -> serde_json::Value {
    decode(http.post(url).json(body)).await
}

/// GETs `url` and decodes the JSON answer.
pub async fn get_json(http: &reqwest::Client, url: String) -> serde_json::Value {
    decode(http.get(url)).await
}

async fn decode(r: reqwest::RequestBuilder) -> serde_json::Value {
    r.send().await.unwrap().json().await.unwrap()
}
