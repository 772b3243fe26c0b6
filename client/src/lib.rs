//! Mirage client library: the embedded store, directory ingest and restore, the demo and the
//! benchmarks behind the `mirage` CLI. Later: the image indexer, checkout, push/pull, mount.

pub mod bench;
pub mod bench_image;
pub mod browse;
pub mod checkout;
pub mod demo;
pub mod fs;
pub mod fsbuild;
pub mod image;
pub mod indexer;
pub mod ingest;
pub mod paths;
pub mod restore;
