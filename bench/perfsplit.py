#!/usr/bin/env python3
"""Split a perf profile of hushd processes into cost groups, per process.

usage: perf script -i DIR/leader.data -F pid,ip,sym | bench/perfsplit.py HZ CREATES

DIR/leader.data (or single.data) comes from `PERF=DIR PERF_HZ=HZ bench/cluster.sh`
(perf record with call graphs). Each sample goes to the group of its outermost
frame that matches one (a request's GC assist counts as the request's); a
sample with no match goes to "hush, other" if a hush frame is on its stack,
else to "other". Prints CPU ms per create (samples / HZ / CREATES), one column
per process, busiest first; the creates' clean-up deletes are included, as in
the script's CPU columns.
"""
import collections
import sys

GROUPS = [
    ("Go GC", ["runtime.gcBgMarkWorker", "runtime.bgsweep", "runtime.bgscavenge"]),
    ("API: HTTP, JSON, sealing, handlers (the leader gate and etcd txn call)", ["net/http.(*conn).serve"]),
    ("raft peer streams (rafthttp)", ["rafthttp."]),
    ("raft loop, WAL, fdatasync", ["wal.(*WAL)", "etcdserver.(*raftNode)", "raft.(*node)", "raft.(*RawNode)", "fileutil.Fdatasync"]),
    ("etcd apply (mvcc, bbolt)", ["applierV3", "apply.(*", "mvcc.", "backend.", "bbolt.", "etcdserver.(*EtcdServer).apply"]),
    ("hush's watchers (mirror, events)", ["Mirror).watch", "Source).watch"]),
    ("etcd watch and client", ["v3rpc.", "client/v3.", "grpc."]),
    ("Go scheduler and sysmon", ["runtime.schedule", "runtime.findRunnable", "runtime.sysmon", "runtime.mcall", "runtime.park_m"]),
]
HUSH = "hush-secrets/hush"


def group(frames):
    for f in reversed(frames):  # outermost first
        for name, pats in GROUPS:
            if any(p in f for p in pats):
                return name
    return "hush, other" if any(HUSH in f for f in frames) else "other"


def main():
    hz, creates = float(sys.argv[1]), float(sys.argv[2])
    counts = collections.defaultdict(collections.Counter)
    pid, frames = None, []
    for line in list(sys.stdin) + [""]:
        if not line.strip():
            if pid is not None:
                counts[pid][group(frames)] += 1
            pid, frames = None, []
        elif line[0] not in " \t":
            pid, frames = line.split()[0], []
        else:
            frames.append(line.strip())
    pids = sorted(counts, key=lambda p: -sum(counts[p].values()))
    ms = lambda c: f"{c / hz / creates * 1000:.3f}"
    print("group\t" + "\t".join("pid " + p for p in pids))
    for name in [g for g, _ in GROUPS] + ["hush, other", "other"]:
        print(name + "\t" + "\t".join(ms(counts[p][name]) for p in pids))
    print("total\t" + "\t".join(ms(sum(counts[p].values())) for p in pids))


if __name__ == "__main__":
    main()
