#!/usr/bin/env bash
# Transfer benchmark on loopback (docs/PERFORMANCE.md, "Push between clusters"): the corpus
# family checked in to cluster A as one name with 4 versions, then
#   1. `mirage push` of the whole chain from A to an empty cluster B (both 3 nodes, N=2, W=2):
#      time, MB/s of disk image, bytes sent vs the unique content of the chain;
#   2. the same push again (nothing to send), and a derived version added later (its new
#      content only);
#   3. side by side: rsync of the raw images into an empty directory, and restic: `backup` of
#      the images into a repository, then `restic copy` into a second one.
# Usage: scripts/bench-transfer.sh [WORKDIR]   (release binaries; corpus in ~/.cache/mirage-corpus)
set -euo pipefail
BIN=${CARGO_TARGET_DIR:-$HOME/.cache/mirage-target}/release
M=$BIN/mirage
N=$BIN/mirage-node
IMG=${MIRAGE_CORPUS:-$HOME/.cache/mirage-corpus}/images
W=${1:-/tmp/mirage-bench-transfer}
FAMILY=(base derived-1 derived-2)
LATER=derived-3
rm -rf "$W" && mkdir -p "$W"
export MIRAGE_LOG=warn

now() { date +%s.%N; }
secs() { echo "$2 - $1" | bc -l; }
playground() { # NAME
    "$N" playground --detach --dir "$W/$1" --nodes 3 --replication 2 --write-quorum 2 \
        --repair-every 3600 >"$W/$1.out"
    grep -o 'MIRAGE_CLUSTER=.*' "$W/$1.out" | cut -d= -f2 >"$W/$1.url"
    grep -o 'MIRAGE_TOKEN=.*' "$W/$1.out" | cut -d= -f2 >"$W/$1.token"
}
trap 'for p in "$W"/*/pids; do kill -9 $(cat "$p") 2>/dev/null || true; done' EXIT
playground a
playground b
A=$(cat "$W/a.url"); TA=$(cat "$W/a.token")
B=$(cat "$W/b.url"); TB=$(cat "$W/b.token")
size=0
for img in "${FAMILY[@]}"; do
    "$M" --cluster "$A" --token "$TA" --store "$W/cache-in" checkin "$IMG/$img.img" --name debian >/dev/null
    size=$((size + $(stat -c %s "$IMG/$img.img")))
done
echo "== 1. push of debian (${#FAMILY[@]} versions, $((size / 1000000)) MB of disk images) from cluster A to empty cluster B"
t0=$(now)
out=$("$M" --cluster "$A" --token "$TA" --store "$W/cache-push" --json push debian --to "$B" --to-token "$TB")
t1=$(now)
sent=$(echo "$out" | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["bytes"])')
unique=$("$M" --store "$W/cache-push" --json store stats | python3 -c 'import json,sys; print(json.load(sys.stdin)["logical_bytes"])')
printf 'push: %.2f s, %.1f MB/s of disk image; sent %d bytes = %.3f x the unique content (%d bytes) x 2 replicas\n' \
    "$(secs $t0 $t1)" "$(echo "$size/1000000/($t1-$t0)" | bc -l)" "$sent" "$(echo "$sent/(2*$unique)" | bc -l)" "$unique"

echo "== 2. again (nothing new), then a later version ($LATER)"
t0=$(now)
out=$("$M" --cluster "$A" --token "$TA" --store "$W/cache-push" --json push debian --to "$B" --to-token "$TB")
t1=$(now)
printf 'again: %.2f s, %s bytes sent\n' "$(secs $t0 $t1)" "$(echo "$out" | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["bytes"])')"
before=$("$M" --store "$W/cache-push" --json store stats | python3 -c 'import json,sys; print(json.load(sys.stdin)["logical_bytes"])')
"$M" --cluster "$A" --token "$TA" --store "$W/cache-in" checkin "$IMG/$LATER.img" --name debian >/dev/null
t0=$(now)
out=$("$M" --cluster "$A" --token "$TA" --store "$W/cache-push" --json push debian --to "$B" --to-token "$TB")
t1=$(now)
after=$("$M" --store "$W/cache-push" --json store stats | python3 -c 'import json,sys; print(json.load(sys.stdin)["logical_bytes"])')
sent=$(echo "$out" | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["bytes"])')
printf 'later version: %.2f s, sent %d bytes = %.3f x its new content (%d bytes) x 2 replicas\n' \
    "$(secs $t0 $t1)" "$sent" "$(echo "$sent/(2*($after-$before))" | bc -l)" "$((after - before))"

echo "== 3. the same images with rsync and restic"
mkdir -p "$W/rsync-dst"
t0=$(now)
stats=$(cd "$IMG" && rsync -a --sparse --stats $(printf '%s.img ' "${FAMILY[@]}") "$W/rsync-dst/")
t1=$(now)
printf 'rsync (empty destination): %.2f s; %s\n' "$(secs $t0 $t1)" "$(echo "$stats" | grep -E 'Total bytes sent' | tr -s ' ')"
stats=$(cd "$IMG" && rsync -a --sparse --stats "$LATER.img" "$W/rsync-dst/")
printf 'rsync of %s next to them: %s\n' "$LATER" "$(echo "$stats" | grep -E 'Total bytes sent' | tr -s ' ')"
export RESTIC_PASSWORD=bench
restic init -q --repo "$W/restic-a" >/dev/null
(cd "$IMG" && restic -q --repo "$W/restic-a" backup $(printf '%s.img ' "${FAMILY[@]}") >/dev/null)
restic init -q --repo "$W/restic-b" --from-repo "$W/restic-a" --copy-chunker-params \
    --from-password-file <(echo bench) >/dev/null
t0=$(now)
restic -q --repo "$W/restic-b" copy --from-repo "$W/restic-a" --from-password-file <(echo bench) >/dev/null
t1=$(now)
printf 'restic copy (empty destination): %.2f s, %.1f MB/s of disk image; repository A %s, B %s\n' \
    "$(secs $t0 $t1)" "$(echo "$size/1000000/($t1-$t0)" | bc -l)" \
    "$(du -sb "$W/restic-a" | cut -f1) bytes" "$(du -sb "$W/restic-b" | cut -f1) bytes"
echo "(borg 1.2 has no transfer between repositories; borg 2's 'borg transfer' is not packaged here)"
