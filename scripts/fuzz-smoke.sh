#!/usr/bin/env bash
# Short fuzz runs of the image parsers (qcow2, partition tables, ext4, vfat) from seed images.
# FUZZ_SECONDS per target (default 15). Uses cargo-fuzz; the stable toolchain accepts its
# nightly flags through RUSTC_BOOTSTRAP=1. The fuzz build has a target dir of its own.
set -euo pipefail
cd "$(dirname "$0")/../image/fuzz"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
export RUSTC_BOOTSTRAP=1
export CARGO_TARGET_DIR="${FUZZ_TARGET_DIR:-$HOME/.cache/mirage-fuzz-target}"
./seeds.sh >/dev/null
cargo fuzz build -O
for t in table qcow2 ext4 vfat; do
  echo "fuzz $t: ${FUZZ_SECONDS:-15} s"
  cargo fuzz run -O "$t" "corpus/$t" -- -max_total_time="${FUZZ_SECONDS:-15}" -rss_limit_mb=2048 -max_len=2200000 2>&1 | grep -E "^Done|SUMMARY|panicked" || true
  test "${PIPESTATUS[0]}" -eq 0 || { echo "fuzz target $t found a crash (see image/fuzz/artifacts/$t)"; exit 1; }
done
