#!/usr/bin/env bash
# What serializes a node: docs/benchmarks.md, "What serializes" (issue 16), in one command.
#
# Runs `cargo bench --bench load` for creates at CLIENTS (64) against cookie-crud alone and,
# while it runs, two windows of WINDOW (6) seconds one after the other:
#  1. scrapes the leader's metrics at both ends of the first and prints, per follower, how
#     much of it an AppendEntries to it was in flight (`raft_peer_rpc_seconds`) and the
#     mean round: openraft 0.9 keeps one in flight per follower, so a stream busy near 100%
#     of the time is a stage serial in time, whatever CPU the nodes have;
#  2. samples the three nodes through the second with `perf record --call-graph dwarf` and
#     prints each node's CPU by task (benches/tasks.py): a serial stage (one task or
#     thread) near 1.0 core is one that more cores cannot help.
# Needs perf (linux-perf) and rights to sample other processes (root, or
# kernel.perf_event_paranoid <= 1).
#
#   benches/tasks.sh                      # BENCH_NODE_BIN=<binary> measures another build
#   CLIENTS=256 WINDOW=8 benches/tasks.sh
set -euo pipefail
cd "$(dirname "$0")/.."
CLIENTS=${CLIENTS:-64}
WINDOW=${WINDOW:-6}
FREQ=${FREQ:-499}
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
command -v perf >/dev/null || { echo "perf not found (apt-get install linux-perf)" >&2; exit 1; }

LOAD_WINDOW=$((2 * WINDOW))
# shellcheck source=benches/support/creates.sh
. benches/support/creates.sh

# The bench's three nodes: the cookie-crud processes below it.
descendants() { local p; for p in $(pgrep -P "$1"); do echo "$p"; descendants "$p"; done; }
nodes=$(for p in $(descendants "$BENCH"); do
  [ "$(cat /proc/"$p"/comm 2>/dev/null)" = cookie-crud ] && echo "$p"; done | paste -sd,)

# The streams first, then the CPU: perf's start and its writing of call graphs slow the
# nodes, and the appends' round would measure perf.
curl -fsS "$leader/metrics" >"$OUT/before"
sleep "$WINDOW"
curl -fsS "$leader/metrics" >"$OUT/after"
perf record -F "$FREQ" --call-graph dwarf,32768 -p "$nodes" -o "$OUT/perf.data" \
  -- sleep "$WINDOW" >/dev/null 2>&1
wait "$BENCH"

grep '^| creates' "$OUT/load.log" || true
echo
perf script -F comm,pid,tid,ip,sym -i "$OUT/perf.data" 2>/dev/null |
  python3 benches/tasks.py --secs "$WINDOW" --freq "$FREQ" --leader "$leader_pid"
echo
python3 - "$OUT/before" "$OUT/after" "$WINDOW" <<'PY'
import re, sys
before, after, window = open(sys.argv[1]).read(), open(sys.argv[2]).read(), float(sys.argv[3])
series = re.compile(r'^raft_peer_rpc_seconds_(sum|count)\{peer_id="(\d+)",rpc="append"\} (\S+)$', re.M)
def read(text):
    return {(m.group(2), m.group(1)): float(m.group(3)) for m in series.finditer(text)}
b, a = read(before), read(after)
for peer in sorted({p for p, _ in a}):
    busy = a[(peer, "sum")] - b.get((peer, "sum"), 0.0)
    n = a[(peer, "count")] - b.get((peer, "count"), 0.0)
    mean = busy / n * 1000 if n else 0.0
    print(f"appends to node {peer}: {n / window:7.0f}/s, mean round {mean:.3f} ms, "
          f"in flight {100 * busy / window:.0f}% of the window")
PY
