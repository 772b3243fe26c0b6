#!/usr/bin/env bash
# Alternating A/B runs of one `mirage checkin` into a fresh store, each after a `cp` of the
# image that is synced and deleted (as in `mirage bench checkin`, where the copy runs beside
# the checkin). Prints wall, user and system time, peak RSS and the transparent huge pages
# faulted in during the run, per configuration, then each configuration's median wall time.
#
# usage: [FROM=STORE] scripts/ab-checkin.sh ROUNDS IMAGE 'VAR=VALUE ...' 'VAR=VALUE ...' ...
#   MBIN=PATH in a configuration picks the binary (default: $MIRAGE, else the release build).
#   FROM=STORE starts every run from a copy of that store (a derived image after its parent)
#   instead of an empty one.
# example: scripts/ab-checkin.sh 5 ~/.cache/mirage-corpus/images/base.img \
#            'MIMALLOC_ALLOW_THP=1' 'MIMALLOC_ALLOW_THP=0'
set -euo pipefail
rounds=$1 img=$2
shift 2
default_bin=${MIRAGE:-${CARGO_TARGET_DIR:-$HOME/.cache/mirage-target}/release/mirage}
work=${WORK:-/var/tmp/mirage-ab}
mkdir -p "$work"
thp() { awk '/^thp_fault_alloc /{print $2}' /proc/vmstat; }
for _ in $(seq "$rounds"); do
  for cfg in "$@"; do
    rm -rf "$work/store"
    if [ -n "${FROM:-}" ]; then cp -a "$FROM" "$work/store"; fi
    cp --sparse=always "$img" "$work/copy.img"
    sync
    rm "$work/copy.img"
    sync
    before=$(thp)
    out=$(env $cfg MBIN_DEFAULT="$default_bin" STORE="$work/store" IMG="$img" sh -c \
      '/usr/bin/time -f "%e s wall, %U s user, %S s system, %M KB peak RSS" \
         "${MBIN:-$MBIN_DEFAULT}" --store "$STORE" checkin "$IMG" 2>&1 >/dev/null | tail -1')
    echo "[$cfg] $out, $(($(thp) - before)) huge pages"
  done
done | tee "$work/runs"
for cfg in "$@"; do
  grep -F "[$cfg] " "$work/runs" | sed 's/^.*\] \([0-9.]*\) s wall.*/\1/' | sort -n |
    awk -v c="$cfg" '{v[NR] = $1} END {print "[" c "] median " v[int((NR + 1) / 2)] " s of " NR}'
done
rm -rf "$work"
