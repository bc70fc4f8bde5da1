"""Commit latency and throughput of 3 Raft nodes: DurableJournal vs pysyncobj's FileJournal.

    python -m tests.changelog.raft_bench [--rounds 3] [--seq 500] [--conc 5000]

Both run the same make_conf settings (password, appendEntriesUseBatch=False); only the journal
(and DurableSyncObj's fsync-before-answer transport) differs. Rounds alternate between the two
so load from other processes on the machine hits both alike. Prints, never asserts.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from tests.changelog.raft_counter_node import Cluster


def run_once(kind: str, base: Path, n_seq: int, n_conc: int, inflight: int) -> dict[str, float]:
    c = Cluster(base, journal=kind)
    try:
        c.start()
        leader = c.wait_leader()
        seq = leader.request("bench_seq", timeout_s=300, n=n_seq)
        conc = leader.request("bench_conc", timeout_s=300, n=n_conc, inflight=inflight)
        fsyncs = [n.request("status")["fsyncs"] for n in c.nodes]
        return {
            "p50_ms": seq["p50_ms"],
            "p99_ms": seq["p99_ms"],
            "commits_per_s": conc["commits_per_s"],
            "failed": conc["failed"],
            "fsyncs_per_node": statistics.mean(fsyncs) if fsyncs[0] is not None else 0.0,
            "entries": n_seq + n_conc,
        }
    finally:
        c.close()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seq", type=int, default=500)
    p.add_argument("--conc", type=int, default=5000)
    p.add_argument("--inflight", type=int, default=128)
    args = p.parse_args()
    results: dict[str, list[dict[str, float]]] = {"file": [], "durable": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for kind in ("file", "durable"):
                res = run_once(kind, Path(tmp) / f"{kind}{r}", args.seq, args.conc, args.inflight)
                results[kind].append(res)
                print(f"round {r} {kind:8s} " + " ".join(f"{k}={v:.2f}" for k, v in res.items()))
    print(f"\nmedian of {args.rounds} rounds, 3 nodes on 127.0.0.1:")
    print(f"{'journal':10s} {'seq p50 ms':>11s} {'seq p99 ms':>11s} {'commits/s':>10s} fsyncs/node")
    for kind, rows in results.items():
        med = {k: statistics.median(row[k] for row in rows) for k in rows[0]}
        print(
            f"{kind:10s} {med['p50_ms']:11.2f} {med['p99_ms']:11.2f} {med['commits_per_s']:10.0f}"
            f" {med['fsyncs_per_node']:.0f} for {med['entries']:.0f} entries"
        )


if __name__ == "__main__":
    main()
