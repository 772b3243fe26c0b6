#!/usr/bin/env bash
# Installs the system packages that building and testing Mirage need (Debian). Idempotent:
# apt runs only when something is missing.
set -euo pipefail
packages=(
  build-essential   # C/C++ compilers for the bundled RocksDB and zstd
  clang libclang-dev  # bindgen for the RocksDB bindings
  pkg-config
  e2fsprogs dosfstools mtools fdisk util-linux qemu-utils  # image tools (indexer, checkout, tests)
  python3           # test fixtures (xattrs, sockets, nanosecond times)
  xz-utils bzip2 zstd  # tests: compressed images are named and refused
  iproute2          # chaos tests: network namespaces, veth, bridge, blackhole routes
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
fi
if ! command -v cargo >/dev/null; then
  echo "cargo not found: install a Rust toolchain (https://rustup.rs)" >&2
  exit 1
fi
