#!/usr/bin/env bash
# Start, stop or clean the local 3-node cluster (config/node{1,2,3}.toml: clients on ports
# 8081-8083, peers on 9081-9083).
# Pid files and logs live in run/, data in run/data/. The nodes authenticate to each other
# with a secret made once in run/cluster-secret (mode 600) and given to them in
# COOKIE_CRUD_CLUSTER_SECRET; `clean` removes it with the data. TLS=1 starts the cluster
# with TLS instead (scripts/tls-mode.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${COOKIE_CRUD_BIN:-target/release/cookie-crud}
RUN=run
NODES=(1 2 3)

# shellcheck source=scripts/tls-mode.sh
. scripts/tls-mode.sh

alive() { [ -f "$RUN/node$1.pid" ] && kill -0 "$(cat "$RUN/node$1.pid")" 2>/dev/null; }
port() { echo $((8080 + $1)); }

# The cluster's peer secret: made on first start, kept until `clean`.
secret() {
  if [ ! -s "$RUN/cluster-secret" ]; then
    mkdir -p "$RUN"
    (umask 077 && od -An -N32 -tx1 /dev/urandom | tr -d ' \n' >"$RUN/cluster-secret")
  fi
  cat "$RUN/cluster-secret"
}

# TLS=1: certificates for 127.0.0.1 in run/tls/, made once, and the mark (tls-mode.sh).
tls_setup() {
  if [ "${TLS:-0}" = 1 ] && ! tls_on; then
    if [ ! -f "$TLS_DIR/ca.pem" ]; then
      "$BIN" certs --out "$TLS_DIR" --nodes "${#NODES[@]}" --host 127.0.0.1 --host localhost
    fi
    touch "$TLS_DIR/on"
  fi
}

# A node's config: config/node{1,2,3}.toml for the initial members; nodes added later
# (add-node) have one written in run/, joining through node 1's peer listener as a voter.
config_of() {
  if [ -f "config/node$1.toml" ]; then echo "config/node$1.toml"; else echo "$RUN/node$1.toml"; fi
}

write_joiner_config() {
  local i=$1
  mkdir -p "$RUN"
  cat >"$RUN/node$i.toml" <<TOML
# Node $i, added to the local cluster by scripts/cluster.sh add-node $i.
node_id = $i
listen = "127.0.0.1:$(port "$i")"
peer_listen = "127.0.0.1:$((9080 + i))"
data_dir = "$RUN/data/node$i"
join = "127.0.0.1:9081"
join_as = "voter"
TOML
}

start_node() {
  local i=$1
  if alive "$i"; then echo "node$i already running (pid $(cat "$RUN/node$i.pid"))"; return; fi
  mkdir -p "$RUN"
  if tls_on; then
    # Mutual TLS is the peer credential; clients get HTTPS with the same certificate.
    COOKIE_CRUD_TLS__CERT=$TLS_DIR/node$i.pem COOKIE_CRUD_TLS__KEY=$TLS_DIR/node$i.key \
    COOKIE_CRUD_TLS__PEER_CA=$TLS_DIR/ca.pem COOKIE_CRUD_TLS__PEER_CERT=$TLS_DIR/node$i.pem \
    COOKIE_CRUD_TLS__PEER_KEY=$TLS_DIR/node$i.key \
      nohup "$BIN" --config "$(config_of "$i")" >>"$RUN/node$i.log" 2>&1 </dev/null &
    echo $! >"$RUN/node$i.pid"
    echo "node$i started with TLS (pid $!, log $RUN/node$i.log)"
    return
  fi
  # Read here, not in the backgrounded command: there it would run concurrently for each
  # node, and two nodes could each make a different secret.
  local secret
  secret=$(secret)
  COOKIE_CRUD_CLUSTER_SECRET=$secret \
    nohup "$BIN" --config "$(config_of "$i")" >>"$RUN/node$i.log" 2>&1 </dev/null &
  echo $! >"$RUN/node$i.pid"
  echo "node$i started (pid $!, log $RUN/node$i.log)"
}

wait_ready() {
  local deadline=$((SECONDS + ${1:-60}))
  while [ $SECONDS -lt $deadline ]; do
    local ready=0 leader=""
    for i in "${NODES[@]}"; do
      if curl -sf -m 1 "$(scheme)://127.0.0.1:$(port "$i")/ready" >/dev/null 2>&1; then ready=$((ready + 1)); fi
      if curl -sf -m 1 "$(scheme)://127.0.0.1:$(port "$i")/health" 2>/dev/null | grep -q '"role":"leader"'; then leader=node$i; fi
    done
    if [ "$ready" -eq "${#NODES[@]}" ] && [ -n "$leader" ]; then
      echo "cluster ready: leader is $leader"
      return 0
    fi
    sleep 0.2
  done
  echo "cluster did not become ready in time; see $RUN/node*.log" >&2
  return 1
}

case "${1:-}" in
  start)
    [ -x "$BIN" ] || { echo "missing $BIN: run 'cargo build --release'" >&2; exit 1; }
    tls_setup
    for i in "${NODES[@]}"; do start_node "$i"; done
    wait_ready 60
    echo "endpoints:"
    for i in "${NODES[@]}"; do echo "  node$i  $(scheme)://127.0.0.1:$(port "$i")"; done
    if tls_on; then echo "TLS: trust $TLS_DIR/ca.pem (curl --cacert $TLS_DIR/ca.pem ...)"; fi
    ;;
  start-node) start_node "$2" ;;
  add-node)
    # A new voter: empty data, joins through node 1, promoted once caught up.
    i=${2:?usage: $0 add-node N}
    [ "$i" -ge 4 ] && [ "$i" -le 9 ] || { echo "add-node: N is 4..9 (clients 808N, peers 908N)" >&2; exit 2; }
    if tls_on; then echo "add-node: TLS clusters have certificates for nodes 1-3 only" >&2; exit 2; fi
    [ -f "$RUN/node$i.toml" ] || write_joiner_config "$i"
    start_node "$i"
    for _ in $(seq 1 300); do
      if curl -sf -m 1 "$(scheme)://127.0.0.1:8081/cluster/members" 2>/dev/null \
        | python3 -c 'import json,sys; sys.exit(0 if int(sys.argv[1]) in json.load(sys.stdin)["voters"] else 1)' "$i"; then
        echo "node$i is a voter"; exit 0
      fi
      sleep 0.2
    done
    echo "node$i did not become a voter in time; see $RUN/node$i.log" >&2; exit 1
    ;;
  remove-node)
    # Out of the membership first (through any node that answers), then stopped.
    # A node whose removal was refused or did not finish keeps running: stopping a voter
    # that is still a member takes a vote from the quorum.
    i=${2:?usage: $0 remove-node N}
    removed=0 last="no node answered"
    for j in 1 2 3 4 5 6 7 8 9; do
      [ "$j" = "$i" ] && continue
      if out=$(curl -s -m 30 -X DELETE -w '\n%{http_code}' "$(scheme)://127.0.0.1:$(port "$j")/cluster/members/$i" 2>/dev/null); then
        code=${out##*$'\n'}
        if [ "$code" = 200 ] || [ "$code" = 404 ]; then
          echo "node$i removed from the membership: ${out%$'\n'*}"
          removed=1
          break
        fi
        [ "$code" = 000 ] || last="node$j answered $code ${out%$'\n'*}"
      fi
    done
    if [ "$removed" != 1 ]; then
      echo "node$i was not removed ($last); it keeps running" >&2
      exit 1
    fi
    if alive "$i"; then kill -TERM "$(cat "$RUN/node$i.pid")"; fi
    for _ in $(seq 1 100); do alive "$i" || break; sleep 0.1; done
    rm -f "$RUN/node$i.pid"
    echo "node$i stopped; its data stays in $RUN/data/node$i until cluster-clean"
    ;;
  wait-ready) wait_ready "${2:-60}" ;;
  stop)
    for f in "$RUN"/node*.pid; do
      [ -e "$f" ] || continue
      i=${f#"$RUN"/node}; i=${i%.pid}
      case " ${NODES[*]} " in *" $i "*) ;; *) NODES+=("$i") ;; esac
    done
    for i in "${NODES[@]}"; do
      if alive "$i"; then kill -TERM "$(cat "$RUN/node$i.pid")"; fi
    done
    for i in "${NODES[@]}"; do
      for _ in $(seq 1 100); do alive "$i" || break; sleep 0.1; done
      if alive "$i"; then echo "node$i did not stop on SIGTERM, killing" >&2; kill -9 "$(cat "$RUN/node$i.pid")"; fi
      rm -f "$RUN/node$i.pid"
    done
    echo "cluster stopped"
    ;;
  clean)
    for i in "${NODES[@]}"; do
      if alive "$i"; then echo "node$i is running: make cluster-stop first" >&2; exit 1; fi
    done
    rm -rf "$RUN/data" "$RUN"/node*.log "$RUN"/node*.toml "$RUN/cluster-secret" "$TLS_DIR"
    echo "cluster data removed"
    ;;
  *) echo "usage: $0 start|stop|clean|start-node N|add-node N|remove-node N|wait-ready [SECS]" >&2; exit 2 ;;
esac
