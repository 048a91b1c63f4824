# Sourced by benches/tail.sh and benches/tasks.sh: start `cargo bench --bench load` for a
# creates phase at $CLIENTS clients against cookie-crud alone, lasting $WINDOW seconds (or
# $LOAD_WINDOW, where a caller measures more than one window) plus time on both sides, in the background with its log at $OUT/load.log. Sets BENCH (its
# pid), leader (the leader's URL) and leader_pid (its process), and returns once the load
# has run 4 s.
cargo bench --bench load --no-run >/dev/null 2>&1
LOAD_SECS=$((${LOAD_WINDOW:-$WINDOW} + 14)) LOAD_CLIENTS="$CLIENTS" LOAD_ONLY="creates@$CLIENTS" ETCD=none \
  cargo bench --bench load >"$OUT/load.log" 2>&1 &
BENCH=$!

leader=""
for _ in $(seq 120); do
  leader=$(grep -o "leader http://[0-9.:]*" "$OUT/load.log" | head -1 | cut -d' ' -f2 || true)
  [ -n "$leader" ] && break
  sleep 1
done
[ -n "$leader" ] || { cat "$OUT/load.log"; echo "no leader found" >&2; exit 1; }
# The process that holds the leader's listening socket (not `ss -p`: some sandboxes do not
# show sockets' processes).
inode=$(awk -v p=":$(printf '%04X' "${leader##*:}")" '$2 ~ p"$" && $4 == "0A" {print $10}' \
  /proc/net/tcp | head -1)
leader_pid=""
for p in $(pgrep -x cookie-crud); do
  ls -l "/proc/$p/fd" 2>/dev/null | grep -q "socket:\[$inode\]" && leader_pid=$p
done
[ -n "$leader_pid" ] || { echo "no process holds the leader's socket" >&2; exit 1; }
sleep 4
