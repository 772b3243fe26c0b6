#!/usr/bin/env bash
# Data-path benchmark on loopback (docs/PERFORMANCE.md, "Sharded data path"):
#   1. checkin and checkout of the corpus family: embedded store vs a 3-node playground
#      (N=3, W=2), each with a fresh client cache;
#   2. aggregate checkout throughput with 1, 4 and 8 concurrent clients: 3-node vs 1-node;
#   3. rebalance after adding a 4th node to a 3-node N=2 cluster: time and bytes pulled vs the
#      bytes the new node must hold (the minimum any rebalance moves);
#   4. location-table reads vs index lookups: checkouts of base from a 4-node N=2 cluster
#      with and without location tables (MIRAGE_LOCATION_TABLES=0), alternating, with the
#      nodes' table hits, index lookups and volume reads.
# Usage: scripts/bench-cluster.sh [WORKDIR]   (release binaries; corpus in ~/.cache/mirage-corpus)
set -euo pipefail
BIN=${CARGO_TARGET_DIR:-$HOME/.cache/mirage-target}/release
M=$BIN/mirage
N=$BIN/mirage-node
IMG=${MIRAGE_CORPUS:-$HOME/.cache/mirage-corpus}/images
W=${1:-/tmp/mirage-bench-cluster}
PARTS=${PARTS:-1234} # which parts to run
FAMILY=(base derived-1 derived-2 derived-3)
rm -rf "$W" && mkdir -p "$W"
export MIRAGE_LOG=warn

now() { date +%s.%N; }
secs() { echo "$2 - $1" | bc -l; }

playground() { # NAME NODES REPLICATION QUORUM
    "$N" playground --detach --dir "$W/$1" --nodes "$2" --replication "$3" \
        --write-quorum "$4" --repair-every 3600 >"$W/$1.out"
    CL=$(grep -o 'MIRAGE_CLUSTER=.*' "$W/$1.out" | cut -d= -f2)
    TOK=$(grep -o 'MIRAGE_TOKEN=.*' "$W/$1.out" | cut -d= -f2)
}
stop() { kill -9 $(cat "$W/$1/pids") 2>/dev/null || true; }
trap 'for p in "$W"/*/pids; do kill -9 $(cat "$p") 2>/dev/null || true; done' EXIT

if [[ $PARTS == *1* ]]; then
echo "== 1. checkin and checkout of the family: embedded vs 3-node cluster"
playground c3 3 3 2
for img in "${FAMILY[@]}"; do
    cat "$IMG/$img.img" >/dev/null # both runs read the image from the page cache
    t0=$(now); "$M" --store "$W/emb" checkin "$IMG/$img.img" --name "$img" >/dev/null; t1=$(now)
    "$M" --cluster "$CL" --token "$TOK" --store "$W/cache-in" checkin "$IMG/$img.img" --name "$img" >/dev/null; t2=$(now)
    rm -f "$W/out.img"; "$M" --store "$W/emb" checkout "$img" -o "$W/out.img" >/dev/null; t3=$(now)
    rm -f "$W/out.img"; rm -rf "$W/cache-out"
    "$M" --cluster "$CL" --token "$TOK" --store "$W/cache-out" checkout "$img" -o "$W/out.img" >/dev/null; t4=$(now)
    printf '%-10s checkin embedded %6.2f s cluster %6.2f s (x%.2f) | checkout embedded %6.2f s cluster (cold cache) %6.2f s (x%.2f)\n' \
        "$img" "$(secs $t0 $t1)" "$(secs $t1 $t2)" "$(echo "($t2-$t1)/($t1-$t0)" | bc -l)" \
        "$(secs $t2 $t3)" "$(secs $t3 $t4)" "$(echo "($t4-$t3)/($t3-$t2)" | bc -l)"
done
rm -f "$W/out.img"
stop c3
fi

if [[ $PARTS == *2* ]]; then
echo "== 2. concurrent checkouts of base (cold caches): 1-node vs 3-node"
playground c1 1 1 1
"$M" --cluster "$CL" --token "$TOK" --store "$W/cache-1n" checkin "$IMG/base.img" --name base >/dev/null
C1=$CL; T1=$TOK
playground c3b 3 3 2
"$M" --cluster "$CL" --token "$TOK" --store "$W/cache-3n" checkin "$IMG/base.img" --name base >/dev/null
SIZE=$(stat -c %s "$IMG/base.img")
for nodes in 1 3; do
    if [ $nodes = 1 ]; then url=$C1; tok=$T1; else url=$CL; tok=$TOK; fi
    for k in 1 4 8; do
        t0=$(now)
        for i in $(seq 1 "$k"); do
            rm -rf "$W/cc$i" "$W/co$i.img"
            "$M" --cluster "$url" --token "$tok" --store "$W/cc$i" checkout base -o "$W/co$i.img" >/dev/null &
        done
        wait
        t1=$(now)
        printf '%d-node cluster, %d clients: %6.2f s, aggregate %7.1f MB/s of image\n' \
            "$nodes" "$k" "$(secs $t0 $t1)" "$(echo "$k*$SIZE/1000000/($t1-$t0)" | bc -l)"
        rm -rf "$W"/cc* "$W"/co*.img
    done
done
stop c1; stop c3b
fi

if [[ $PARTS == *3* ]]; then
echo "== 3. rebalance after adding a node (3 nodes, N=2 -> 4 nodes)"
playground r 3 2 2
for img in "${FAMILY[@]}"; do
    "$M" --cluster "$CL" --token "$TOK" --store "$W/cache-r" checkin "$IMG/$img.img" >/dev/null
done
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cp "$W/r/cluster.toml" "$W/r/cluster4.toml"
printf '\n[[node]]\nid = 4\naddress = "127.0.0.1:%s"\nzone = "z1"\ncapacity_gb = 100\nroles = ["storage"]\n' "$PORT" >>"$W/r/cluster4.toml"
"$N" serve --store "$W/r/node4" --cluster "$W/r/cluster4.toml" --id 4 --repair-every 3600 >"$W/r/node4.log" 2>&1 &
echo $! >>"$W/r/pids"
sleep 1
"$M" --cluster "$CL" --token "$TOK" admin raft add-learner 4 "127.0.0.1:$PORT" >/dev/null
"$M" --cluster "$CL" --token "$TOK" admin node add 4 --address "127.0.0.1:$PORT" --zone z1 --capacity-gb 100 >/dev/null
t0=$(now)
pulled=0
items=0
for round in 1 2 3; do
    out=$("$M" --cluster "$CL" --token "$TOK" --json admin repair)
    pulled=$((pulled + $(echo "$out" | python3 -c 'import json,sys; print(sum(v["bytes_pulled"] for v in json.load(sys.stdin).values()))')))
    items=$((items + $(echo "$out" | python3 -c 'import json,sys; print(sum(v["items_pulled"] for v in json.load(sys.stdin).values()))')))
    st=$("$M" --cluster "$CL" --token "$TOK" --json admin cluster status)
    if echo "$st" | grep -q '"rebalance": "complete"'; then break; fi
done
t1=$(now)
held=$(curl -s "http://127.0.0.1:$PORT/metrics" | awk '/^mirage_store_bytes /{print $2}')
held_items=$(curl -s "http://127.0.0.1:$PORT/metrics" | awk '/^mirage_store_items /{print $2}')
echo "items pulled by all nodes: $items; items node 4 holds (the minimum): $held_items"
echo "(bytes pulled are encoded item bytes; bytes held are compressed records)"
echo "$st" | python3 -c 'import json,sys; v=json.load(sys.stdin); print("moved by the change:", v["moved_by_last_change"], "partitions; rebalance:", v["rebalance"])'
printf 'rebalance: %.2f s, %d bytes pulled; node 4 holds %d bytes (the minimum): ratio %.3f\n' \
    "$(secs $t0 $t1)" "$pulled" "$held" "$(echo "$pulled/$held" | bc -l)"
stop r
fi

if [[ $PARTS == *4* ]]; then
echo "== 4. location-table reads vs index lookups (4 nodes, N=2; checkout of base, cold caches)"
playground t 4 2 2
"$M" --cluster "$CL" --token "$TOK" --store "$W/cache-t" checkin "$IMG/base.img" --name base >/dev/null
counters() { # sum over the nodes: table hits, index lookups, volume reads
    for u in ${CL//,/ }; do curl -s "$u/metrics"; done | awk '
        /^mirage_read_table_hits_total /{t+=$2} /^mirage_read_index_lookups_total /{i+=$2}
        /^mirage_read_ops_total /{r+=$2} END{print t, i, r}'
}
for run in 1 2 3; do
    for tables in 1 0; do
        rm -rf "$W/ct" "$W/ct.img"
        read -r t0h t0i t0r < <(counters)
        t0=$(now)
        MIRAGE_LOCATION_TABLES=$tables "$M" --cluster "$CL" --token "$TOK" --store "$W/ct" \
            checkout base -o "$W/ct.img" >/dev/null
        t1=$(now)
        read -r t1h t1i t1r < <(counters)
        printf 'run %d, tables %s: %6.2f s; table hits %d, index lookups %d, volume reads %d\n' \
            "$run" "$([ $tables = 1 ] && echo on || echo off)" "$(secs $t0 $t1)" \
            $((t1h - t0h)) $((t1i - t0i)) $((t1r - t0r))
    done
done
rm -rf "$W/ct" "$W/ct.img"
stop t
fi
