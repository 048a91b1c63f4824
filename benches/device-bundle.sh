#!/usr/bin/env bash
# Pack what benches/many_core_writes.py needs on a bare many-core machine that has no
# network and no packages: this tree's release build (stripped), etcd and wrk from this
# machine, the shared libraries wrk needs that a bare image may lack, and the wrk scripts.
# The bundle stays small enough to travel with the working tree (under 64 MiB).
#
#   benches/device-bundle.sh [DIR]     # default .devbench (keep it out of git:
#                                      # echo /.devbench/ >> .git/info/exclude)
#
# Then, on the lent machine (one call; $OUT comes back):
#   chmod +x .devbench/bin/*; export COOKIE_CRUD_CLUSTER_SECRET=benchsecret-0123456789
#   D=10 PLAN="2:cc 4:cc 2:etcd 4:etcd" BIN_DIR=.devbench/bin LIB_DIR=.devbench/lib \
#     LUA_DIR=.devbench/lua OUT=/tmp/o python3 -u benches/many_core_writes.py; cp /tmp/o/* $OUT/
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-.devbench}
LUA=${LUA_DIR:-../shared/bench}

cargo build --release --quiet
need() { command -v "$1" >/dev/null || { echo "device-bundle: $1 is missing here ($2)" >&2; exit 1; }; }
need etcd "apt-get install etcd-server"
need wrk "apt-get install wrk"
[ -d "$LUA" ] || { echo "device-bundle: no wrk scripts in $LUA (LUA_DIR)" >&2; exit 1; }

rm -rf "$DIR"
mkdir -p "$DIR/bin" "$DIR/lib" "$DIR/lua"
# Debug info is most of the binary's size; the bench reads no symbols.
strip -o "$DIR/bin/cookie-crud" target/release/cookie-crud
cp "$(command -v etcd)" "$(command -v wrk)" "$DIR/bin/"
# wrk's libraries outside the C library itself (LuaJIT, OpenSSL): a bare image may not
# have them; the bench puts LIB_DIR on LD_LIBRARY_PATH.
ldd "$(command -v wrk)" | awk '/=> \// {print $3}' | grep -Ev '/lib(c|m|pthread|dl|rt|gcc_s)\.so' |
  while read -r lib; do cp -L "$lib" "$DIR/lib/"; done
cp "$LUA"/*.lua "$DIR/lua/"
echo "device-bundle: $DIR, $(du -sm "$DIR" | cut -f1) MiB (commit $(git rev-parse --short HEAD))"
ls "$DIR"/*
