#!/usr/bin/env bash
# Builds small seed images for the fuzz targets into corpus/<target>/ (kept out of git).
set -euo pipefail
cd "$(dirname "$0")"
mkdir -p corpus/{table,qcow2,ext4,vfat}
t=$(mktemp -d); trap 'rm -rf "$t"' EXIT
mkdir -p "$t/src/d"; echo hello > "$t/src/d/f"; ln -s d/f "$t/src/l"; head -c 5000 /dev/urandom > "$t/src/big"
for fs in ext2 ext3 ext4; do
  rm -f "$t/$fs.img"
  mke2fs -q -t "$fs" -b 1024 -N 32 -d "$t/src" "$t/$fs.img" 1024 2>/dev/null || mke2fs -q -t "$fs" -b 1024 -d "$t/src" "$t/$fs.img" 1024
  cp "$t/$fs.img" "corpus/ext4/$fs.img"
done
# Group descriptors a block per meta group; allocation in clusters.
mke2fs -q -t ext4 -b 1024 -N 32 -O meta_bg,^resize_inode -g 256 -d "$t/src" corpus/ext4/meta_bg.img 2048
mke2fs -q -t ext4 -b 1024 -N 32 -O bigalloc -C 4096 -d "$t/src" corpus/ext4/bigalloc.img 2048
# A journal that needs recovery: two transactions (checksums v3), the second revoking a block.
mke2fs -q -t ext4 -b 1024 -N 32 -J size=1 -d "$t/src" "$t/dirty.img" 2140
dd if="$t/dirty.img" of="$t/logged" bs=1024 skip=1 count=2 status=none
printf 'jo -c -v 3\njw -b 1,2 %s\njc\njo\njw -r 2\njc\n' "$t/logged" > "$t/jcmds"
debugfs -w -f "$t/jcmds" "$t/dirty.img" >/dev/null 2>&1
cp "$t/dirty.img" corpus/ext4/dirty-journal.img
# Imaged while mounted, with orphans: one on the orphan list, one in the orphan file.
mke2fs -q -t ext4 -b 1024 -N 32 -O orphan_file,^metadata_csum -J size=1 -d "$t/src" "$t/orphans.img" 2140
printf 'unlink /big\nsif <13> links_count 0\nunlink /d/f\nsif <15> links_count 0\nssv last_orphan 15\nfeature needs_recovery orphan_present\n' > "$t/ocmds"
debugfs -w -f "$t/ocmds" "$t/orphans.img" >/dev/null 2>&1
ofblock=$(debugfs -R 'blocks <12>' "$t/orphans.img" 2>/dev/null | awk '{print $1}')
printf '\x0d\x00\x00\x00' | dd of="$t/orphans.img" bs=1024 seek="$ofblock" conv=notrunc status=none
cp "$t/orphans.img" corpus/ext4/orphans.img
truncate -s 256K "$t/fat.img"; mkfs.fat -F 12 "$t/fat.img" >/dev/null
MTOOLS_SKIP_CHECK=1 mcopy -s -i "$t/fat.img" "$t/src/d" "$t/src/big" ::/
cp "$t/fat.img" corpus/vfat/fat12.img
truncate -s 2M "$t/mbr.img"; printf 'label: dos\nstart=64, size=512, type=83\nstart=1024, type=5\nstart=1100, size=100, type=82\n' | sfdisk -q "$t/mbr.img" >/dev/null
head -c 4096 "$t/mbr.img" > corpus/table/mbr.bin
truncate -s 2M "$t/gpt.img"; printf 'label: gpt\nstart=64, size=512\n' | sfdisk -q "$t/gpt.img" >/dev/null
cp "$t/gpt.img" corpus/table/gpt.bin
truncate -s 1M "$t/q.raw"; head -c 70000 /dev/urandom | dd of="$t/q.raw" bs=1 seek=65536 conv=notrunc status=none
qemu-img convert -f raw -O qcow2 -o cluster_size=4096 "$t/q.raw" corpus/qcow2/plain.qcow2
qemu-img convert -f raw -O qcow2 -c -o cluster_size=4096 "$t/q.raw" corpus/qcow2/compressed.qcow2
qemu-img convert -f raw -O qcow2 -o cluster_size=16384,extended_l2=on "$t/q.raw" corpus/qcow2/subclusters.qcow2
echo "seeds written to $(pwd)/corpus"
