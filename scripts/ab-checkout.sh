#!/usr/bin/env bash
# Alternating A/B runs of one cold `mirage checkout` (page cache dropped before each run; needs
# root for /proc/sys/vm/drop_caches). Prints each run's wall time with the layout phases of its
# last filesystem (skeleton, walk, contents), then each binary's median.
#
# usage: scripts/ab-checkout.sh ROUNDS STORE REF BINARY...
# example: scripts/ab-checkout.sh 5 /var/tmp/s sha256:7eb1... /tmp/mirage-before target/release/mirage
set -euo pipefail
rounds=$1 store=$2 ref=$3
shift 3
out=${OUT:-/var/tmp/mirage-ab-checkout.img}
runs=$(mktemp)
for _ in $(seq "$rounds"); do
  for bin in "$@"; do
    rm -f "$out"
    sync
    echo 3 >/proc/sys/vm/drop_caches
    start=$(date +%s.%N)
    phases=$(MIRAGE_LOG=mirage_client=info "$bin" --store "$store" checkout "$ref" -o "$out" 2>&1 |
      sed 's/\x1b\[[0-9;]*m//g' | grep -o 'skeleton=[^ ]* walk=[^ ]* contents=[^ ]*' | tail -1 || true)
    end=$(date +%s.%N)
    echo "[$bin] $(echo "$end - $start" | bc) s $phases" | tee -a "$runs"
  done
done
rm -f "$out"
for bin in "$@"; do
  grep -F "[$bin] " "$runs" | awk '{print $2}' | sort -n |
    awk -v b="$bin" '{v[NR] = $1} END {print "[" b "] median " v[int((NR + 1) / 2)] " s of " NR}'
done
rm -f "$runs"
