#!/usr/bin/env python3
"""Creates on many cores: 3 cookie-crud nodes against 3 etcd nodes, each node pinned to
M cores (taskset), wrk on the cores left, the same ~200-byte records as
../shared/bench/many-core.sh. It asks what that script cannot: how each system's creates
grow from 2 to 4 cores per node, which group-commit setting changes that, and where the
leader's CPU goes (per thread) while it does.

    PLAN="2:etcd 2:cc 4:etcd 4:cc 4:cc:pipe2"   blocks, run in this order
    D=10          seconds per phase
    CLIENTS="16 64 256"  the phases of a block, by clients
    BIN_DIR=dir   cookie-crud, etcd and wrk (and wrk's libraries, see LIB_DIR)
    LIB_DIR=dir   libraries for wrk only (libluajit), where the host lacks them
    LUA_DIR=dir   cc_put.lua and etcd_put.lua (default: ../shared/bench)
    NOPIN=1       no taskset (a small machine: a dry run)
    OUT=dir       summary.txt and the raw wrk output
    KEEP_LOGS=1   the nodes' logs into OUT too
    WAL_ROOT=dir  for the `waldir` variant: each node's WAL in dir/<node> (storage.wal_dir),
                  e.g. a filesystem on another device

A cookie-crud block's variant adds a `[batch]` or `[raft]` table to each node's config (VARIANTS).
Nodes inherit COOKIE_CRUD_* from the environment (the cluster secret).
"""
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

VARIANTS = {
    "": "",
    # The WAL apart from the data directory, under $WAL_ROOT (start_cc writes the table).
    "waldir": "",
    # The CPU gate for a second batch in flight off: what a node did where /proc/stat
    # counts nothing (gVisor) before the idle signal fell back to the node's own CPU time.
    "gateoff": "[batch]\npipeline_idle_above = 1.0\n",
    # A second batch in flight at any load.
    "pipe2": "[batch]\npipeline_below = 1000000\n",
    # Four.
    "pipe4": "[batch]\nmax_inflight = 4\npipeline_below = 1000000\n",
    # No wait for a batch's writers to come back before the next batch goes.
    "noregather": "[batch]\nregather_us = 0\n",
    # A second batch, and its AppendEntries at once rather than after the first has been
    # out a millisecond: rounds that overlap where cores are not short.
    "overlap": "[raft]\npipeline_after_us = 0\n[batch]\npipeline_below = 1000000\n",
    # No snapshot builds during the phases (the log grows instead).
    "nosnap": "[raft]\nsnapshot_logs = 1000000000\n",
    # Only the AppendEntries at once: the batches in flight as by default.
    "sendnow": "[raft]\npipeline_after_us = 0\n",
    # The AppendEntries hold at any load, CPU to spare or not (before the thirty-fifth pass).
    "holdsend": "[raft]\nsend_at_once_when_idle = false\n",
    # CPU counted as spare at a tenth of it idle: on a small machine, what the default does
    # where cores are to spare (batches in flight and AppendEntries at once, at any load).
    "spare10": "[batch]\npipeline_idle_above = 0.1\n",
    # The leader's own fsync before its followers' rounds, as openraft 0.9 orders them.
    "serial": "[raft]\nparallel_leader_append = false\n",
    # A follower waits for each fsync before it takes the next append, as openraft 0.9 does.
    "syncfollow": "[raft]\nparallel_follower_append = false\n",
    "overlap-syncfollow": "[raft]\npipeline_after_us = 0\nparallel_follower_append = false\n"
    "[batch]\npipeline_below = 1000000\n",
    # One async worker thread per node: fewer hand-offs between threads, no parallel CPU.
    "w1": "worker_threads = 1\n",
    # Four batches and four AppendEntries per follower in flight, at any load.
    "deep": "[raft]\nappends_in_flight = 4\n[batch]\nmax_inflight = 4\npipeline_below = 1000000\n",
}
CLIENTS = [int(c) for c in os.environ.get("CLIENTS", "16 64 256").split()]

D = int(os.environ.get("D", "10"))
OUT = os.environ.get("OUT", "/tmp/mcw")
KEEP_LOGS = bool(os.environ.get("KEEP_LOGS"))
NOPIN = bool(os.environ.get("NOPIN")) or shutil.which("taskset") is None
HERE = os.path.dirname(os.path.abspath(__file__))
LUA = os.environ.get("LUA_DIR", os.path.join(HERE, "..", "..", "shared", "bench"))
BIN = os.environ.get("BIN_DIR", "")
LIB = os.environ.get("LIB_DIR", "")
TICK = os.sysconf("SC_CLK_TCK")
os.makedirs(OUT, exist_ok=True)
SUMMARY = open(os.path.join(OUT, "summary.txt"), "a")


def log(*a):
    line = " ".join(str(x) for x in a)
    print(line, flush=True)
    SUMMARY.write(line + "\n")
    SUMMARY.flush()


def exe(name):
    path = os.path.join(BIN, name) if BIN else shutil.which(name)
    if not path or not os.path.exists(path):
        sys.exit(f"{name}: not found (BIN_DIR or PATH)")
    return path


def pinned(cpus, argv):
    return argv if NOPIN else ["taskset", "-c", cpus] + argv


def cpus_of(mode, i):
    a = (i - 1) * mode
    return f"{a}-{a + mode - 1}"


def wrk_cpus(mode):
    return f"{3 * mode}-{os.cpu_count() - 1}"


def http(url, body=None, timeout=2):
    data = body.encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.read().decode()
    except Exception as e:  # a node not up yet reads as no answer
        return f"ERR {e}"


def stat_ticks(raw):
    """utime + stime of a /proc/<pid>/stat (or task stat) line: the fields after the name."""
    f = raw.rsplit(")", 1)[1].split()
    return int(f[11]) + int(f[12])


def ticks(pid):
    try:
        return stat_ticks(open(f"/proc/{pid}/stat").read())
    except (OSError, IndexError, ValueError):
        return 0


def threads(pid):
    """Each thread's name and CPU ticks so far, by thread id."""
    out = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            raw = open(f"/proc/{pid}/task/{tid}/stat").read()
        except OSError:
            continue
        out[tid] = (raw[raw.index("(") + 1 : raw.rindex(")")], stat_ticks(raw))
    return out


def thread_delta(a, b):
    """CPU ticks between two samples, summed by thread name: (total, name, threads, busiest)."""
    by = {}
    for tid, (name, t) in b.items():
        d = t - a.get(tid, (name, 0))[1]
        total, n, top = by.get(name, (0, 0, 0))
        by[name] = (total + d, n + 1, max(top, d))
    return sorted(((t, k, n, top) for k, (t, n, top) in by.items()), reverse=True)


def wrk(mode, name, conns, url, script, scrape):
    """One wrk phase; with `scrape`, the node's metrics at its middle too ("mid")."""
    t = max(1, min(8, os.cpu_count() - 3 * mode)) if not NOPIN else 2
    t = min(t, conns)  # wrk needs a connection per thread
    env = dict(os.environ)
    if LIB:
        env["LD_LIBRARY_PATH"] = LIB
    argv = [exe("wrk"), f"-t{t}", f"-c{conns}", f"-d{D}s", "--latency", "-s", script, url]
    p = subprocess.Popen(pinned(wrk_cpus(mode), argv), stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, env=env)
    time.sleep(D / 2)
    mid = metric_lines(url) if scrape else {}
    text = p.communicate()[0]
    open(os.path.join(OUT, name), "w").write(text)
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", text, re.M)
    lat = dict(re.findall(r"^\s+(50|90|99)%\s+(\S+)", text, re.M))
    mx = re.search(r"^\s+Latency\s+\S+\s+\S+\s+(\S+)", text, re.M)
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    errs = re.search(r"Socket errors:.*", text)
    return {
        "rps": float(rps.group(1)) if rps else 0.0,
        "p50": lat.get("50", "?"),
        "p90": lat.get("90", "?"),
        "p99": lat.get("99", "?"),
        "max": mx.group(1) if mx else "?",
        "non2xx": non2xx.group(1) if non2xx else "0",
        "errors": errs.group(0) if errs else "",
        "mid": mid,
    }


def metric_lines(url):
    text = http(url + "/metrics", timeout=5)
    # The write path's families, whole (sums, counts and buckets).
    keep = ("raft_write_", "raft_peer_rpc_seconds", "raft_log_append_seconds",
            "raft_wal_fsync_seconds", "raft_commit_seconds", "raft_apply_seconds",
            "raft_append_send_delay_seconds", "raft_apply_delay_seconds",
            "raft_append_answer_seconds", "raft_state_flush_seconds",
            "raft_apply_flush_wait_seconds", "raft_sm_flushes")
    vals = {}
    for line in text.splitlines():
        if line.startswith(keep):
            k, _, v = line.rpartition(" ")
            try:
                vals[k] = float(v)
            except ValueError:
                pass
    return vals


def wait_leader(is_leader, url, tries=150):
    """(url of the leader, its node number 1-3) once one of the nodes says it leads, or
    None after `tries` rounds 0.2 s apart. A node not up yet answers nothing: not leader."""
    for _ in range(tries):
        for i in (1, 2, 3):
            try:
                if is_leader(i):
                    return url.format(i), i
            except (ValueError, KeyError, TypeError):
                pass
        time.sleep(0.2)
    return None


def p99(m0, m1, name, labels=""):
    """The 0.99 quantile of histogram `name` (its series with `labels`, e.g. 'rpc="append",')
    between two scrapes, interpolated in its bucket as Prometheus's histogram_quantile
    does; None without observations."""
    buckets = []
    for k, v in m1.items():
        le = re.fullmatch(re.escape(name + "_bucket{" + labels) + r'le="([^"]+)"\}', k)
        if le:
            buckets.append((float(le.group(1)), v - m0.get(k, 0)))
    buckets.sort()
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = 0.99 * buckets[-1][1]
    lo, below = 0.0, 0.0
    for le, n in buckets:
        if n >= rank:
            if le == float("inf"):
                return lo
            return lo + (le - lo) * (rank - below) / (n - below) if n > below else le
        lo, below = le, n
    return lo


def summary(m0, m1, name, labels, secs):
    """Histogram `name`'s series with `labels` between two scrapes: mean, rate and p99."""
    sel = "{" + labels + "}" if labels else ""
    n = m1.get(f"{name}_count{sel}", 0) - m0.get(f"{name}_count{sel}", 0)
    t = m1.get(f"{name}_sum{sel}", 0) - m0.get(f"{name}_sum{sel}", 0)
    q = p99(m0, m1, name, labels + "," if labels else "")
    return (f"{t / n * 1e3 if n else 0:.2f}ms x{n / secs:.0f}/s"
            + (f" (p99 {q * 1e3:.1f})" if q is not None else ""))


def start_etcd(mode, tmp, tag):
    procs = []
    cluster = ",".join(f"n{i}=http://127.0.0.1:2{i}380" for i in (1, 2, 3))
    for i in (1, 2, 3):
        argv = [exe("etcd"), "--name", f"n{i}", "--data-dir", f"{tmp}/etcd{tag}{i}",
                "--listen-client-urls", f"http://127.0.0.1:2{i}379",
                "--advertise-client-urls", f"http://127.0.0.1:2{i}379",
                "--listen-peer-urls", f"http://127.0.0.1:2{i}380",
                "--initial-advertise-peer-urls", f"http://127.0.0.1:2{i}380",
                "--initial-cluster", cluster, "--initial-cluster-state", "new",
                "--initial-cluster-token", f"mcw{tag}", "--log-level", "error"]
        logf = open(f"{tmp}/etcd{tag}{i}.log", "w")
        procs.append(subprocess.Popen(pinned(cpus_of(mode, i), argv), stdout=logf, stderr=logf))
    def is_leader(i):
        d = json.loads(http(f"http://127.0.0.1:2{i}379/v3/maintenance/status", "{}"))
        return bool(d.get("leader")) and d["leader"] == d["header"]["member_id"]

    leader = wait_leader(is_leader, "http://127.0.0.1:2{}379")
    if leader:
        http(leader[0] + "/v3/kv/put", '{"key":"Zm9v","value":"YmFy"}')
    return procs, leader


def start_cc(mode, tmp, tag, variant):
    procs = []
    nodes = ", ".join(f'{{ id = {i}, addr = "127.0.0.1:808{i}" }}' for i in (1, 2, 3))
    for i in (1, 2, 3):
        conf = f"{tmp}/cc{tag}{i}.toml"
        extra = VARIANTS[variant]
        if variant == "waldir":
            wal = os.path.join(os.environ["WAL_ROOT"], f"cc{tag}{i}")
            shutil.rmtree(wal, ignore_errors=True)
            extra = f'[storage]\nwal_dir = "{wal}"\n'
        open(conf, "w").write(
            f'node_id = {i}\nlisten = "127.0.0.1:808{i}"\ndata_dir = "{tmp}/cc{tag}{i}"\n'
            f"nodes = [ {nodes} ]\nlog_level = \"warn\"\n" + extra)
        logf = open(f"{tmp}/cc{tag}{i}.log", "w")
        argv = [exe("cookie-crud"), "--config", conf]
        procs.append(subprocess.Popen(pinned(cpus_of(mode, i), argv), stdout=logf, stderr=logf))
    def is_leader(i):
        return json.loads(http(f"http://127.0.0.1:808{i}/health")).get("role") == "leader"

    leader = wait_leader(is_leader, "http://127.0.0.1:808{}")
    if leader:
        http(leader[0] + "/cookies", '{"cookie":"bench-read-key","user_id":1}')
        time.sleep(0.5)
    return procs, leader


def stop(procs):
    for p in procs:
        p.kill()
    for p in procs:
        p.wait()


def block(n, spec, tmp, results):
    parts = spec.split(":")
    mode, system, variant = int(parts[0]), parts[1], (parts[2] if len(parts) > 2 else "")
    tag = f"{n}"
    label = system + (f"-{variant}" if variant else "")
    if system == "etcd":
        procs, leader = start_etcd(mode, tmp, tag)
        script = os.path.join(LUA, "etcd_put.lua")
    else:
        procs, leader = start_cc(mode, tmp, tag, variant)
        script = os.path.join(LUA, "cc_put.lua")
    if not leader:
        log(f"block {n} m{mode} {label}: no leader; the nodes' logs end:")
        for f in sorted(os.listdir(tmp)):
            if f.endswith(".log"):
                log(f, open(os.path.join(tmp, f)).read()[-600:])
        stop(procs)
        return
    try:
        phases(n, (mode, system, label), procs, leader, script, results)
    finally:
        stop(procs)
        if KEEP_LOGS:
            for f in os.listdir(tmp):
                if f.endswith(".log"):
                    shutil.copy(os.path.join(tmp, f), os.path.join(OUT, f"b{n}_{f}"))


def phases(n, what, procs, leader, script, results):
    mode, system, label = what
    # A follower too, for its appends against its fsyncs (appends in flight to it sharing one).
    follower = f"http://127.0.0.1:808{leader[1] % 3 + 1}" if system == "cc" else None
    leader, lpid = leader[0], procs[leader[1] - 1].pid
    for c in CLIENTS:
        cpu0 = sum(ticks(p.pid) for p in procs)
        m0 = metric_lines(leader) if system == "cc" else {}
        f0 = metric_lines(follower) if follower else {}
        th0 = threads(lpid) if c == 64 else None
        t0 = time.time()
        r = wrk(mode, f"b{n}_m{mode}_{label}_c{c}", c, leader, script, system == "cc")
        secs = time.time() - t0
        cpu = (sum(ticks(p.pid) for p in procs) - cpu0) / TICK
        results.setdefault((mode, label, c), []).append(r["rps"])
        busy = cpu / secs / (3 * mode)
        extra = ""
        if system == "cc":
            m1 = metric_lines(leader)
            dc = m1.get("raft_write_batch_commands_count", 0) - m0.get("raft_write_batch_commands_count", 0)
            ds = m1.get("raft_write_batch_commands_sum", 0) - m0.get("raft_write_batch_commands_sum", 0)
            means = []
            stages = {"raft_write_queue_seconds": "queue", "raft_write_batch_seconds": "batch",
                      "raft_log_append_seconds": "log-append", "raft_wal_fsync_seconds": "fsync",
                      "raft_commit_seconds": "commit", "raft_apply_seconds": "apply",
                      "raft_append_send_delay_seconds": "send-delay",
                      "raft_apply_delay_seconds": "apply-delay",
                      "raft_state_flush_seconds": "state-flush",
                      "raft_apply_flush_wait_seconds": "flush-wait"}
            for name, short in stages.items():
                means.append(short + " " + summary(m0, m1, name, "", secs))
            for k in sorted(m1):
                if k.startswith("raft_peer_rpc_seconds_sum{") and 'rpc="append"' in k:
                    labels = k[k.index("{") + 1 : -1]
                    peer = re.search(r'peer_id="(\w+)"', labels)
                    in_flight = (m1[k] - m0.get(k, 0)) / secs
                    means.append(f"append->{peer.group(1) if peer else labels} "
                                 + summary(m0, m1, "raft_peer_rpc_seconds", labels, secs)
                                 + f" busy {in_flight:.2f}")
            f1 = metric_lines(follower)
            fa = f1.get("raft_log_append_seconds_count", 0) - f0.get("raft_log_append_seconds_count", 0)
            ff = f1.get("raft_wal_fsync_seconds_count", 0) - f0.get("raft_wal_fsync_seconds_count", 0)
            means.append(f"follower appends {fa / secs:.0f}/s fsyncs {ff / secs:.0f}/s"
                         f" ({ff / fa if fa else 0:.2f} per append), answered in "
                         + summary(f0, f1, "raft_append_answer_seconds", "", secs)
                         + ", its fsync " + summary(f0, f1, "raft_wal_fsync_seconds", "", secs))
            behind = m1.get("raft_sm_flushes_behind_total", 0) - m0.get("raft_sm_flushes_behind_total", 0)
            flushes = m1.get("raft_sm_flushes_total", 0) - m0.get("raft_sm_flushes_total", 0)
            means.append(f"state flushes {flushes:.0f} ({behind:.0f} behind)")
            mid = r["mid"]
            extra = (f" batches/s {dc / secs:7.0f} per-batch {ds / dc if dc else 0:5.1f}"
                     f" mid-phase idle {mid.get('raft_write_cpu_idle_ratio', -1):.2f}"
                     f" allowed {mid.get('raft_write_batches_allowed', -1):.0f}"
                     f" spare {mid.get('raft_write_cpu_spare', -1):.0f}")
        log(f"m{mode} {label:12s} c{c:<4d} {r['rps']:9.0f}/s p50 {r['p50']:>8s} p90 {r['p90']:>8s}"
            f" p99 {r['p99']:>8s} max {r['max']:>8s} cpu {cpu / secs:5.2f} cores"
            f" ({busy:4.0%} of {3 * mode}){extra}"
            + (f" non2xx {r['non2xx']}" if r["non2xx"] != "0" else "")
            + (f" {r['errors']}" if r["errors"] else ""))
        if system == "cc":
            log("   leader means: " + ", ".join(means))
        if th0 is not None:
            rows = thread_delta(th0, threads(lpid))[:8]
            log("   leader threads at c64, cores (busiest one): " + ", ".join(
                f"{k} x{cnt} {t / TICK / secs:.2f} ({top / TICK / secs:.2f})"
                for t, k, cnt, top in rows))


def main():
    plan = os.environ.get("PLAN", "2:etcd 2:cc 4:etcd 4:cc").split()
    for spec in plan:
        variant = spec.split(":")[2] if spec.count(":") == 2 else ""
        if variant not in VARIANTS:
            sys.exit(f"unknown variant {variant!r} in {spec}")
        if variant == "waldir" and not os.environ.get("WAL_ROOT"):
            sys.exit("the waldir variant needs WAL_ROOT (a directory for the nodes' WALs)")
    log(f"nproc {os.cpu_count()} clk_tck {TICK} D {D}s pinned {not NOPIN} plan {' '.join(plan)}")
    stat = open("/proc/stat").read().splitlines()[:2]
    log("/proc/stat: " + " | ".join(stat))
    t0 = time.time()
    loop = "import time\nt=time.time()\nwhile time.time()-t<1.0: pass"
    ps = [subprocess.Popen(pinned("0", [sys.executable, "-c", loop])) for _ in range(2)]
    used = 0.0
    for p in ps:
        ru = os.wait4(p.pid, 0)[2]
        used += ru.ru_utime + ru.ru_stime
    wall = time.time() - t0
    log(f"affinity: two busy loops pinned to CPU 0 took {wall:.2f} s wall, "
        f"{used:.2f} s CPU ({'enforced' if wall > 1.6 else 'NOT enforced'})")
    path = os.path.join(tempfile.gettempdir(), "mcw-fsync")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    t1 = time.time()
    for _ in range(300):
        os.write(fd, b"x" * 4096)
        os.fsync(fd)
    log(f"fsync: 300 appends of 4 KiB, each fsynced: {(time.time() - t1) / 300 * 1e3:.2f} ms each")
    os.close(fd)
    os.unlink(path)
    results = {}
    tmp = tempfile.mkdtemp(prefix="mcw")
    try:
        for n, spec in enumerate(plan):
            block(n, spec, tmp, results)
            shutil.rmtree(tmp, ignore_errors=True)
            os.makedirs(tmp, exist_ok=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log("\nmean creates/s (runs)")
    labels = sorted({(k[1]) for k in results})
    modes = sorted({k[0] for k in results})
    for label in labels:
        for m in modes:
            row = [results.get((m, label, c)) for c in CLIENTS]
            if not any(row):
                continue
            log(f"  m{m} {label:12s} " + "  ".join(
                f"c{c} {sum(v) / len(v):8.0f} ({len(v)})" if v else f"c{c} n/a"
                for c, v in zip(CLIENTS, row)))
    if len(modes) == 2:
        lo, hi = modes
        mean = lambda m, l, c: (lambda v: sum(v) / len(v) if v else None)(results.get((m, l, c)))
        log(f"\ngrowth m{lo} -> m{hi} cores per node (and cookie-crud's over etcd's)")
        for label in labels:
            g = []
            for c in CLIENTS:
                a, b = mean(lo, label, c), mean(hi, label, c)
                e0, e1 = mean(lo, "etcd", c), mean(hi, "etcd", c)
                if a and b:
                    s = f"c{c} {b / a:.2f}x"
                    if e0 and e1 and label != "etcd":
                        s += f" ({b / a / (e1 / e0):.2f} of etcd's)"
                    g.append(s)
            if g:
                log(f"  {label:12s} " + "  ".join(g))
        log(f"\nat m{hi}, against etcd (same mode)")
        for label in labels:
            if label == "etcd":
                continue
            r = []
            for c in CLIENTS:
                a, e = mean(hi, label, c), mean(hi, "etcd", c)
                if a and e:
                    r.append(f"c{c} {a / e:.2f}x")
            log(f"  {label:12s} " + "  ".join(r))


if __name__ == "__main__":
    main()
