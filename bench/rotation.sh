#!/usr/bin/env bash
# Rotation benchmark (issue 10): 20 replicas of one service reading a secret,
# the time from the rotate command returning to all 20 containers reading the
# new value, and how many containers were restarted, for
#   hush reload   `hush secret rotate` on a service labelled io.hush.rotate=reload
#   hush restart  `hush secret rotate` on a service in the default restart mode
#   swarm         Swarm's rename-and-swap: `docker secret create NAME_v2`, then
#                 `docker service update -d --secret-rm NAME --secret-add source=NAME_v2,target=NAME`
# all with the default update config (parallelism 1, delay 0, stop-first).
#
# usage: bench/rotation.sh HUSHD_SOCKET [REPLICAS]
#   HUSHD_SOCKET  a running hushd on this host's engine (e.g. /run/hush/hushd.sock)
#   Swarm runs on the engine at /var/run/docker.sock (`docker swarm init` first).
# needs: the hush CLI on PATH (go build -o /usr/local/bin/hush ./cmd/hush), the
# test image hush-test/busybox:latest (the e2e suite builds it).
set -euo pipefail
hsock=$1; n=${2:-20}
img=${IMAGE:-hush-test/busybox:latest}
engine=unix:///var/run/docker.sock
now() { date +%s.%N; }
ms() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.0f", (b - a) * 1000 }'; }
# The task command exits on SIGTERM, so a restart costs the engine's stop and
# start, not a grace period.
cmd=(sh -c 'trap "exit 0" TERM; while :; do sleep 0.2; done')
run=$RANDOM

# all_read SVC VALUE: waits until SVC has n running containers that all read VALUE.
all_read() {
	local svc=$1 want=$2 ok c
	for _ in $(seq 1 6000); do
		mapfile -t cs < <(DOCKER_HOST=$engine docker ps -q --filter "label=com.docker.swarm.service.name=$svc")
		if [ "${#cs[@]}" -eq "$n" ]; then
			ok=1
			for c in "${cs[@]}"; do
				if [ "$(DOCKER_HOST=$engine docker exec "$c" cat /run/secrets/benchrot 2>/dev/null)" != "$want" ]; then ok=0; break; fi
			done
			[ $ok = 1 ] && return 0
		fi
		sleep 0.1
	done
	echo "timeout waiting for $svc" >&2; return 1
}
# watch_new SVC: for each running container, starts a watcher inside it that
# returns once it reads "new", the host's clock read then (a few ms late); wait_watchers prints the
# latest of them. Used for reload, where the containers stay.
watch_new() {
	local c i=0
	for c in $(ids "$1"); do
		{ DOCKER_HOST=$engine docker exec "$c" sh -c 'until [ "$(cat /run/secrets/benchrot)" = new ]; do usleep 10000; done' && now; } > "/tmp/benchrot.$run.w$i" &
		i=$((i + 1))
	done
	sleep 2 # the execs are running before the rotation starts
}
latest_watcher() { cat /tmp/benchrot."$run".w* | sort -n | tail -1; rm -f /tmp/benchrot."$run".w*; }
ids() { DOCKER_HOST=$engine docker ps -q --no-trunc --filter "label=com.docker.swarm.service.name=$1" | sort; }
restarted() { comm -23 <(echo "$1") <(echo "$2") | grep -c . || true; }

bench_hush() { # MODE
	local mode=$1 svc=benchrot_${1}_$run before t0 t1
	export DOCKER_HOST=unix://$hsock
	printf 'old' | docker secret create "benchrot_${mode}_$run" - >/dev/null
	docker service create -d -q --name "$svc" --replicas "$n" --label "io.hush.rotate=$mode" \
		--secret "source=benchrot_${mode}_$run,target=benchrot" "$img" "${cmd[@]}" >/dev/null
	all_read "$svc" old
	before=$(ids "$svc")
	printf 'new' > "/tmp/benchrot.$run"
	[ "$mode" = reload ] && watch_new "$svc"
	hush secret rotate "benchrot_${mode}_$run" "/tmp/benchrot.$run" >/dev/null
	t0=$(now)
	if [ "$mode" = reload ]; then
		wait # in this shell: the watchers are its jobs
		t1=$(latest_watcher)
		all_read "$svc" new
	else
		all_read "$svc" new
		t1=$(now)
	fi
	echo "hush $mode: $(ms "$t0" "$t1") ms to all $n reading the new value, $(restarted "$before" "$(ids "$svc")") of $n containers restarted"
	docker service rm "$svc" >/dev/null
	sleep 3
	docker secret rm "benchrot_${mode}_$run" >/dev/null || true
	unset DOCKER_HOST
}

bench_swarm() {
	local svc=benchrot_swarm_$run before t0 t1
	export DOCKER_HOST=$engine
	printf 'old' | docker secret create "benchrot_sw_$run" - >/dev/null
	docker service create -d -q --name "$svc" --replicas "$n" \
		--secret "source=benchrot_sw_$run,target=benchrot" "$img" "${cmd[@]}" >/dev/null
	all_read "$svc" old
	before=$(ids "$svc")
	printf 'new' | docker secret create "benchrot_sw2_$run" - >/dev/null
	docker service update -d -q --secret-rm "benchrot_sw_$run" --secret-add "source=benchrot_sw2_$run,target=benchrot" "$svc" >/dev/null
	t0=$(now)
	all_read "$svc" new
	t1=$(now)
	echo "swarm rename-and-swap: $(ms "$t0" "$t1") ms to all $n reading the new value, $(restarted "$before" "$(ids "$svc")") of $n containers restarted"
	docker service rm "$svc" >/dev/null
	sleep 5
	docker secret rm "benchrot_sw_$run" "benchrot_sw2_$run" >/dev/null || true
	unset DOCKER_HOST
}

echo "replicas=$n image=$img $(date -u +%FT%TZ)"
bench_hush reload
[ -z "${ONLY_RELOAD:-}" ] && bench_hush restart
[ -z "${ONLY_RELOAD:-}" ] && bench_swarm
rm -f "/tmp/benchrot.$run"
