#!/usr/bin/env bash
# Scaling with CPU where there are no cores to pin: the issue's target "from 2 to 4 cores
# per node, creates grow at least as much as etcd's", measured on a small machine in the
# two ways it allows (docs/benchmarks.md, "Scaling with CPU, on two cores"):
#   quota:<cores>  every server process in a CPU cgroup of its own, limited to that many
#                  cores' CPU time (`BENCH_CPU_QUOTA`, benches/support/cpu_quota.rs). Time,
#                  not parallelism: a stage that needs a core to itself does not show; one
#                  that waits on a round trip or a disk, whatever the CPU, does.
#   cpus:<list>    the whole bench (3 nodes and the load generator) on those CPUs
#                  (`taskset -c`): parallelism, shared with the load generator.
# For each step it runs `cargo bench --bench load` for creates (cookie-crud, then etcd,
# 3 nodes each), ROUNDS times in ABBA order so that a host that drifts during the run
# weighs on both ends alike, and prints each system's growth from the first step to the
# last, per client count, and the ratio of the two. Quotas need root (or a delegated
# cgroup); etcd comes from `make bench` (Debian's etcd-server).
#
#   benches/cores.sh                                  # STEPS="quota:0.25 quota:0.5" ROUNDS=2
#   STEPS="cpus:0 cpus:0-1" ROUNDS=4 LOAD_SECS=15 benches/cores.sh
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${STEPS:-quota:0.25 quota:0.5}
ROUNDS=${ROUNDS:-2}
export LOAD_SECS=${LOAD_SECS:-10}
export LOAD_CLIENTS=${LOAD_CLIENTS:-16 64 256}
export LOAD_ONLY=creates
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
echo "results in $OUT"

read -r -a steps <<<"$STEPS"
reversed=()
for ((i = ${#steps[@]} - 1; i >= 0; i--)); do reversed+=("${steps[$i]}"); done

# One step's bench, its output in $OUT/load-<step>-<round>.txt.
run_step() {
  local step=$1 round=$2 name="${1/:/-}"
  local -a env=(BENCH_LOGS="$OUT/logs-$name-$round" LOAD_PLOT="$OUT/plot-$name-$round.svg") prefix=()
  case $step in
    quota:*) env+=(BENCH_CPU_QUOTA="${step#quota:}") ;;
    cpus:*) prefix=(taskset -c "${step#cpus:}") ;;
    *) echo "STEPS: quota:<cores> or cpus:<list>, not $step" >&2; exit 2 ;;
  esac
  echo "round $((round + 1)), $step: $(date +%T)"
  env "${env[@]}" "${prefix[@]}" cargo bench --bench load \
    >"$OUT/load-$name-$round.txt" 2>"$OUT/load-$name-$round.err"
  grep -E '^\| creates \| [0-9]+ \| [a-z-]+ \| [0-9]' "$OUT/load-$name-$round.txt" | sed "s/^/  /"
}

cargo bench --bench load --no-run >/dev/null 2>&1 || cargo bench --bench load --no-run
for ((r = 0; r < ROUNDS; r++)); do
  if ((r % 2 == 0)); then order=("${steps[@]}"); else order=("${reversed[@]}"); fi
  for s in "${order[@]}"; do run_step "$s" "$r"; done
done

python3 - "$OUT" "${steps[@]}" <<'EOF'
import glob, re, statistics, sys
out, steps = sys.argv[1], [s.replace(":", "-") for s in sys.argv[2:]]
rate, p99, throttled, busy = {}, {}, {}, {}
def cpus(step):  # how many CPUs a cpus:<list> step allows
    if not step.startswith("cpus-"):
        return None
    n = 0
    for part in step[5:].split(","):
        a, _, b = part.partition("-")
        n += int(b or a) - int(a) + 1
    return n
for step in steps:
    for path in glob.glob(f"{out}/load-{step}-*.txt"):
        if not re.fullmatch(re.escape(f"{out}/load-{step}-") + r"\d+\.txt", path):
            continue
        for line in open(path):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if len(cells) >= 7 and cells[0] == "creates" and re.match(r"^[\d.]+$", cells[3]):
                key = (step, cells[2], int(cells[1]))
                rate.setdefault(key, []).append(float(cells[3]))
                p99.setdefault(key, []).append(float(cells[6]))
                if cpus(step) and len(cells) >= 14:
                    # servers' and load generator's CPU per request, times the rate
                    used = float(cells[3]) * (float(cells[11]) + float(cells[13])) / 1e6
                    busy.setdefault(key, []).append(used / cpus(step))
            elif len(cells) == 4 and cells[0] == "creates" and cells[3].endswith("%"):
                throttled.setdefault((step, cells[2], int(cells[1])), []).append(cells[3])
lo, hi = steps[0], steps[-1]
print(f"\ncreates/s (mean of the rounds; each round's p99 in ms), {lo} -> {hi}")
print("| clients | cookie-crud | etcd | cookie-crud growth | etcd growth | growth, cookie-crud/etcd | p99 cookie-crud | p99 etcd |")
print("|---|---|---|---|---|---|---|---|")
fmt = lambda x, f: f.format(x) if x is not None else "-"
for c in sorted({k[2] for k in rate}):
    m = lambda st, s: statistics.mean(rate[(st, s, c)]) if (st, s, c) in rate else None
    p = lambda st, s: "/".join(f"{x:.1f}" for x in p99.get((st, s, c), [])) or "-"
    cc, et = (m(lo, "cookie-crud"), m(hi, "cookie-crud")), (m(lo, "etcd"), m(hi, "etcd"))
    gc = cc[1] / cc[0] if all(cc) else None
    ge = et[1] / et[0] if all(et) else None
    print(f"| {c} | {fmt(cc[0], '{:.0f}')} -> {fmt(cc[1], '{:.0f}')} | {fmt(et[0], '{:.0f}')} -> {fmt(et[1], '{:.0f}')} "
          f"| {fmt(gc, '{:.2f}x')} | {fmt(ge, '{:.2f}x')} | **{fmt(gc / ge if gc and ge else None, '{:.2f}')}** "
          f"| {p(lo, 'cookie-crud')} -> {p(hi, 'cookie-crud')} | {p(lo, 'etcd')} -> {p(hi, 'etcd')} |")
if busy:
    print("\nShare of the step's CPUs busy (servers and load generator, from their CPU per request):")
    for key in sorted(busy):
        print(f"  {key[0]} {key[1]} {key[2]} clients: {statistics.mean(busy[key]):.0%}")
if throttled:
    print("\nCPU periods in which the busiest node ran out of quota, each round:")
    for key in sorted(throttled):
        print(f"  {key[0]} {key[1]} {key[2]} clients: {' '.join(throttled[key])}")
EOF
