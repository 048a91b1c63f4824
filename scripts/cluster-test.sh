#!/usr/bin/env bash
# Black-box check of a running local cluster (make cluster-start), in the style of the
# original test_cluster.sh: data written on one node is served by every node, updates and
# deletes are seen everywhere, and the cluster survives losing its leader.
set -uo pipefail
cd "$(dirname "$0")/.."
PASS=0
FAIL=0
RUN_ID="ct-$$-$(date +%s)"
# shellcheck source=scripts/tls-mode.sh
. scripts/tls-mode.sh
url() { echo "$(scheme)://127.0.0.1:$((8080 + $1))"; }

ok()   { PASS=$((PASS + 1)); echo "  PASS: $1"; }
bad()  { FAIL=$((FAIL + 1)); echo "  FAIL: $1"; }
check() { if [ "$2" = "$3" ]; then ok "$1"; else bad "$1 (expected $3, got $2)"; fi; }

# request METHOD NODE PATH [BODY] [extra curl args...] -> sets CODE and BODY
request() {
  local method=$1 node=$2 path=$3 data=${4:-}
  shift 4 2>/dev/null || shift $#
  local out
  if [ -n "$data" ]; then
    out=$(curl -s -m 10 -w '\n%{http_code}' -X "$method" -H 'Content-Type: application/json' "$@" -d "$data" "$(url "$node")$path")
  else
    out=$(curl -s -m 10 -w '\n%{http_code}' -X "$method" "$@" "$(url "$node")$path")
  fi
  CODE=${out##*$'\n'}
  BODY=${out%$'\n'*}
}

field() { python3 -c 'import json,sys; v=json.loads(sys.argv[1]); print(eval("v"+sys.argv[2]))' "$1" "$2" 2>/dev/null; }

leader_node() {
  for i in 1 2 3; do
    if curl -sf -m 1 "$(url "$i")/health" 2>/dev/null | grep -q '"role":"leader"'; then echo "$i"; return; fi
  done
}

wait_for_leader_except() {
  local gone=$1
  for _ in $(seq 1 150); do
    for i in 1 2 3; do
      [ "$i" = "$gone" ] && continue
      if curl -sf -m 1 "$(url "$i")/health" 2>/dev/null | grep -q '"role":"leader"'; then echo "$i"; return 0; fi
    done
    sleep 0.2
  done
  return 1
}

echo "1. Health checks"
for i in 1 2 3; do
  request GET "$i" /health
  check "node$i /health" "$CODE" 200
done
for i in 1 2 3; do
  request GET "$i" /ready
  check "node$i /ready" "$CODE" 200
done

echo "2. Data synchronization: create on node1, read on node2 and node3"
ID="$RUN_ID-a"
request POST 1 /cookies "{\"cookie\":\"$ID\",\"user_id\":1001,\"note\":\"hello\"}"
check "create on node1" "$CODE" 201
for i in 2 3; do
  request GET "$i" "/cookies/$ID"
  check "linearizable read on node$i" "$CODE" 200
  check "node$i returns the record" "$(field "$BODY" '["note"]')" hello
done

echo "3. Update on node2, verify on node1 and node3"
request PUT 2 "/cookies/$ID" '{"note":"updated","extra":7}'
check "update on node2" "$CODE" 200
for i in 1 3; do
  request GET "$i" "/cookies/$ID"
  check "node$i sees the update" "$(field "$BODY" '["note"]')" updated
  check "node$i keeps the other fields" "$(field "$BODY" '["user_id"]')" 1001
done

echo "3b. Cache: status, statistics, cluster status, invalidation across nodes"
for i in 1 2 3; do
  request GET "$i" /cache
  check "node$i /cache" "$CODE" 200
done
check "cache_stats present" "$(field "$BODY" '["cache_stats"]["hit_rate"] >= 0')" True
check "cluster_status lists the two other nodes" "$(field "$BODY" '["cluster_status"]["cluster_nodes"]')" "['node1', 'node2']"
check "node_statuses has both peers ok" "$(field "$BODY" '["node_statuses"]["node1"]["status"] + "," + v["node_statuses"]["node2"]["status"]')" "ok,ok"
curl -s -m 5 -o /dev/null "$(url 3)/cookies/$ID"
HITS=$(curl -s -m 5 "$(url 3)/cache" | python3 -c 'import json,sys; print(json.load(sys.stdin)["cache_stats"]["hits"])')
XC=$(curl -s -m 5 -D - -o /dev/null "$(url 3)/cookies/$ID" | tr -d '\r' | awk -F': ' 'tolower($1)=="x-cache"{print $2}')
check "second read on node3 is a cache HIT" "$XC" HIT
HITS2=$(curl -s -m 5 "$(url 3)/cache" | python3 -c 'import json,sys; print(json.load(sys.stdin)["cache_stats"]["hits"])')
check "node3 hit counter grew" "$((HITS2 - HITS))" 1
request PUT 1 "/cookies/$ID" '{"note":"invalidated"}'
check "update on node1" "$CODE" 200
request GET 3 "/cookies/$ID"
check "node3 sees the update (its cached copy was invalidated)" "$(field "$BODY" '["note"]')" invalidated
request DELETE 2 /cache
check "DELETE /cache on node2" "$(field "$BODY" '["message"]')" "Cache cleared successfully"

echo "4. Versions: a stale If-Match is refused on any node"
ETAG=$(curl -s -m 5 -D - -o /dev/null "$(url 3)/cookies/$ID" | tr -d '\r' | awk -F': ' 'tolower($1)=="etag"{print $2}')
request PUT 3 "/cookies/$ID" '{"note":"cas"}' -H "If-Match: $ETAG"
check "If-Match with the current version" "$CODE" 200
request PUT 1 "/cookies/$ID" '{"note":"lost"}' -H "If-Match: $ETAG"
check "If-Match with a stale version" "$CODE" 412

echo "5. Duplicate ids and deletes, from followers"
request POST 3 /cookies "{\"cookie\":\"$ID\",\"user_id\":1}"
check "duplicate create on node3" "$CODE" 409
request DELETE 3 "/cookies/$ID"
check "delete on node3" "$CODE" 200
for i in 1 2; do
  request GET "$i" "/cookies/$ID"
  check "node$i no longer has it" "$CODE" 404
done

echo "6. Load balancing: writes on every node, lists everywhere"
for i in 1 2 3; do
  request POST "$i" /cookies "{\"cookie\":\"$RUN_ID-lb$i\",\"user_id\":$i}"
  check "create on node$i" "$CODE" 201
done
for i in 1 2 3; do
  request GET "$i" /cookies
  n=$(python3 -c 'import json,sys; print(sum(1 for c in json.loads(sys.argv[1])["cookies"] if c["cookie"].startswith(sys.argv[2]+"-lb")))' "$BODY" "$RUN_ID")
  check "node$i lists all three" "$n" 3
done

echo "6b. Metrics collection: Prometheus format on every node"
for i in 1 2 3; do
  M=$(curl -s -m 5 "$(url "$i")/metrics")
  if grep -q '^# TYPE http_requests_total counter' <<<"$M" && grep -q '^cache_hits_total ' <<<"$M" \
     && grep -q 'http_request_duration_seconds_bucket{endpoint="/cookies/{cookie}"' <<<"$M"; then
    ok "node$i /metrics"
  else
    bad "node$i /metrics"
  fi
done

echo "6c. Operator CLI: cookie-crud ctl status prints every member"
CTL=(target/release/cookie-crud ctl --endpoints "$(url 1)")
if tls_on; then CTL+=(--cacert "$TLS_DIR/ca.pem"); fi
TABLE=$("${CTL[@]}" status 2>&1)
echo "$TABLE" | sed 's/^/    /'
check "ctl status shows three members" "$(grep -cE '^https?://127\.0\.0\.1:808[1-3] ' <<<"$TABLE")" 3
check "ctl status shows one leader" "$(grep -c ' leader ' <<<"$TABLE")" 1
OUT=$("${CTL[@]}" get "$RUN_ID-lb1" 2>/dev/null)
check "ctl get reads a record" "$(field "$OUT" '["cookie"]')" "$RUN_ID-lb1"

echo "7. Failure recovery: kill -9 the leader"
OLD=$(leader_node)
if [ -z "$OLD" ]; then
  bad "a leader exists"
else
  ok "leader is node$OLD"
  kill -9 "$(cat run/node$OLD.pid)"
  NEW=$(wait_for_leader_except "$OLD")
  if [ -n "$NEW" ]; then ok "new leader elected: node$NEW"; else bad "no new leader after killing node$OLD"; fi
  OTHER=$(( (OLD % 3) + 1 ))
  request POST "$OTHER" /cookies "{\"cookie\":\"$RUN_ID-after\",\"user_id\":9}"
  check "write after failover (via node$OTHER)" "$CODE" 201
  scripts/cluster.sh start-node "$OLD" >/dev/null
  caught_up=""
  for _ in $(seq 1 150); do
    request GET "$OLD" "/cookies/$RUN_ID-after" "" "-G" "--data-urlencode" "consistency=local"
    if [ "$CODE" = 200 ]; then caught_up=yes; break; fi
    sleep 0.2
  done
  check "restarted node$OLD caught up (local read)" "${caught_up:-no}" yes
  scripts/cluster.sh wait-ready 30 >/dev/null && ok "cluster ready again" || bad "cluster ready again"
fi

TOTAL=$((PASS + FAIL))
echo
echo "Tests Passed: $PASS"
echo "Tests Failed: $FAIL"
echo "Total Tests: $TOTAL"
if [ "$FAIL" -eq 0 ]; then echo "All tests passed! Cluster is working correctly."; else exit 1; fi
