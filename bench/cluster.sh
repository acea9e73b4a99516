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

go build -o "$bin/hushd" ./cmd/hushd
go build -o "$bin/hushbench" ./cmd/hushbench

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
	"$bin/hushd" --data-dir "$root/$name/data" --socket "${sock[$name]}" --engine "" "$@" \
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

bench() { # LABEL SOCKETS
	local label=$1 socks=$2 json=$root/$1.json
	"$bin/hushbench" --socket "$socks" --concurrency "$c" --ops create --n "$n" --list-size 0 --json "$json" >"$root/$label.out" 2>&1 ||
		{ cat "$root/$label.out" >&2; return 1; }
	python3 - "$json" "$label" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
op = r["levels"][0]["ops"][0]
load = open("/proc/loadavg").read().split()[0]
print(f'{sys.argv[2]}\tcreate\t{op["concurrency"]}\t{op["ok"]}\t{op["ops_per_s"]:.1f}\t{op["p50_ms"]:.2f}\t{op["p99_ms"]:.2f}\t{load}')
EOF
}

printf 'setup\top\tconc\tok\tops/s\tp50 ms\tp99 ms\tload1\n' >"$root/table.tsv"

start single
bench single "${sock[single]}" >>"$root/table.tsv"
kill -INT "${pid[single]}"; wait "${pid[single]}" || true

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
bench "cluster-leader" "${sock[$l]}" >>"$root/table.tsv"
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
