#!/usr/bin/env python3
"""Slow requests in groups, beside what the nodes logged then: how the twenty-eighth and
twenty-ninth passes of docs/benchmarks.md (issue 16) found the flushes and snapshot builds
that ran in step on every node.

A load run with `LOAD_SLOW_MS=<ms>` writes each acknowledged request slower than that to
`<plot>.slow.csv` (when it was sent, in Unix seconds, and its latency); `BENCH_LOGS=<dir>`
keeps each node's log. This script groups the slow requests whose times in flight overlap (a
group of every client at once is a stall of the cluster, not of a connection), and prints
each group whose slowest request took at least --min-ms, with the log lines of every node
from --before-ms before the group began to its end:

    BENCH_LOGS=/tmp/logs COOKIE_CRUD_LOG_LEVEL="info,cookie_raft=debug" LOAD_SLOW_MS=5 \\
      LOAD_PLOT=/tmp/plot.svg LOAD_SECS=20 LOAD_CLIENTS=16 LOAD_ONLY=creates ETCD=none \\
      cargo bench --bench load
    python3 benches/stalls.py /tmp/plot.slow.csv /tmp/logs --min-ms 8

Last, a count of the groups by the first of a slow log fsync, a host pause (with
benches/pauses.py's log in the same directory), a state flush or snapshot, another line or
nothing logged near them, and how many slow log fsyncs overlapped a state flush.

Log lines are the nodes' text format (`<RFC 3339 time>Z LEVEL target: message`, colours
and all); lines without a time are skipped.
"""
import argparse
import csv
import datetime
import glob
import os
import re
import sys

ANSI = re.compile(r"\x1b\[[0-9;]*m")
LINE = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?)Z\s+(\w+)\s+(.*)")


def groups_of(slow):
    """[start, end, requests, slowest ms] of requests (sent, ms) whose flights overlap."""
    out = []
    for sent, ms in sorted(slow):
        end = sent + ms / 1000
        if out and sent <= out[-1][1]:
            g = out[-1]
            g[1] = max(g[1], end)
            g[2] += 1
            g[3] = max(g[3], ms)
        else:
            out.append([sent, end, 1, ms])
    return out


def log_lines(directory, width):
    """(Unix seconds, node, text) of every timed line of `directory`'s *.log, in time order."""
    out = []
    for path in sorted(glob.glob(os.path.join(directory, "*.log"))):
        node = os.path.basename(path)[: -len(".log")]
        with open(path, errors="replace") as f:
            for line in f:
                m = LINE.match(ANSI.sub("", line))
                if not m:
                    continue
                # fromisoformat takes at most 6 digits of a second's fraction.
                stamp = re.sub(r"(\.\d{6})\d+", r"\1", m.group(1))
                t = datetime.datetime.fromisoformat(stamp).replace(tzinfo=datetime.timezone.utc)
                out.append((t.timestamp(), node, m.group(3)[:width]))
    out.sort()
    return out


# What a group of slow requests is put with: the first of these its log lines show
# (`pauses` lines come from benches/pauses.py, a real-time thread's late wakes).
FSYNC_MARKS = ("slow log fsync", "the log's fsync was slow")
KINDS = [
    ("slow log fsync", FSYNC_MARKS),
    ("host pause", ("pauses: woke",)),
    ("state flush or snapshot", ("sm.redb", "snapshot", "log purged")),
]
MS = re.compile(r"\bms=(\d+)")


def kind_of(near):
    texts = [text for _, _, text in near]
    for kind, marks in KINDS:
        if any(m in text for text in texts for m in marks):
            return kind
    return "other log line" if texts else "nothing"


def spans(lines, marks):
    """[start, end] of each line with one of `marks` and an `ms=` duration, logged at its end."""
    out = []
    for t, _, text in lines:
        m = MS.search(text)
        if m and any(k in text for k in marks):
            out.append((t - int(m.group(1)) / 1000, t))
    return out


def fsyncs_beside_flushes(lines):
    """How many slow log fsyncs overlapped a state flush on any node, and the share of the
    time that flushes covered (what chance alone would give)."""
    fsyncs = spans(lines, FSYNC_MARKS)
    flushes = sorted(spans(lines, ("written to sm.redb",)))
    if not fsyncs or not flushes:
        return None
    beside = sum(1 for a, b in fsyncs if any(x <= b and a <= y for x, y in flushes))
    covered, cur = 0.0, None
    for a, b in flushes:
        if cur and a <= cur[1]:
            cur[1] = max(cur[1], b)
        else:
            covered += cur[1] - cur[0] if cur else 0
            cur = [a, b]
    covered += cur[1] - cur[0]
    # The time between the first and the last of them: the load's, not the nodes' start.
    span = max(b for _, b in fsyncs + flushes) - min(a for a, _ in fsyncs + flushes)
    return beside, len(fsyncs), covered / span if span > 0 else 0.0


def clock(t):
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime("%H:%M:%S.%f")[:-3]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("slow_csv", help="<plot>.slow.csv of a run with LOAD_SLOW_MS")
    ap.add_argument("logs", nargs="?", help="the run's BENCH_LOGS directory")
    ap.add_argument("--min-ms", type=float, default=8.0,
                    help="print groups whose slowest request took at least this (8)")
    ap.add_argument("--before-ms", type=float, default=30.0,
                    help="log lines from this long before a group began (30)")
    ap.add_argument("--width", type=int, default=160, help="characters of each log line (160)")
    args = ap.parse_args()

    with open(args.slow_csv) as f:
        slow = [(float(r["sent_unix"]), float(r["latency_ms"])) for r in csv.DictReader(f)]
    groups = groups_of(slow)
    shown = [g for g in groups if g[3] >= args.min_ms]
    print(f"{len(slow)} slow requests in {len(groups)} groups; "
          f"{len(shown)} with a request of {args.min_ms:g} ms or more")
    if not shown:
        return 0
    lines = log_lines(args.logs, args.width) if args.logs else []
    kinds = {}
    for start, end, n, ms in shown:
        print(f"\n{clock(start)}: {n} requests over {1000 * (end - start):.1f} ms, "
              f"the slowest {ms:.1f} ms")
        near = [x for x in lines if start - args.before_ms / 1000 <= x[0] <= end]
        kind = kind_of(near)
        kinds[kind] = kinds.get(kind, 0) + 1
        for t, node, text in near:
            print(f"  {1000 * (t - start):+7.1f} ms  {node}  {text}")
    if args.logs:
        order = [k for k, _ in KINDS] + ["other log line", "nothing"]
        print(f"\n{len(shown)} groups, each put with the first of what was logged near it: "
              + ", ".join(f"{k} {kinds.get(k, 0)}" for k in order))
        overlap = fsyncs_beside_flushes(lines)
        if overlap:
            beside, total, covered = overlap
            print(f"{beside} of {total} slow log fsyncs ({100 * beside / total:.0f}%) overlapped "
                  f"a state flush on some node; flushes covered {100 * covered:.0f}% of the "
                  f"time from the first of them to the last")
    return 0


if __name__ == "__main__":
    sys.exit(main())
