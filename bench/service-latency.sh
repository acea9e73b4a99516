#!/usr/bin/env bash
# Measures, on one Docker API socket, (1) the time from `docker service create -d`
# to the secret being readable inside the task's container, and (2) the time from
# `docker service update -d --secret-add` to the new secret being readable in the
# replacement container. Runs the same against Docker Swarm and hushd so the two
# can be compared on one engine with one image.
#
# usage: bench/service-latency.sh SOCKET [RUNS] [GRACE]
#   SOCKET  e.g. /var/run/docker.sock (Swarm) or /run/hush/hushd.sock (hushd)
#   RUNS    repetitions (default 5)
#   GRACE   stop grace period given to the service (default 10s, Swarm's default)
# The image is the busybox image the tests build (hush-test/busybox:latest); its
# command ignores SIGTERM like `sleep` as PID 1, so stop-first updates wait the
# full grace period — the case the issue measures Swarm in.
set -euo pipefail
sock=$1; runs=${2:-5}; grace=${3:-10s}
img=${IMAGE:-hush-test/busybox:latest}
export DOCKER_HOST=unix://$sock
now() { date +%s.%N; }
ms() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.0f", (b - a) * 1000 }'; }
wait_read() { # service file → waits until a running task container can read it
	local svc=$1 file=$2 c
	for _ in $(seq 1 1200); do
		c=$(DOCKER_HOST=unix:///var/run/docker.sock docker ps -q --filter "label=com.docker.swarm.service.name=$svc" | head -1)
		if [ -n "$c" ] && DOCKER_HOST=unix:///var/run/docker.sock docker exec "$c" cat "/run/secrets/$file" >/dev/null 2>&1; then
			return 0
		fi
		sleep 0.05
	done
	echo "timeout waiting for $svc to read $file" >&2; return 1
}
run=$RANDOM
printf 'a' | docker secret create "bench_a_$run" - >/dev/null
printf 'b' | docker secret create "bench_b_$run" - >/dev/null
trap 'docker service rm "bench_svc_$run" >/dev/null 2>&1 || true; sleep 2; docker secret rm "bench_a_$run" "bench_b_$run" >/dev/null 2>&1 || true' EXIT
create=(); update=()
for i in $(seq 1 "$runs"); do
	svc=bench_svc_$run
	t0=$(now)
	docker service create -d -q --name "$svc" --stop-grace-period "$grace" --secret "bench_a_$run" "$img" sleep 3600 >/dev/null
	wait_read "$svc" "bench_a_$run"
	create+=("$(ms "$t0" "$(now)")")
	t0=$(now)
	docker service update -d -q --secret-add "bench_b_$run" "$svc" >/dev/null
	wait_read "$svc" "bench_b_$run"
	update+=("$(ms "$t0" "$(now)")")
	docker service rm "$svc" >/dev/null
	# Let the old containers go before the next run reuses the name.
	for _ in $(seq 1 400); do
		[ -z "$(DOCKER_HOST=unix:///var/run/docker.sock docker ps -aq --filter "label=com.docker.swarm.service.name=$svc")" ] && break
		sleep 0.05
	done
done
echo "socket=$sock runs=$runs grace=$grace image=$img"
echo "create→readable ms: ${create[*]}"
echo "update→readable ms: ${update[*]}"
