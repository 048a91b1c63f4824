#!/usr/bin/env python3
"""How long writes wait when the leader is stopped on purpose (SIGTERM: a rolling restart),
or, with --remove, removed from the membership while it runs (DELETE /cluster/members/{id}
sent to another node).

Each round starts a 3-node cluster with the default Raft timings, runs WRITERS clients that
create records one at a time (each retried on a 503 or a closed port at the next node, with
the same Idempotency-Key, as behind a load balancer), sends the leader SIGTERM once the
writes are flowing, and reports:

- the handover: from the signal to the old leader's exit (it exits once another node leads);
- the gap: the longest time between two acknowledged writes around the signal;
- the slowest write, first try to acknowledgement;
- the slowest read: READERS clients read one record (linearizable) from the old leader, a
  closed port sending them to the next node and a 503 retried, as for the writes.

    python3 benches/handover.py --bin target/release/cookie-crud --rounds 5 [--remove]

With --remove, "handover" is the DELETE's answer time, and the readers read from a node
that stays (a removed node is no longer sent the log, so its reads wait out their timeout).

Run it on two builds to compare them (the same machine, one after the other).
"""
import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request


def config(d, i, base):
    nodes = ",\n".join(
        f'  {{ id = {j}, addr = "127.0.0.1:{base + j}", peer_addr = "127.0.0.1:{base + 10 + j}" }}'
        for j in (1, 2, 3))
    path = os.path.join(d, f"node{i}.toml")
    with open(path, "w") as f:
        f.write(f'node_id = {i}\nlisten = "127.0.0.1:{base + i}"\n'
                f'peer_listen = "127.0.0.1:{base + 10 + i}"\ndata_dir = "{d}/node{i}"\n'
                f'cluster_secret = "handover-bench"\nlog_level = "info"\nnodes = [\n{nodes}\n]\n')
    return path


def get(url, timeout=1.0):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


def post(url, body, key, timeout=10.0):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"content-type": "application/json",
                                          "idempotency-key": key})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def leader(base):
    for i in (1, 2, 3):
        try:
            if get(f"http://127.0.0.1:{base + i}/health")["role"] == "leader":
                return i
        except (OSError, ValueError, KeyError):
            pass
    return None


def read(url, timeout=10.0):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def reader(first, base, stop, slowest, retried):
    node = first
    while not stop.is_set():
        began = time.monotonic()
        while True:
            try:
                status = read(f"http://127.0.0.1:{base + node}/cookies/probe")
            except OSError:
                node = node % 3 + 1
                time.sleep(0.01)
                continue
            if status == 200:
                slowest[0] = max(slowest[0], time.monotonic() - began)
                break
            retried[0] += 1
            time.sleep(0.05)


def writer(k, base, stop, acks, slowest, failures):
    n = 0
    while not stop.is_set():
        n += 1
        key = f"w{k}-{n}"
        node = (k + n) % 3 + 1
        began = time.monotonic()
        while True:
            try:
                status = post(f"http://127.0.0.1:{base + node}/cookies",
                              {"cookie": key, "user_id": 1}, key)
            except OSError:
                node = node % 3 + 1  # a closed port: the next node
                time.sleep(0.01)
                continue
            if status == 201:
                now = time.monotonic()
                acks.append(now)
                slowest[0] = max(slowest[0], now - began)
                break
            if status == 503:
                time.sleep(0.05)
                continue
            failures.append(f"{key}: {status}")
            break


def remove_member(base, via, node):
    req = urllib.request.Request(f"http://127.0.0.1:{base + via}/cluster/members/{node}",
                                 method="DELETE")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def one_round(binary, base, writers, readers, remove):
    d = tempfile.mkdtemp(prefix="handover-")
    procs = {}
    try:
        for i in (1, 2, 3):
            log = open(os.path.join(d, f"node{i}.log"), "w")
            procs[i] = subprocess.Popen([binary, "--config", config(d, i, base)],
                                        stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while leader(base) is None:
            if time.monotonic() > deadline:
                raise SystemExit("no leader in 30 s")
            time.sleep(0.1)
        stop, acks, slowest, failures = threading.Event(), [], [0.0], []
        first = leader(base)
        if post(f"http://127.0.0.1:{base + first}/cookies", {"cookie": "probe", "user_id": 1},
                "probe") != 201:
            raise SystemExit("cannot create the record the readers read")
        slowest_read, read_retries = [0.0], [0]
        threads = [threading.Thread(target=writer, args=(k, base, stop, acks, slowest, failures))
                   for k in range(writers)]
        read_at = first % 3 + 1 if remove else first
        threads += [threading.Thread(target=reader,
                                     args=(read_at, base, stop, slowest_read, read_retries))
                    for _ in range(readers)]
        for t in threads:
            t.start()
        time.sleep(2)
        old = leader(base)
        slowest[0] = slowest_read[0] = 0.0
        read_retries[0] = 0
        signalled = time.monotonic()
        if remove:
            status = remove_member(base, read_at if read_at != old else old % 3 + 1, old)
            if status != 200:
                raise SystemExit(f"removing node {old} answered {status}")
        else:
            procs[old].send_signal(signal.SIGTERM)
            procs[old].wait(timeout=60)
        exited = time.monotonic()
        time.sleep(3)
        stop.set()
        for t in threads:
            t.join()
        around = sorted(a for a in acks if a >= signalled - 1)
        gap = max((b - a for a, b in zip(around, around[1:])), default=0.0)
        with open(os.path.join(d, f"node{old}.log")) as f:
            transferred = "handing leadership to node" in f.read()
        return (exited - signalled, gap, slowest[0], slowest_read[0], len(failures),
                read_retries[0], transferred)
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()
        shutil.rmtree(d, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", default="target/release/cookie-crud")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--writers", type=int, default=4)
    ap.add_argument("--readers", type=int, default=2)
    ap.add_argument("--base-port", type=int, default=18900)
    ap.add_argument("--remove", action="store_true",
                    help="remove the leader from the membership instead of stopping it")
    args = ap.parse_args()
    results = []
    for r in range(args.rounds):
        (handover, gap, slowest, slowest_read, failed, read_503s,
         transferred) = one_round(args.bin, args.base_port, args.writers, args.readers,
                                  args.remove)
        results.append((handover, gap, slowest, slowest_read))
        print(f"round {r + 1}: handover {handover * 1000:.0f} ms, gap {gap * 1000:.0f} ms, "
              f"slowest write {slowest * 1000:.0f} ms, {failed} failed, slowest read "
              f"{slowest_read * 1000:.0f} ms, {read_503s} reads retried"
              f"{', transferred' if transferred else ''}", flush=True)
    for name, k in (("handover", 0), ("gap", 1), ("slowest write", 2), ("slowest read", 3)):
        values = [r[k] * 1000 for r in results]
        print(f"{name}: median {statistics.median(values):.0f} ms, "
              f"max {max(values):.0f} ms over {len(values)} rounds")


if __name__ == "__main__":
    sys.exit(main())
