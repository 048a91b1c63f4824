#!/usr/bin/env python3
"""Write a cookie-crud backup file of N synthetic records of about 200 bytes, without a
cluster: the fastest way to a large state (restore it, then join nodes to it).

    benches/support/make_backup.py 1000000 /tmp/big.backup

The format is raft/src/sm/backup.rs's: the magic line, a JSON header line, then the body in
the snapshot format (bincode 2 standard: varint lengths), rows in id order as a table scan
gives them. `cookie-crud restore` checks every row and the checksum, so a mistake here is
refused, never restored.
"""
import hashlib
import json
import struct
import sys
import time


def varint(n):
    if n < 251:
        return bytes([n])
    if n < 1 << 16:
        return b"\xfb" + struct.pack("<H", n)
    if n < 1 << 32:
        return b"\xfc" + struct.pack("<I", n)
    return b"\xfd" + struct.pack("<Q", n)


def blob(b):
    return varint(len(b)) + b


def main():
    n, path = int(sys.argv[1]), sys.argv[2]
    now = int(time.time())
    pad = "x" * 120
    body_path = path + ".body"
    h = hashlib.sha256()
    size = 0
    with open(body_path, "wb") as body:
        def put(b):
            nonlocal size
            h.update(b)
            body.write(b)
            size += len(b)

        put(varint(n))
        chunk = []
        for i in range(n):
            cid = "rec-%09d" % i
            created = now - n + i
            obj = {"cookie": cid, "user_id": i % 1000 + 1, "note": pad,
                   "created": str(created), "last_used": str(created)}
            js = json.dumps(obj, separators=(",", ":")).encode()
            # Record: version (u64 BE), created (i64 BE), the JSON.
            rec = struct.pack(">Qq", i + 1, created) + js
            chunk.append(blob(cid.encode()) + blob(rec))
            if len(chunk) == 10000:
                put(b"".join(chunk))
                chunk = []
        put(b"".join(chunk))
        put(varint(0))  # no idempotency keys
        put(b"\x00" + varint(0))  # registry: no cluster id, no members
    header = {"format": 1, "cluster_id": None, "index": n + 1, "term": 1, "records": n,
              "idempotency_keys": 0, "body_bytes": size, "sha256": h.hexdigest(),
              "node": "make_backup.py", "created_ms": now * 1000, "version": "synthetic"}
    with open(path, "wb") as out, open(body_path, "rb") as body:
        out.write(b"COOKIE-CRUD-BACKUP\n")
        out.write(json.dumps(header, separators=(",", ":")).encode() + b"\n")
        while True:
            b = body.read(1 << 20)
            if not b:
                break
            out.write(b)
    import os
    os.remove(body_path)
    print(json.dumps(header))


if __name__ == "__main__":
    main()
