#!/usr/bin/env bash
# The footprint of a 3-node cluster holding N records of about 250 bytes (default 1M):
# peak resident memory (VmHWM) of each node and the size of each data directory.
#
#  1. benches/support/make_backup.py writes a synthetic backup; `cookie-crud restore` makes
#     node 1's data directory from it and node 1 starts alone;
#  2. nodes 2 and 3 start empty and join as voters: node 1 builds a snapshot of the whole
#     state and each follower installs it (the snapshot build and install of issue 15);
#  3. one unpaged GET /cookies on the leader (the whole list in one reply);
#  4. with node 3 stopped, API_SECS (default 60) of creates through the API at 64 clients
#     (wrk, installed from Debian when missing; skipped with API_SECS=0): the leader builds
#     snapshots and purges its log meanwhile;
#  5. node 3 restarted: it is behind the purged log, so it catches up by a snapshot install;
#  6. IDLE_SECS (default 30) without writes, then the data directories again: by then each
#     node has built a snapshot that gives its log back (raft.snapshot_idle_ms, 10 s) and
#     rewritten sm.redb packed (storage.repack_idle_ms, 10 s, and the copy's few seconds).
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
# Node $1's data directory against $2 bytes of records: the disk it takes (allocated blocks),
# and its apparent size (an open redb file's length runs ahead of its pages; unwritten, it
# takes no disk).
dir_size() {
  local used apparent
  used=$(du -sk "$DIR/node$1" | cut -f1)
  apparent=$(du -sb "$DIR/node$1" | cut -f1)
  echo "node$1 data directory: $((used / 1024)) MB, $(awk -v u="$used" -v r="$2" 'BEGIN {printf "%.2fx", u * 1024 / r}') the records' $(($2 / 1048576)) MB ($((apparent / 1048576)) MB apparent)"
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
  dir_size "$i" "$RECORD_BYTES"
done

API_SECS=${API_SECS:-60}
[ "$API_SECS" -gt 0 ] || exit 0
command -v wrk >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null)
# The same ~200-byte document as the many-core bench's cc_put.lua, unique ids per thread.
cat > "$DIR/put.lua" <<'LUA'
local counter, prefix = 0, ""
function init(args) prefix = string.format("%d-%d", os.time(), math.random(1, 1000000000)) end
local rest = ',"user_id":42,"created":1700000000,"last_used":1700000100,"domain":"example.com","path":"/","secure":true,"http_only":true,"value":"' .. string.rep("x", 96) .. '"}'
function request()
  counter = counter + 1
  return wrk.format("POST", "/cookies", { ["Content-Type"] = "application/json" },
    '{"cookie":"cookie:' .. prefix .. '-' .. counter .. '"' .. rest)
end
LUA
kill "${PIDS[2]}"; wait "${PIDS[2]}" 2>/dev/null || true
wrk -t2 -c64 -d"${API_SECS}s" -s "$DIR/put.lua" "http://127.0.0.1:$(port 1)" > "$DIR/wrk.txt"
done_2xx=$(awk '/requests in/ {r=$1} /Non-2xx/ {n=$NF} END {print r - n}' "$DIR/wrk.txt")
echo "API load: $done_2xx creates in ${API_SECS} s ($(awk '/Requests\/sec/ {print $2}' "$DIR/wrk.txt") /s), node3 stopped"
for i in 1 2; do
  echo "node$i after the load: rss $(rss "${PIDS[$((i - 1))]}") MB, peak $(hwm "${PIDS[$((i - 1))]}") MB"
done
"$BIN" --config "$DIR/node3.toml" >>"$DIR/node3.log" 2>&1 & PIDS[2]=$!
start=$SECONDS
wait_for "http://127.0.0.1:$(port 3)/ready" '"ready":true' 900
echo "node3 restarted, caught up in $((SECONDS - start)) s: rss $(rss "${PIDS[2]}") MB, peak $(hwm "${PIDS[2]}") MB, snapshots installed $(curl -s "http://127.0.0.1:$(port 3)/metrics" | awk '/^raft_snapshot_installs_total/ {print $2}')"
# A created record: its JSON (the document above, ~230 bytes) and the stored header.
TOTAL=$((RECORD_BYTES + done_2xx * 250))
for i in 1 2 3; do
  dir_size "$i" "$TOTAL"
done
built() { curl -s "http://127.0.0.1:$(port "$1")/metrics" | awk '/^raft_snapshots_built_total/ {print $2}'; }
repacked() { curl -s "http://127.0.0.1:$(port "$1")/metrics" | awk '/^raft_sm_repacks_total/ {print $2}'; }
echo "snapshots built since start: node1 $(built 1), node2 $(built 2), node3 $(built 3)"
# Once the load has stopped: an idle node builds a snapshot that gives its log back
# (raft.snapshot_idle_ms, 10 s by default) and rewrites sm.redb packed (storage.repack_idle_ms).
IDLE_SECS=${IDLE_SECS:-30}
if [ "$IDLE_SECS" -gt 0 ]; then
  sleep "$IDLE_SECS"
  echo "after ${IDLE_SECS} s without writes (snapshots built: node1 $(built 1), node2 $(built 2), node3 $(built 3); sm.redb rewritten packed: node1 $(repacked 1), node2 $(repacked 2), node3 $(repacked 3)):"
  for i in 1 2 3; do
    dir_size "$i" "$TOTAL"
  done
  for i in 1 2 3; do
    echo "node$i at rest: rss $(rss "${PIDS[$((i - 1))]}") MB, peak $(hwm "${PIDS[$((i - 1))]}") MB"
  done
fi
# Where the bytes are: each file's length and the disk it takes (a file can be sparse).
for i in 1 2 3; do
  echo "node$i files (MB length / MB on disk):"
  find "$DIR/node$i" -type f -size +1M -printf '  %p %s %b\n' | awk -v d="$DIR/node$i/" \
    '{sub(d, "", $1); printf "  %s %.0f / %.0f\n", $1, $2 / 1048576, $3 * 512 / 1048576}'
done
