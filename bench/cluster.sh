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
#   PIN=1       emulate a host per manager with CPU pinning (taskset(1);
#               needs CPUs 0 and 1): the hushd a row measures gets CPU 0 to
#               itself, and hushbench and every other hushd share CPU 1. The
#               measured one is the single node in single rows, the leader in
#               leader rows (asked again before each; a change of leader
#               during a row is reported on stderr), the entry follower in the
#               follower row, the leader in the spread row. Whole processes
#               are moved (`taskset -a -p`, all threads) before each row, and
#               every hushd and hushbench starts on CPU 1 alone, so each Go
#               runtime's GOMAXPROCS is 1 from its start and matches the one
#               core it may use (Go 1.25+ also follows a changed affinity mask
#               within about a second). Rows gain five columns: the
#               measured hushd's own share of CPU 0 (its CPU time over the
#               row's wall time, clean-up deletes included), the busy share
#               of CPU 0 and of CPU 1 (/proc/stat: every process on the
#               machine, not only the benchmark's), hushbench's own CPU
#               per create, and how long each hushd's threads waited
#               runnable for their core, per create (schedstat; the same
#               order as the CPU split). Failover rounds are skipped
#               (REPS is ignored): they measure elections, not one core's
#               throughput. Limits: one disk for all WALs, loopback network,
#               the followers share their core with the client, and other
#               processes on the machine are not kept off CPU 0.
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
pin=${PIN:-}
# on1: the command prefix that starts a process on CPU 1 alone (PIN only).
on1=()
if [ "$pin" ]; then
	command -v taskset >/dev/null || { echo "PIN needs taskset(1) (util-linux)" >&2; exit 1; }
	taskset -c 0,1 true 2>/dev/null || { echo "PIN needs CPUs 0 and 1" >&2; exit 1; }
	[ -x /usr/bin/time ] || { echo "PIN needs GNU time (/usr/bin/time)" >&2; exit 1; }
	on1=(taskset -c 1)
	if [ "$reps" != 0 ]; then echo "PIN: failover rounds skipped (REPS=$reps ignored)" >&2; reps=0; fi
fi
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
	"${on1[@]}" env ${HUSHD_ENV:-} "$bin/hushd" --data-dir "$root/$name/data" --socket "${sock[$name]}" --engine "" "$@" \
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

# pinto CPU PID...: every thread of each process to CPU alone, checked.
pinto() {
	local cpu=$1 p; shift
	for p in "$@"; do
		for _ in 1 2 3; do
			taskset -a -p -c "$cpu" "$p" >/dev/null
			[ "$(awk '/^Cpus_allowed_list:/ { print $2 }' /proc/"$p"/task/*/status 2>/dev/null | sort -u)" = "$cpu" ] && continue 2
		done
		echo "could not pin $p to CPU $cpu" >&2; return 1
	done
}
# pinrow PID: PID's process gets CPU 0, every other live hushd CPU 1 (PIN only).
measured=""
pinrow() {
	[ "$pin" ] || return 0
	measured=$1
	local p others=()
	for p in "${pids[@]}"; do [ "$p" != "$1" ] && kill -0 "$p" 2>/dev/null && others+=("$p"); done
	pinto 1 "${others[@]}"
	pinto 0 "$1"
}
# cpustat: CPU 0's and CPU 1's busy and total jiffies from /proc/stat.
cpustat() { awk '$1 == "cpu0" || $1 == "cpu1" { t = 0; for (i = 2; i <= 9; i++) t += $i; printf "%d,%d,", t - $5 - $6, t }' /proc/stat; }

# runqwait PID...: the ns each process's threads waited runnable for a CPU
# (schedstat), comma-separated.
runqwait() { for p in "$@"; do cat /proc/"$p"/task/*/schedstat 2>/dev/null | awk '{ s += $2 } END { printf "%.0f\n", s }'; done | paste -sd,; }

# cputicks PID...: the processes' utime+stime in clock ticks, comma-separated.
cputicks() { for p in "$@"; do awk '{ print $14 + $15 }' "/proc/$p/stat"; done | paste -sd,; }

# bench LABEL SOCKETS [CONC [PERFNAME]]: one row; its CPU columns are the
# processes in cpupids'.
cpupids=()
bench() {
	local label=$1 socks=$2 conc=${3:-$c} perfname=${4:-} json=$root/$1.json before after perfpid="" time=()
	local cpus0="" cpus1="" t0="" t1="" idx="" w0="" w1=""
	before=$(cputicks "${cpupids[@]}")
	if [ "$pin" ]; then time=(/usr/bin/time -f '%U %S' -o "$root/$label.time"); cpus0=$(cpustat); w0=$(runqwait "${cpupids[@]}"); t0=$EPOCHREALTIME; fi
	if [ "$perfname" ] && [ "${PERF:-}" ]; then
		mkdir -p "$PERF"
		"${on1[@]}" perf record -F "${PERF_HZ:-250}" -g -o "$PERF/$perfname.data" -p "$(IFS=,; echo "${cpupids[*]}")" >/dev/null 2>&1 &
		perfpid=$!
	fi
	"${on1[@]}" "${time[@]}" "$bin/hushbench" --socket "$socks" --concurrency "$conc" --ops create --n "$n" --list-size 0 --json "$json" >"$root/$label.out" 2>&1 ||
		{ cat "$root/$label.out" >&2; return 1; }
	[ "$pin" ] && t1=$EPOCHREALTIME
	after=$(cputicks "${cpupids[@]}")
	if [ "$pin" ]; then
		cpus1=$(cpustat); w1=$(runqwait "${cpupids[@]}")
		for i in "${!cpupids[@]}"; do [ "${cpupids[i]}" = "$measured" ] && idx=$i; done
	fi
	if [ "$perfpid" ]; then kill -INT "$perfpid"; wait "$perfpid" || true; fi
	python3 - "$json" "$label" "$before" "$after" "$(getconf CLK_TCK)" "$cpus0" "$cpus1" "$root/$label.time" "$idx" "$t0" "$t1" "$w0" "$w1" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
op = r["levels"][0]["ops"][0]
load = open("/proc/loadavg").read().split()[0]
b, a = ([int(x) for x in v.split(",")] for v in sys.argv[3:5])
ms = [(y - x) * 1000 / int(sys.argv[5]) / max(op["ok"], 1) for x, y in zip(b, a)]
split = "/".join(f"{m:.2f}" for m in ms)
row = f'{sys.argv[2]}\tcreate\t{op["concurrency"]}\t{op["ok"]}\t{op["ops_per_s"]:.1f}\t{op["p50_ms"]:.2f}\t{op["p99_ms"]:.2f}\t{load}\t{sum(ms):.2f}\t{split}'
if sys.argv[6]:  # PIN: the measured hushd's share of CPU 0, each core's busy share, hushbench's CPU per create
    b, a = ([int(x) for x in v.rstrip(",").split(",")] for v in sys.argv[6:8])
    busy = [(a[i] - b[i]) / max(a[i + 1] - b[i + 1], 1) * 100 for i in (0, 2)]
    client = sum(float(x) for x in open(sys.argv[8]).read().split()[-2:]) * 1000 / max(op["ok"], 1)
    i, wall = int(sys.argv[9]), float(sys.argv[11]) - float(sys.argv[10])
    own = ms[i] * max(op["ok"], 1) / 1000 / wall * 100
    wb, wa = ([int(x) for x in v.split(",")] for v in sys.argv[12:14])
    wait = "/".join(f"{(y - x) / 1e6 / max(op['ok'], 1):.2f}" for x, y in zip(wb, wa))
    row += f'\t{own:.0f}\t{busy[0]:.0f}\t{busy[1]:.0f}\t{client:.2f}\t{wait}'
print(row)
EOF
}

if [ "$pin" ]; then
	printf 'setup\top\tconc\tok\tops/s\tp50 ms\tp99 ms\tload1\tcpu ms/op\tper process\town cpu0 %%\tcpu0 %%\tcpu1 %%\tclient ms/op\trunq wait ms/op\n' >"$root/table.tsv"
else
	printf 'setup\top\tconc\tok\tops/s\tp50 ms\tp99 ms\tload1\tcpu ms/op\tper process\n' >"$root/table.tsv"
fi

start single
single_pid=${pid[single]}
if [ "$pairs" = 1 ]; then
	cpupids=("$single_pid")
	pinrow "$single_pid"
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
			pinrow "$single_pid"
			bench "single$(sfx "$lv")" "${sock[single]}" "$lv" "$sn" >>"$root/table.tsv"
		fi
		cpupids=("${members[@]}")
		if [ "$pin" ]; then l=$(leader); pinrow "${pid[$l]}"; fi
		bench "cluster-leader$(sfx "$lv")" "${sock[$l]}" "$lv" "$pn" >>"$root/table.tsv"
		if [ "$pin" ] && [ "$(leader)" != "$l" ]; then echo "PIN: the leader changed during a leader row (was $l)" >&2; fi
	done
done
if [ "$pairs" != 1 ]; then kill -INT "$single_pid"; wait "$single_pid" || true; fi
cpupids=("${members[@]}")
if [ "$pin" ]; then l=$(leader); f=m1; [ "$l" = m1 ] && f=m2; pinrow "${pid[$f]}"; fi
bench "cluster-follower" "${sock[$f]}" >>"$root/table.tsv"
pinrow "${pid[$l]}"
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
pinned=""; [ "$pin" ] && pinned=", PIN=1: measured hushd on CPU 0, hushbench and the other hushd on CPU 1"
{ echo "# bench/cluster.sh $n $c $reps on $(git rev-parse --short HEAD), $(date -u +%FT%TZ), $(nproc) cores$pinned"; cat "$root/table.tsv"; } >"$out"
