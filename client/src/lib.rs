//! Mirage client library: the embedded store and everything built on it — the image indexer
//! (checkin), checkout, browsing, directory ingest and restore, the demo and the benchmarks
//! behind the `mirage` CLI. Image and filesystem parsing lives in `mirage-image`, re-exported
//! here as [`image`] and [`fs`].

pub mod admin;
pub mod backup;
pub mod batch;
pub mod bench;
pub mod bench_catalog;
pub mod bench_image;
pub mod bench_search;
pub mod browse;
pub mod checkout;
pub mod context;
pub mod demo;
pub mod diff;
pub mod fsbuild;
pub mod hints;
pub mod indexer;
pub mod ingest;
pub mod inventory;
pub mod library;
pub mod mirror;
pub mod paths;
pub mod remote;
pub mod restore;
pub mod search;
pub mod transfer;

pub use mirage_image::{fs, image};
