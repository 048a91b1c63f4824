#!/usr/bin/env python3
"""Reads served right after a burst of writes, when each node's background work (snapshot
builds, flushes, the repack of sm.redb once writes rest) runs beside them. The order of
../shared/bench/many-core.sh's cookie-crud half: creates at 16, 64 and 256 clients, then
linearizable reads on a follower at 64 and 256 clients, then local reads at 256. For each
read phase: reads/s, p99, and each node's CPU per read (the serving follower and the
other two apart); during the 256-client linearizable phase, the busiest threads of the
three nodes and the host's CPU split, since the repack starts about then (docs/benchmarks.md,
thirtieth pass).

    BINS="a/cookie-crud b/cookie-crud"   builds to alternate, in this order (A B B A ...)
    ROUNDS=2     how many times the order is run (reversed every other time)
    D=10         seconds per phase
    T=8          wrk threads (the script's -t8 on a 2-core host is what many-core.sh runs)
    LUA_DIR=dir  cc_put.lua and cc_get.lua (default: ../shared/bench)

Nodes inherit COOKIE_CRUD_* from the environment (the cluster secret; or, say,
COOKIE_CRUD_STORAGE__REPACK_IDLE_MS=0 to run without the repack).
"""
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
LUA = os.environ.get("LUA_DIR", os.path.join(HERE, "..", "..", "shared", "bench"))
D = int(os.environ.get("D", "10"))
T = os.environ.get("T", "8")
ROUNDS = int(os.environ.get("ROUNDS", "2"))
BINS = os.environ.get("BINS", "target/release/cookie-crud").split()


def http(url, body=None):
    req = urllib.request.Request(url, data=body and body.encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=2) as r:
            return r.read().decode()
    except Exception:  # a node not up yet reads as no answer
        return ""


def role(health):
    try:
        return json.loads(health).get("role")
    except ValueError:
        return None


def thread_ticks(pids):
    """(pid, thread name) -> CPU ticks so far, threads of one name summed."""
    out = {}
    for pid in pids:
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                raw = open(f"/proc/{pid}/task/{tid}/stat").read()
            except OSError:
                continue
            f = raw.rsplit(")", 1)[1].split()
            name = raw[raw.index("(") + 1:raw.rindex(")")].rstrip("0123456789-")
            out[(pid, name)] = out.get((pid, name), 0) + int(f[11]) + int(f[12])
    return out


def host():
    return [int(x) for x in open("/proc/stat").readline().split()[1:8]]


def wrk(url, clients, script, env=None):
    out = subprocess.run(["wrk", f"-t{T}", f"-c{clients}", f"-d{D}s", "--latency", "-s",
                          os.path.join(LUA, script), url], capture_output=True, text=True,
                         env={**os.environ, **(env or {})}).stdout
    rate = re.search(r"^Requests/sec:\s+([\d.]+)", out, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", out, re.M)
    return float(rate.group(1)) if rate else 0.0, p99.group(1) if p99 else "?"


def run(binary):
    tmp = tempfile.mkdtemp()
    procs = []
    for i in (1, 2, 3):
        conf = os.path.join(tmp, f"cc{i}.toml")
        with open(conf, "w") as f:
            f.write(f'node_id = {i}\nlisten = "127.0.0.1:808{i}"\ndata_dir = "{tmp}/d{i}"\n'
                    'nodes = [ { id = 1, addr = "127.0.0.1:8081" }, { id = 2, addr = '
                    '"127.0.0.1:8082" }, { id = 3, addr = "127.0.0.1:8083" } ]\n'
                    'log_level = "warn"\n')
        procs.append(subprocess.Popen([binary, "--config", conf], stdout=subprocess.DEVNULL,
                                      stderr=open(os.path.join(tmp, f"cc{i}.log"), "w")))
    pids = [p.pid for p in procs]
    leader = follower = None
    for _ in range(100):
        roles = {i: role(http(f"http://127.0.0.1:808{i}/health")) for i in (1, 2, 3)}
        leader = next((i for i, r in roles.items() if r == "leader"), None)
        follower = max((i for i, r in roles.items() if r == "follower"), default=None)
        if leader and follower:
            break
        time.sleep(0.3)
    try:
        if not (leader and follower):
            sys.exit(f"{binary}: no leader and follower in 30 s (logs in {tmp})")
        lead, serve = f"http://127.0.0.1:808{leader}", f"http://127.0.0.1:808{follower}"
        http(lead + "/cookies", '{"cookie":"bench-read-key","user_id":1}')
        for clients in (16, 64, 256):
            wrk(lead, clients, "cc_put.lua")
        row = [os.path.basename(os.path.dirname(binary)) or binary]
        for name, clients, env in (("lin", 64, None), ("lin", 256, None),
                                   ("local", 256, {"CONSISTENCY": "local"})):
            sample = name == "lin" and clients == 256
            t0, h0 = thread_ticks(pids), host()
            rate, p99 = wrk(serve, clients, "cc_get.lua", env)
            t1, h1 = thread_ticks(pids), host()
            reads = max(rate * D, 1)
            per = {pid: sum(v - t0.get(k, 0) for k, v in t1.items() if k[0] == pid)
                   for pid in pids}
            mine = per[pids[follower - 1]]
            others = sum(per.values()) - mine
            us = 1e6 / os.sysconf("SC_CLK_TCK") / reads
            row.append(f"{name} c{clients} {rate:8.0f}/s p99 {p99:>7}, follower {mine * us:4.1f}"
                       f" others {others * us:3.1f} us/read")
            if sample:
                dh = [b - a for a, b in zip(h0, h1)]
                total = max(sum(dh), 1)
                busiest = sorted(((v - t0.get(k, 0), k) for k, v in t1.items()), reverse=True)
                row.append("  host: user %d%% nice %d%% sys %d%% idle %d%%; busiest: %s" % (
                    100 * dh[0] // total, 100 * dh[1] // total, 100 * dh[2] // total,
                    100 * (dh[3] + dh[4]) // total,
                    ", ".join(f"{pids.index(pid) + 1}/{n} {d / D / os.sysconf('SC_CLK_TCK'):.2f}"
                              for d, (pid, n) in busiest[:6])))
        print("\n  ".join(row), flush=True)
    finally:
        for p in procs:
            p.kill()
            p.wait()
        subprocess.run(["rm", "-rf", tmp])


for r in range(ROUNDS):
    for b in (BINS if r % 2 == 0 else BINS[::-1]):
        run(b)
