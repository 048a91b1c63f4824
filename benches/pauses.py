#!/usr/bin/env python3
"""Pauses of the host itself, logged where benches/stalls.py reads the nodes' logs.

A thread at real-time priority (SCHED_FIFO) preempts every process of the bench, so when
it wakes late from a 1-ms sleep, what held it was not the nodes or the load generator: it
was the kernel (interrupts, softirq work run on the way back to user space) or the
hypervisor, which took the virtual CPU away. Each late wake is written as a line in the
nodes' log format, so that `stalls.py` prints it beside the slow requests it overlaps:

    python3 benches/pauses.py /tmp/logs/pauses.log --secs 40 &
    BENCH_LOGS=/tmp/logs ... LOAD_SLOW_MS=5 LOAD_PLOT=/tmp/plot.svg ... cargo bench --bench load
    python3 benches/stalls.py /tmp/plot.slow.csv /tmp/logs --min-ms 8

Needs root (or CAP_SYS_NICE) for the real-time class; without it, it says so and measures
at normal priority, where the bench's own processes delay it too.
"""
import argparse
import datetime
import os
import sys
import time


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", help="log file to write (e.g. <BENCH_LOGS dir>/pauses.log)")
    ap.add_argument("--secs", type=float, default=60.0, help="how long to watch")
    ap.add_argument("--late-ms", type=float, default=2.0, help="a wake this late is logged")
    args = ap.parse_args()

    realtime = True
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(50))
    except (PermissionError, OSError) as e:
        realtime = False
        print(f"pauses: no real-time priority ({e}); the bench's processes delay this too",
              file=sys.stderr)

    tick = 0.001
    late = args.late_ms / 1000
    wakes = logged = 0
    worst = 0.0
    with open(args.out, "w", buffering=1) as out:
        end = time.monotonic() + args.secs
        while True:
            before = time.monotonic()
            if before >= end:
                break
            time.sleep(tick)
            after = time.monotonic()
            over = after - before - tick
            wakes += 1
            worst = max(worst, over)
            if over >= late:
                logged += 1
                # When the pause began: the wake was due one tick after `before`.
                began = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(
                    seconds=over)
                stamp = began.strftime("%Y-%m-%dT%H:%M:%S.%f")
                out.write(f"{stamp}Z  WARN pauses: woke {over * 1000:.1f} ms late"
                          f"{'' if realtime else ' (normal priority)'}\n")
    print(f"pauses: {wakes} wakes in {args.secs:.0f} s, {logged} at least {args.late_ms} ms "
          f"late, the latest {worst * 1000:.1f} ms", file=sys.stderr)


if __name__ == "__main__":
    main()
