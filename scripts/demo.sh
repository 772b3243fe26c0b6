#!/usr/bin/env bash
# The main job on the embedded default store (~/.local/share/mirage, or $MIRAGE_STORE):
# builds Mirage, then generates a tree, stores it, restores it, compares and verifies.
# Extra arguments go to `mirage demo` (e.g. --scale 4, --json).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/mirage-target}"
cargo build --release --locked -p mirage-client --bin mirage
exec "$CARGO_TARGET_DIR/release/mirage" demo "$@"
