#!/usr/bin/env bash
# Cluster benchmark (issue 9), one run, side by side:
#   single   one hushd, no cluster (no listen address)
#   cluster  three managers on 127.0.0.2-4 (one etcd cluster), formed with
#            the real docker CLI (`swarm init` from hushd's flags, `swarm join`)
# It measures secret creates (hushbench, concurrency C, N creates) on the
# single node, on the cluster through the leader's socket, through a
# follower's, and spread over all three; then REPS failovers: the leader is
# killed with SIGKILL while paced writers create secrets through the two
# others, and hushbench reports kill → first acknowledged write (restarting
# the killed manager and waiting for it to be Reachable between rounds).
#
# usage: bench/cluster.sh [N] [C] [REPS]      (defaults 4000 16 5)
# needs: Go, the docker CLI; no engine is used (hushd --engine "").
# Optional environment:
#   PAIRS=k     the single node stays up (idle) while the cluster runs, and
#               single and leader rows are measured k times, alternating,
#               before follower and spread: on a shared machine the ratio
#               of neighbouring rows means more than of rows minutes apart
#               (default 1: single, then the cluster, as before).
#   LEVELS="16 64"  client concurrency levels of the single and leader rows
#               (default C alone; follower and spread run at C).
#   BIN=dir     use dir's hushd and hushbench instead of building them (an
#               A/B run of two builds under the same load).
#   HUSHD_ENV="GOGC=200"  environment for every hushd, single and members
#               alike (a Go runtime setting under test).
#   PERF=dir    perf-record (perf(1), PERF_HZ=250 Hz, call graphs) the hushd
#               processes during the first single and leader rows, into
#               dir/{single,leader}.data, for `perf report`.
# Each create row ends with the CPU time the hushd processes spent on it
# (utime+stime from /proc; the clean-up deletes included), per create:
# all processes summed, then each one's (the single node's; m1/m2/m3).
# Each row ends with the 1-minute load average when it finished: the
# machine is shared, and the figures mean little without it.
# Prints a table and writes it to docs/bench/cluster-<date>.tsv when run
# from the repository root with OUT unset (OUT=/dev/null to skip).
set -euo pipefail
n=${1:-4000}; c=${2:-16}; reps=${3:-5}
root=$(mktemp -d /tmp/hush-bench-cluster.XXXXXX)
bin=$root/bin; mkdir -p "$bin"
out=${OUT:-docs/bench/cluster-$(date +%F).tsv}
ips=(127.0.0.2 127.0.0.3 127.0.0.4)
pids=()

cleanup() {
	for p in "${pids[@]}"; do kill -INT "$p" 2>/dev/null || true; done
	for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
	rm -rf "$root"
}
trap cleanup EXIT

if [ "${BIN:-}" ]; then
	cp "$BIN/hushd" "$BIN/hushbench" "$bin/"
else
	go build -o "$bin/hushd" ./cmd/hushd
	go build -o "$bin/hushbench" ./cmd/hushbench
fi
pairs=${PAIRS:-1}
read -r -a levels <<<"${LEVELS:-$c}"
# sfx LEVEL: a row label's suffix when there are several levels.
sfx() { [ "${#levels[@]}" -gt 1 ] && echo "-c$1" || true; }

# freeport IP: a port on IP whose next two are free too (join/CA, etcd peer,
# dispatcher). Another process may take one before hushd binds it.
freeport() {
	local ip=$1 p
	for _ in $(seq 1 50); do
		p=$((20000 + RANDOM % 20000))
		if ! ss -Htln "( sport = :$p or sport = :$((p + 1)) or sport = :$((p + 2)) )" | grep -q .; then
			echo "$p"; return
		fi
	done
	echo "no free ports on $ip" >&2; return 1
}

# start NAME ARGS...: starts hushd with its own data dir and socket.
declare -A pid sock
start() {
	local name=$1; shift
	mkdir -p "$root/$name"
	sock[$name]=$root/$name/hushd.sock
	env ${HUSHD_ENV:-} "$bin/hushd" --data-dir "$root/$name/data" --socket "${sock[$name]}" --engine "" "$@" \
		>>"$root/$name/log" 2>&1 &
	pid[$name]=$!; pids+=($!)
	for _ in $(seq 1 300); do
		docker -H "unix://${sock[$name]}" version >/dev/null 2>&1 && return
		sleep 0.1
	done
	echo "hushd $name did not answer; its log:" >&2; tail -30 "$root/$name/log" >&2; return 1
}
dk() { local name=$1; shift; docker -H "unix://${sock[$name]}" "$@"; }

# leader: the name of the manager node ls calls Leader.
declare -A nodeid
leader() {
	local id
	for _ in $(seq 1 300); do
		for m in m1 m2 m3; do
			[ "${pid[$m]:-}" ] && kill -0 "${pid[$m]}" 2>/dev/null || continue
			id=$(dk "$m" node ls --format '{{.ID}} {{.ManagerStatus}}' 2>/dev/null | awk '$2 == "Leader" { print $1 }')
			for l in m1 m2 m3; do [ "${nodeid[$l]:-}" = "$id" ] && [ "$id" ] && { echo "$l"; return; }; done
		done
		sleep 0.2
	done
	echo "no leader" >&2; return 1
}
# all_reachable: every manager Reachable or Leader on m's node ls.
all_reachable() {
	local m=$1
	for _ in $(seq 1 600); do
		[ "$(dk "$m" node ls --format '{{.ManagerStatus}}' 2>/dev/null | grep -cE '^(Leader|Reachable)$')" = 3 ] && return
		sleep 0.2
	done
	echo "managers not all reachable" >&2; return 1
}

# cputicks PID...: the processes' utime+stime in clock ticks, comma-separated.
cputicks() { for p in "$@"; do awk '{ print $14 + $15 }' "/proc/$p/stat"; done | paste -sd,; }

# bench LABEL SOCKETS [CONC [PERFNAME]]: one row; its CPU columns are the
# processes in cpupids'.
cpupids=()
bench() {
	local label=$1 socks=$2 conc=${3:-$c} perfname=${4:-} json=$root/$1.json before after perfpid=""
	before=$(cputicks "${cpupids[@]}")
	if [ "$perfname" ] && [ "${PERF:-}" ]; then
		mkdir -p "$PERF"
		perf record -F "${PERF_HZ:-250}" -g -o "$PERF/$perfname.data" -p "$(IFS=,; echo "${cpupids[*]}")" >/dev/null 2>&1 &
		perfpid=$!
	fi
	"$bin/hushbench" --socket "$socks" --concurrency "$conc" --ops create --n "$n" --list-size 0 --json "$json" >"$root/$label.out" 2>&1 ||
		{ cat "$root/$label.out" >&2; return 1; }
	after=$(cputicks "${cpupids[@]}")
	if [ "$perfpid" ]; then kill -INT "$perfpid"; wait "$perfpid" || true; fi
	python3 - "$json" "$label" "$before" "$after" "$(getconf CLK_TCK)" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
op = r["levels"][0]["ops"][0]
load = open("/proc/loadavg").read().split()[0]
b, a = ([int(x) for x in v.split(",")] for v in sys.argv[3:5])
ms = [(y - x) * 1000 / int(sys.argv[5]) / max(op["ok"], 1) for x, y in zip(b, a)]
split = "/".join(f"{m:.2f}" for m in ms)
print(f'{sys.argv[2]}\tcreate\t{op["concurrency"]}\t{op["ok"]}\t{op["ops_per_s"]:.1f}\t{op["p50_ms"]:.2f}\t{op["p99_ms"]:.2f}\t{load}\t{sum(ms):.2f}\t{split}')
EOF
}

printf 'setup\top\tconc\tok\tops/s\tp50 ms\tp99 ms\tload1\tcpu ms/op\tper process\n' >"$root/table.tsv"

start single
single_pid=${pid[single]}
if [ "$pairs" = 1 ]; then
	cpupids=("$single_pid")
	for lv in "${levels[@]}"; do bench "single$(sfx "$lv")" "${sock[single]}" "$lv" single >>"$root/table.tsv"; done
	kill -INT "$single_pid"; wait "$single_pid" || true
fi

ports=()
for i in 0 1 2; do ports[i]=$(freeport "${ips[i]}"); done
start m1 --listen-addr "${ips[0]}:${ports[0]}" --advertise-addr "${ips[0]}"
for i in 1 2; do
	start "m$((i + 1))" --no-init --listen-addr "${ips[i]}:${ports[i]}" --advertise-addr "${ips[i]}"
done
tok=$(dk m1 swarm join-token -q manager)
for m in m2 m3; do dk "$m" swarm join --token "$tok" "${ips[0]}:${ports[0]}" >/dev/null; done
for m in m1 m2 m3; do nodeid[$m]=$(dk "$m" info --format '{{.Swarm.NodeID}}'); done
all_reachable m1
l=$(leader)
f=m1; [ "$l" = m1 ] && f=m2
members=("${pid[m1]}" "${pid[m2]}" "${pid[m3]}")
for k in $(seq 1 "$pairs"); do
	for lv in "${levels[@]}"; do
		pn=""; [ "$k" = 1 ] && pn=leader
		if [ "$pairs" != 1 ]; then
			cpupids=("$single_pid")
			sn=""; [ "$k" = 1 ] && sn=single
			bench "single$(sfx "$lv")" "${sock[single]}" "$lv" "$sn" >>"$root/table.tsv"
		fi
		cpupids=("${members[@]}")
		bench "cluster-leader$(sfx "$lv")" "${sock[$l]}" "$lv" "$pn" >>"$root/table.tsv"
	done
done
if [ "$pairs" != 1 ]; then kill -INT "$single_pid"; wait "$single_pid" || true; fi
cpupids=("${members[@]}")
bench "cluster-follower" "${sock[$f]}" >>"$root/table.tsv"
bench "cluster-spread" "${sock[m1]},${sock[m2]},${sock[m3]}" >>"$root/table.tsv"

printf '\nround\tkilled\tfirst ack ms\tall sockets ms\tmax gap ms\tok\terrors\tload1\n' >>"$root/table.tsv"
for r in $(seq 1 "$reps"); do
	l=$(leader)
	survivors=()
	for m in m1 m2 m3; do [ "$m" != "$l" ] && survivors+=("${sock[$m]}"); done
	json=$root/failover-$r.json
	"$bin/hushbench" --socket "$(IFS=,; echo "${survivors[*]}")" --failover-pid "${pid[$l]}" --json "$json" >"$root/failover-$r.out" 2>&1 ||
		{ cat "$root/failover-$r.out" >&2; exit 1; }
	wait "${pid[$l]}" 2>/dev/null || true
	python3 - "$json" "$r" "$l" >>"$root/table.tsv" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
errs = ",".join(f"{k}:{v}" for k, v in (r.get("errors") or {}).items()) or "-"
load = open("/proc/loadavg").read().split()[0]
print(f'{sys.argv[2]}\t{sys.argv[3]}\t{r["first_ack_ms"]:.0f}\t{r["all_sockets_ack_ms"]:.0f}\t{r["max_gap_ms"]:.0f}\t{r["ok"]}\t{errs}\t{load}')
EOF
	# The killed manager restarts from its data and rejoins as it was.
	i=${l#m}; i=$((i - 1))
	extra=(); [ "$l" != m1 ] && extra=(--no-init)
	start "$l" "${extra[@]}" --listen-addr "${ips[i]}:${ports[i]}" --advertise-addr "${ips[i]}"
	all_reachable "$l"
done

column -t -s $'\t' "$root/table.tsv"
{ echo "# bench/cluster.sh $n $c $reps on $(git rev-parse --short HEAD), $(date -u +%FT%TZ), $(nproc) cores"; cat "$root/table.tsv"; } >"$out"
