#!/usr/bin/env python3
"""What one WAL append costs the disk: a 4 KB write and its fdatasync, in a file that grows
with each append, in one preallocated with fallocate, and in one already written with
zeros (what raft/src/log/wal.rs keeps ahead of its records). docs/benchmarks.md, "Zeros
ahead of the log" (issue 16), has the numbers and why they differ.

    python3 benches/wal-sync.py [DIR] [APPENDS]

DIR must be on the disk to measure (default: target/, the data directories' disk in the
benches); APPENDS per mode, default 2000. Each mode runs twice, interleaved.
"""
import os
import sys
import tempfile
import time

RECORD = b"x" * 4000


def run(directory, mode, appends):
    fd, path = tempfile.mkstemp(dir=directory, prefix=f"wal-sync-{mode}-")
    try:
        size = appends * len(RECORD) + 4096
        if mode == "zeros":
            os.write(fd, b"\0" * size)
            os.fsync(fd)
            os.lseek(fd, 0, os.SEEK_SET)
        elif mode == "fallocate":
            os.posix_fallocate(fd, 0, size)
            os.fsync(fd)
        took = []
        for _ in range(appends):
            t = time.perf_counter()
            os.write(fd, RECORD)
            os.fdatasync(fd)
            took.append(time.perf_counter() - t)
    finally:
        os.close(fd)
        os.remove(path)
    took.sort()
    ms = lambda q: took[min(int(len(took) * q), len(took) - 1)] * 1e3
    print(
        f"{mode:>9}: p50 {ms(0.5):.3f} ms, p90 {ms(0.9):.3f}, p99 {ms(0.99):.3f}, "
        f"mean {sum(took) / len(took) * 1e3:.3f}"
    )


def main():
    directory = sys.argv[1] if len(sys.argv) > 1 else "target"
    appends = int(sys.argv[2]) if len(sys.argv) > 2 else 2000
    os.makedirs(directory, exist_ok=True)
    for _ in range(2):
        for mode in ("grow", "fallocate", "zeros"):
            run(directory, mode, appends)


if __name__ == "__main__":
    main()
