#!/usr/bin/env bash
# Compares two builds of hushd on the secrets API (issue 8's cost check:
# sealing every record must keep secret creates and the 10,000-secret list
# within 10 % of the build before it). Builds hushd and hushbench at both
# revisions from `git archive` (no worktree is touched), then runs them
# alternately (old, new, old, new, ...), each on a fresh data dir, and
# prints every run and the median per build, with the load average at the
# start of each run (the machine may be shared: compare only runs of one
# session).
#
# usage: bench/sealing-cost.sh [OLD_REV] [NEW_REV] [RUNS]
#   OLD_REV  default: the merge base of NEW_REV and main (the build before)
#   NEW_REV  default: HEAD
#   RUNS     runs per build (default 3)
# Env: ENGINE (default /var/run/docker.sock; "" runs hushd without one),
#      N (creates per run, default 2000), LIST (default 10000), LIST_REPS
#      (timed lists per run, default 30: 10 gave medians that moved by a
#      third between runs of one build).
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
new=${2:-HEAD}
old=${1:-$(git merge-base "$new" main)}
runs=${3:-3}
engine=${ENGINE-/var/run/docker.sock}
n=${N:-2000}; list=${LIST:-10000}; reps=${LIST_REPS:-30}
work=$(mktemp -d /tmp/hush-sealcost-XXXXXX)
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

build() { # rev name
	mkdir -p "$work/src-$2"
	git archive "$1" | tar -x -C "$work/src-$2"
	(cd "$work/src-$2" && go build -o "$work/hushd-$2" ./cmd/hushd && go build -o "$work/hushbench-$2" ./cmd/hushbench)
}
echo "old=$(git rev-parse --short "$old") new=$(git rev-parse --short "$new") runs=$runs n=$n list=$list engine=${engine:-none}" >&2
build "$old" old
build "$new" new

one() { # name run
	local dir=$work/data-$1-$2 sock=$work/s-$1-$2.sock load
	# The previous run's data (etcd preallocates 64 MiB WAL segments) is
	# written back first, so it does not land on this run's fsyncs.
	sync; sleep 2
	load=$(cut -d' ' -f1-3 /proc/loadavg)
	"$work/hushd-$1" --data-dir "$dir" --socket "$sock" --log-level warn --engine "$engine" 2>"$work/hushd-$1-$2.log" &
	pid=$!
	for _ in $(seq 1 200); do [ -S "$sock" ] && break; sleep 0.05; done
	sleep 1 # let start-up work settle before counting CPU
	# hushd's own CPU time over the run (user+system): unlike throughput,
	# it hardly depends on what else the machine is doing.
	local t0 t1
	t0=$(awk '{print $14+$15}' "/proc/$pid/stat")
	# The same client for both: the new build's hushbench.
	"$work/hushbench-new" --socket "$sock" --concurrency 16 --ops create --n "$n" \
		--list-size "$list" --list-reps "$reps" --json "$work/r-$1-$2.json" >/dev/null 2>"$work/bench-$1-$2.log"
	t1=$(awk '{print $14+$15}' "/proc/$pid/stat")
	kill "$pid"; wait "$pid" 2>/dev/null || true; pid=
	load="$load	$(awk -v a="$t0" -v b="$t1" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.2f", (b - a) / hz }')"
	rm -rf "$dir"
	python3 - "$work/r-$1-$2.json" "$1" "$2" "$load" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
c = next(o for l in r["levels"] for o in l["ops"] if o["op"] == "create")
u = r["list_size"]["unfiltered"]
load, cpu = sys.argv[4].split("\t")
print(f'{sys.argv[2]}\t{sys.argv[3]}\t{c["ops_per_s"]:.0f}\t{c["p99_ms"]:.2f}\t{u["median_ms"]:.1f}\t{u["items"]}\t{cpu}\t{load}')
PY
}

printf 'build\trun\tcreate/s (c=16)\tcreate p99 ms\tlist 10k median ms\titems\thushd cpu s\tload (1 5 15 min)\n'
for i in $(seq 1 "$runs"); do
	one old "$i" | tee -a "$work/all.tsv"
	one new "$i" | tee -a "$work/all.tsv"
done
python3 - "$work/all.tsv" <<'PY'
import statistics, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1])]
med = {}
for b in ("old", "new"):
    rs = [r for r in rows if r[0] == b]
    med[b] = [statistics.median(float(r[i]) for r in rs) for i in (2, 3, 4, 6)]
    print(f"median {b}: create {med[b][0]:.0f}/s, p99 {med[b][1]:.2f} ms, list 10k {med[b][2]:.1f} ms, hushd cpu {med[b][3]:.2f} s")
print(f"new/old: create {med['new'][0]/med['old'][0]:.3f}, list {med['new'][2]/med['old'][2]:.3f}, cpu {med['new'][3]/med['old'][3]:.3f}")
PY
