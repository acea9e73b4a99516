#!/usr/bin/env bash
# Node-down benchmark (issue 9): three managers (127.0.0.2-4) and a worker
# (127.0.0.5), all driving this host's engine, the cluster's default
# heartbeat period (5 s) unless HEARTBEAT is set. A service of four
# replicas spreads one task per node; the worker's hushd is killed with
# SIGKILL (a host that died), and the run measures
#   kill → the worker shown Down by `node ls` on a manager, and
#   kill → four tasks Running again, none of them on the worker
# then restarts the worker, waits for it to be Ready, spreads the tasks
# again (`service update --force`) and repeats. Swarm's defaults for
# comparison: heartbeat 5 s, a node is down after about three missed
# periods, and its tasks are rescheduled at once (plus the restart delay,
# 5 s by default, which hush applies too).
#
# usage: bench/node-down.sh [REPS]     (default 3)
# needs: Go, the docker CLI, the engine, the image hush-test/busybox:latest
# (the e2e suite builds it). Writes docs/bench/node-down-<date>.tsv unless
# OUT is set (OUT=/dev/null to skip).
set -euo pipefail
reps=${1:-3}
img=${IMAGE:-hush-test/busybox:latest}
root=$(mktemp -d /tmp/hush-bench-nd.XXXXXX)
bin=$root/bin; mkdir -p "$bin"
out=${OUT:-docs/bench/node-down-$(date +%F).tsv}
ips=(127.0.0.2 127.0.0.3 127.0.0.4 127.0.0.5)
names=(m1 m2 m3 w1)
svc=hushnd_$RANDOM
declare -A pid sock nodeid
pids=()

cleanup() {
	dk m1 service rm "$svc" >/dev/null 2>&1 || true
	for p in "${pids[@]}"; do kill -INT "$p" 2>/dev/null || true; done
	for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
	# Containers a killed worker left behind (they carry its node ID).
	for id in "${nodeid[@]}"; do
		docker ps -aq --filter "label=com.docker.swarm.node.id=$id" | xargs -r docker rm -f >/dev/null 2>&1 || true
	done
	for d in "$root"/*/secrets; do
		[ -d "$d" ] && grep -F " $d" /proc/mounts | awk '{print $2}' | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
	done
	rm -rf "$root"
}
trap cleanup EXIT

go build -o "$bin/hushd" ./cmd/hushd

freeport() {
	local p
	for _ in $(seq 1 50); do
		p=$((20000 + RANDOM % 20000))
		if ! ss -Htln "( sport = :$p or sport = :$((p + 1)) or sport = :$((p + 2)) )" | grep -q .; then
			echo "$p"; return
		fi
	done
	return 1
}
start() { # NAME ARGS...
	local name=$1; shift
	mkdir -p "$root/$name/secrets"
	sock[$name]=$root/$name/hushd.sock
	"$bin/hushd" --data-dir "$root/$name/data" --socket "${sock[$name]}" --secrets-dir "$root/$name/secrets" "$@" \
		>>"$root/$name/log" 2>&1 &
	pid[$name]=$!; pids+=($!)
	for _ in $(seq 1 300); do
		docker -H "unix://${sock[$name]}" version >/dev/null 2>&1 && return
		sleep 0.1
	done
	echo "hushd $name did not answer" >&2; tail -30 "$root/$name/log" >&2; return 1
}
dk() { local name=$1; shift; docker -H "unix://${sock[$name]}" "$@"; }
now() { date +%s.%N; }
ms() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.0f", (b - a) * 1000 }'; }
status_of() { dk m1 node ls --format '{{.ID}} {{.Status}}' 2>/dev/null | awk -v id="$1" '$1 == id { print $2 }'; }
# tasks: "NODEID STATE" of each task that should run (node IDs, not
# hostnames: every node here has the same host name).
tasks() {
	local ids
	ids=$(dk m1 service ps -q --filter desired-state=running "$svc" 2>/dev/null) || return 0
	[ -n "$ids" ] && dk m1 inspect --format '{{.NodeID}} {{.Status.State}}' $ids 2>/dev/null
	return 0
}
# running_off ID: how many tasks of the service run on nodes other than ID.
running_off() { tasks | awk -v id="$1" '$1 != id && $2 == "running" { n++ } END { print n + 0 }'; }
wait_for() { # SECONDS CMD...: polls CMD every 100 ms
	local limit=$1; shift
	local end=$((SECONDS + limit))
	until "$@"; do
		[ $SECONDS -lt $end ] || { echo "timeout: $*" >&2; return 1; }
		sleep 0.1
	done
}

port=()
for i in 0 1 2 3; do port[i]=$(freeport); done
start m1 --listen-addr "${ips[0]}:${port[0]}" --advertise-addr "${ips[0]}"
[ -n "${HEARTBEAT:-}" ] && dk m1 swarm update --dispatcher-heartbeat "$HEARTBEAT" >/dev/null
for i in 1 2; do start "${names[i]}" --no-init --listen-addr "${ips[i]}:${port[i]}" --advertise-addr "${ips[i]}"; done
start w1 --no-init --listen-addr "${ips[3]}:${port[3]}" --advertise-addr "${ips[3]}"
mtok=$(dk m1 swarm join-token -q manager)
wtok=$(dk m1 swarm join-token -q worker)
for m in m2 m3; do dk "$m" swarm join --token "$mtok" "${ips[0]}:${port[0]}" >/dev/null; done
dk w1 swarm join --token "$wtok" "${ips[0]}:${port[0]}" >/dev/null
for n in "${names[@]}"; do nodeid[$n]=$(dk "$n" info --format '{{.Swarm.NodeID}}'); done
ready() { [ "$(status_of "${nodeid[w1]}")" = Ready ]; }
wait_for 120 ready
dk m1 service create -d --name "$svc" --replicas 4 "$img" sh -c 'trap "exit 0" TERM; while :; do sleep 1; done' >/dev/null
spread() { [ "$(tasks | awk '$2 == "running" { print $1 }' | sort -u | wc -l)" = 4 ]; }
wait_for 180 spread

printf 'round\tkill → Down ms\tkill → 4 running elsewhere ms\n' >"$root/table.tsv"
for r in $(seq 1 "$reps"); do
	t0=$(now)
	kill -KILL "${pid[w1]}"; wait "${pid[w1]}" 2>/dev/null || true
	down() { [ "$(status_of "${nodeid[w1]}")" = Down ]; }
	wait_for 180 down; t1=$(now)
	four() { [ "$(running_off "${nodeid[w1]}")" = 4 ]; }
	wait_for 180 four; t2=$(now)
	printf '%s\t%s\t%s\n' "$r" "$(ms "$t0" "$t1")" "$(ms "$t0" "$t2")" >>"$root/table.tsv"
	# The killed worker's container still runs on this host: remove it,
	# as a dead host's would be gone.
	docker ps -aq --filter "label=com.docker.swarm.node.id=${nodeid[w1]}" | xargs -r docker rm -f >/dev/null
	start w1 --no-init --listen-addr "${ips[3]}:${port[3]}" --advertise-addr "${ips[3]}"
	wait_for 120 ready
	if [ "$r" -lt "$reps" ]; then
		dk m1 service update -d --force "$svc" >/dev/null
		wait_for 300 spread
	fi
done
hbp=$(dk m1 info --format '{{.Swarm.Cluster.Spec.Dispatcher.HeartbeatPeriod}}')
column -t -s $'\t' "$root/table.tsv"
{ echo "# bench/node-down.sh $reps on $(git rev-parse --short HEAD), $(date -u +%FT%TZ), heartbeat period ${hbp}, $(nproc) cores"; cat "$root/table.tsv"; } >"$out"
