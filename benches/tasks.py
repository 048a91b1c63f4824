#!/usr/bin/env python3
"""Where each node's CPU goes, by task: reads `perf script -F comm,pid,tid,ip,sym` on stdin
(samples taken with call graphs, `--call-graph dwarf`) and sums the samples of each node by
the task or thread they ran in. benches/tasks.sh records them during a load; docs/
benchmarks.md, "What serializes", has the figures and what they say.

    perf script -F comm,pid,tid,ip,sym -i perf.data | \\
        python3 benches/tasks.py --secs 6 --freq 499 [--leader PID]

A figure is CPU in cores: samples / (seconds x frequency). For a *serial* stage (one task
or one thread: the Raft core, a replication stream, the state machine worker, group commit,
the WAL's and the state's flush threads) it is also how busy that stage is, as a share of
the one core it can use: the stage that nears 1.0 first is the one that stops a node from
scaling with cores. CPU alone: time a stage waits (an fsync, a round trip) is not in it.
"""
import argparse
import collections
import re
import sys

# (name, serial, marker): a sample belongs to the first task whose marker one of its frames
# contains. Tokio tasks do not nest, so at most one task's poll is on a stack.
TASKS = [
    ("raft core", True, "openraft::core::raft_core::RaftCore"),
    ("replication streams", True, "openraft::replication::ReplicationCore"),
    ("state machine worker (apply)", True, "openraft::core::sm::worker::Worker"),
    ("group commit", True, "cookie_crud::write::group_commit"),
    ("forwarder", True, "cookie_crud::write::forward"),
    ("Raft RPCs served", False, "cookie_crud::http::raft_rpc"),
    ("peer RPCs served", False, "cookie_crud::http::peer_rpc"),
    ("HTTP serving (both listeners)", False, "cookie_crud::http::server::serve"),
]
# Threads of their own, by name: serial where there is one per node.
SERIAL_THREADS = {"wal-flush", "state-flush", "snapshot-build", "wal-zeros"}
HEADER = re.compile(r"^(\S.*?)\s+(\d+)/(\d+)\s")


def classify(comm, frames):
    for name, _, marker in TASKS:
        if any(marker in f for f in frames):
            return name
    if comm == "tokio-rt-worker":
        return "runtime: scheduler, I/O driver, other tasks"
    return "thread " + comm


def samples(lines):
    """(pid, comm, frames) per sample."""
    head, frames = None, []
    for line in lines:
        if not line.strip():
            if head:
                yield head[0], head[1], frames
            head, frames = None, []
        elif line[0] not in " \t":
            m = HEADER.match(line)
            head = (m.group(2), m.group(1)) if m else None
            frames = []
        else:
            frames.append(line.strip())
    if head:
        yield head[0], head[1], frames


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--secs", type=float, required=True)
    ap.add_argument("--freq", type=float, required=True)
    ap.add_argument("--leader", default="")
    args = ap.parse_args()
    per = collections.Counter()
    nodes = collections.Counter()
    for pid, comm, frames in samples(sys.stdin):
        per[(pid, classify(comm, frames))] += 1
        nodes[pid] += 1
    if not nodes:
        sys.exit("no samples")
    scale = 1.0 / (args.secs * args.freq)
    pids = sorted(nodes, key=lambda p: (p != args.leader, int(p)))
    names = [n for n, _, _ in TASKS]
    rest = sorted({c for _, c in per} - set(names))
    serial = {n for n, s, _ in TASKS if s} | {"thread " + t for t in SERIAL_THREADS}
    label = lambda p: f"{p} (leader)" if p == args.leader else p
    width = max(len(n) for n in names + rest) + 2
    print(f"{'CPU, cores':<{width}}" + "".join(f"{label(p):>16}" for p in pids))
    for name in names + rest:
        row = [per[(p, name)] * scale for p in pids]
        if max(row) < 0.005:
            continue
        mark = " *" if name in serial else ""
        print(f"{name + mark:<{width}}" + "".join(f"{v:16.3f}" for v in row))
    print(f"{'node, all':<{width}}" + "".join(f"{nodes[p] * scale:16.3f}" for p in pids))
    print("* serial: one task or thread per node (replication: one per follower, summed)")
    busiest = max(
        ((per[(p, n)] * scale / (2 if n == "replication streams" else 1), n, p)
         for p in pids for n in serial),
        default=None,
    )
    if busiest:
        v, n, p = busiest
        print(f"busiest serial stage: {n} on {label(p)}, {v:.3f} of a core")


if __name__ == "__main__":
    main()
