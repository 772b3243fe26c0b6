#!/usr/bin/env bash
# Runs every check and test of the workspace: formatting, clippy, then the test suite.
# Environment: MIRAGE_CRASH_ROUNDS (kill -9 rounds, default 50), CARGO_TARGET_DIR (default
# ~/.cache/mirage-target, outside the clone so RocksDB is not rebuilt on every run).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/mirage-target}"
cargo fmt --all -- --check
# The format crate stays pure: no async runtime, storage engine or network stack.
if cargo tree -p mirage-format -e normal --prefix none --locked | grep -E '^(tokio|rocksdb|librocksdb-sys|hyper|axum|reqwest|openraft) '; then
  echo "mirage-format must not depend on the crates above" >&2
  exit 1
fi
cargo clippy --workspace --all-targets --locked -- -D warnings
./scripts/fuzz-smoke.sh
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast
else
  cargo test --workspace --locked --no-fail-fast
fi
