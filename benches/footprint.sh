#!/usr/bin/env bash
# The footprint of a 3-node cluster holding N records of about 250 bytes (default 1M):
# peak resident memory (VmHWM) of each node and the size of each data directory.
#
#  1. benches/support/make_backup.py writes a synthetic backup; `cookie-crud restore` makes
#     node 1's data directory from it and node 1 starts alone;
#  2. nodes 2 and 3 start empty and join as voters: node 1 builds a snapshot of the whole
#     state and each follower installs it (the snapshot build and install of issue 15);
#  3. one unpaged GET /cookies on the leader (the whole list in one reply).
# Loading through the API (wrk) is the other half of the picture: docs/benchmarks.md.
#
#   N=1000000 benches/footprint.sh
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-1000000}
BIN=${BIN:-target/release/cookie-crud}
BASE=${FOOTPRINT_BASE_PORT:-18700}
[ -x "$BIN" ] || cargo build --release
DIR=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$DIR"; }
trap cleanup EXIT

port() { echo $((BASE + $1)); }
peer() { echo $((BASE + 10 + $1)); }
config() {
  local i=$1 extra=${2:-}
  cat > "$DIR/node$i.toml" <<TOML
node_id = $i
listen = "127.0.0.1:$(port "$i")"
peer_listen = "127.0.0.1:$(peer "$i")"
data_dir = "$DIR/node$i"
cluster_secret = "footprint-secret"
log_level = "warn"
$extra
TOML
}
hwm() { awk '/VmHWM/ {printf "%.0f", $2/1024}' "/proc/$1/status"; }
rss() { awk '/VmRSS/ {printf "%.0f", $2/1024}' "/proc/$1/status"; }
wait_for() { # URL PATTERN SECONDS
  for _ in $(seq 1 $(($3 * 5))); do
    curl -sf -m 2 "$1" 2>/dev/null | grep -q "$2" && return 0
    sleep 0.2
  done
  echo "footprint: timed out waiting for $2 at $1" >&2; tail -5 "$DIR"/node*.log >&2; return 1
}

echo "== $N records: writing the backup"
python3 benches/support/make_backup.py "$N" "$DIR/big.backup" >/dev/null
RECORD_BYTES=$(python3 -c 'import json,sys; print(json.loads(open(sys.argv[1],"rb").readlines()[1])["body_bytes"])' "$DIR/big.backup")
config 1
"$BIN" restore --from "$DIR/big.backup" --config "$DIR/node1.toml" >/dev/null
rm "$DIR/big.backup"
"$BIN" --config "$DIR/node1.toml" >"$DIR/node1.log" 2>&1 & PIDS+=($!)
wait_for "http://127.0.0.1:$(port 1)/health" '"role":"leader"' 120
echo "node1 alone, leading: rss $(rss "${PIDS[0]}") MB, peak $(hwm "${PIDS[0]}") MB"

for i in 2 3; do
  config "$i" "join = \"127.0.0.1:$(peer 1)\"
join_as = \"voter\""
  "$BIN" --config "$DIR/node$i.toml" >"$DIR/node$i.log" 2>&1 & PIDS+=($!)
done
start=$SECONDS
wait_for "http://127.0.0.1:$(port 1)/cluster/members" '"voters":\[1,2,3\]' 900
for i in 2 3; do
  wait_for "http://127.0.0.1:$(port "$i")/ready" '"ready":true' 600
done
echo "joined by snapshot in $((SECONDS - start)) s"
for i in 1 2 3; do
  echo "node$i after the snapshot: rss $(rss "${PIDS[$((i - 1))]}") MB, peak $(hwm "${PIDS[$((i - 1))]}") MB"
done

bytes=$(curl -s -m 600 -o /dev/null -w '%{size_download}' "http://127.0.0.1:$(port 1)/cookies")
echo "unpaged GET /cookies: $((bytes / 1048576)) MB; node1 rss $(rss "${PIDS[0]}") MB, peak $(hwm "${PIDS[0]}") MB"
for i in 1 2 3; do
  echo "node$i data directory: $(du -sb "$DIR/node$i" | awk -v r="$RECORD_BYTES" '{printf "%.0f MB, %.1fx", $1 / 1048576, $1 / r}') the records' $((RECORD_BYTES / 1048576)) MB ($(du -sm "$DIR/node$i" | cut -f1) MB allocated)"
done
