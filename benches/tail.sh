#!/usr/bin/env bash
# Where the write tail comes from: the measurements of docs/benchmarks.md, "Where the rest
# of the write tail goes", in one command.
#
# Runs `cargo bench --bench load` for creates at CLIENTS (64) against cookie-crud alone and,
# while it runs:
#  1. scrapes the leader's metrics twice, WINDOW (10) seconds apart, and prints how the
#     writes in between spread by their wait for a group-commit batch
#     (`raft_write_queue_seconds`), and the entries by time from proposal to applied
#     (`raft_write_batch_seconds`; a late entry holds up the batches behind it);
#  2. with STRACE=1 (needs strace and ptrace rights), times the leader's fdatasync calls for
#     6 s and prints them per thread: `wal-flush` is the Raft log, `state-flush` sm.redb.
#
#   benches/tail.sh                 # BENCH_NODE_BIN=<binary> measures another build
#   STRACE=1 CLIENTS=256 benches/tail.sh
set -euo pipefail
cd "$(dirname "$0")/.."
CLIENTS=${CLIENTS:-64}
WINDOW=${WINDOW:-10}
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT

# shellcheck source=benches/support/creates.sh
. benches/support/creates.sh
curl -fsS "$leader/metrics" >"$OUT/before"
if [ "${STRACE:-0}" = 1 ]; then
  timeout 6 strace -f -T -e trace=fdatasync,fsync -p "$leader_pid" -o "$OUT/strace" 2>/dev/null || true
  for t in /proc/"$leader_pid"/task/*; do echo "$(basename "$t") $(cat "$t/comm")"; done >"$OUT/threads"
  sleep $((WINDOW > 6 ? WINDOW - 6 : 0))
else
  sleep "$WINDOW"
fi
curl -fsS "$leader/metrics" >"$OUT/after"
wait "$BENCH"

grep '^| creates' "$OUT/load.log" || true
echo
python3 - "$OUT/before" "$OUT/after" "$WINDOW" <<'EOF'
import re, sys
before, after, window = open(sys.argv[1]).read(), open(sys.argv[2]).read(), sys.argv[3]
def value(text, series):
    m = re.search("^" + re.escape(series) + r" (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0
def spread(name, what):
    pat = re.compile("^" + name + r'_bucket\{le="([^"]+)"\} (\d+)', re.M)
    b, a = pat.findall(before), pat.findall(after)
    cum = [(le, int(x) - int(y)) for (le, x), (_, y) in zip(a, b)]
    total = cum[-1][1] or 1
    mean = (value(after, name + "_sum") - value(before, name + "_sum")) / total
    print(f"{what} in {window} s on the leader: {total}, mean {mean * 1000:.2f} ms")
    prev, low = 0, "0"
    for le, n in cum:
        if n - prev:
            print(f"  {low:>6}-{le:<6} s: {n - prev:7d}  {100 * (n - prev) / total:5.1f}%")
        prev, low = n, le
spread("raft_write_queue_seconds", "writes, by their wait in the queue for a batch")
print()
spread("raft_write_batch_seconds", "entries, by time from proposal to applied")
EOF

if [ -f "$OUT/strace" ]; then
  echo
  echo "fdatasync on the leader over 6 s, per thread (ms):"
  python3 - "$OUT/strace" "$OUT/threads" <<'EOF'
import re, sys, collections
names = dict(l.split(None, 1) for l in open(sys.argv[2]).read().splitlines() if " " in l)
times = collections.defaultdict(list)
for line in open(sys.argv[1]):
    m = re.match(r"(\d+)\s.*<([\d.]+)>$", line.strip())
    if m:
        times[m.group(1)].append(float(m.group(2)) * 1000)
for tid, v in sorted(times.items(), key=lambda kv: -len(kv[1])):
    v.sort()
    q = lambda p: v[min(len(v) - 1, int(len(v) * p))]
    print(f"  {names.get(tid, tid):<16} {len(v):6d} calls  p50 {q(0.5):6.2f}  p99 {q(0.99):6.2f}  max {v[-1]:6.2f}")
EOF
fi
