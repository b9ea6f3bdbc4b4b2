"""Sharded retrieval on 1, 2 and 4 local Dask workers over the same shards (docs/benchmarks.md).

Builds ``--shards`` phenix shard databases once (``phenix.distributed.build_shards``: the library is
``data/molecules`` repeated under new ids up to ``--molecules``, at ``--doses``; embedding inside SQL
on the workers), then starts one loopback cluster per worker count (all at once), answers one warm-up
batch on each (every worker opens its shards) and times ``--rounds`` batches of ``--queries`` random
queries with ``phenix.distributed.search``, alternating between the clusters so that changes in
machine load reach every worker count alike; medians over the rounds. ``--pin`` pins worker i to CPU
i mod cpus. Reported per worker count: wall time per batch (driver), queries/s,
the phenix time inside SQL summed over the shard tasks, the whole task time on the workers, and the
engine's share: wall − the busiest worker's summed task time (scatter, scheduling, transfers, gather
and merge on the critical path) and task − phenix per task (the worker-side wrapper).

    python benches/python/scale_bench.py --molecules 40000 --doses 0.3,1,3,10,30 --shards 8 \
        --queries 1000 -k 10 --workers 1,2,4 --rounds 3 --out /tmp/scale-bench

Needs ``dask[distributed]`` and the extension (``cargo build --release -p phenix-extension``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "python"))

from phenix import distributed as D  # noqa: E402


def library(n: int, path: Path) -> None:
    mols = pd.concat([pd.read_csv(ROOT / "data" / "molecules" / f)[["smiles"]]
                      for f in ("approved_drugs.csv", "nci_5k.csv")], ignore_index=True)
    reps = -(-n // len(mols))
    lib = pd.concat([mols] * reps, ignore_index=True).head(n)
    lib["id"] = [f"M{i:09d}" for i in range(len(lib))]
    lib.to_csv(path, index=False)


def pin(cpu: int) -> int:
    """Pins every thread of this (worker) process to ``cpu``; threads started later inherit it."""
    for tid in os.listdir("/proc/self/task"):
        os.sched_setaffinity(int(tid), {cpu})
    return len(os.sched_getaffinity(0))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--molecules", type=int, default=40000)
    ap.add_argument("--doses", default="0.3,1,3,10,30")
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("-k", type=int, default=10)
    ap.add_argument("--workers", default="1,2,4")
    ap.add_argument("--build-workers", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default="/tmp/phenix-scale-bench")
    ap.add_argument("--reuse", action="store_true", help="keep shards already built in --out")
    ap.add_argument("--pin", action="store_true", help="pin worker i to CPU i mod cpus before its first "
                    "query (phenix then uses one thread per worker; without it every worker's phenix uses all CPUs)")
    ap.add_argument("--json")
    a = ap.parse_args()
    out = Path(a.out)
    doses = [float(x) for x in a.doses.split(",")]
    print(f"cpus {os.cpu_count()}, load average {os.getloadavg()}", flush=True)
    shards = out / "shards"
    report: dict = {"args": vars(a)}
    if not (a.reuse and shards.exists()):
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        library(a.molecules, out / "lib.csv")
        with D.local_cluster(a.build_workers) as cl:
            cl.wait_for_workers(a.build_workers)
            t = time.perf_counter()
            b = D.build_shards(str(out / "lib.csv"), shards, a.shards, doses, client=cl, progress=False)
            wall = time.perf_counter() - t
        rows = b["rows"]
        per = b["per_shard"]
        report["build"] = {"rows": rows, "molecules": b["molecules"], "workers": a.build_workers, "wall_s": wall,
                           "partition_s": b["partition_seconds"], "embed_s": b["build_seconds"],
                           "task_s_sum": sum(s["seconds"] for s in per)}
        print(f"build: {b['molecules']} molecules × {len(doses)} doses = {rows} rows in {a.shards} shards on "
              f"{a.build_workers} workers: {wall:.1f} s wall (partition {b['partition_seconds']:.1f} s, embedding "
              f"{b['build_seconds']:.1f} s = {rows / b['build_seconds']:.0f} rows/s; Σ shard task time "
              f"{report['build']['task_s_sum']:.1f} s → {rows / report['build']['task_s_sum']:.0f} rows/s per "
              f"busy worker)", flush=True)
    size = sum(f.stat().st_size for f in shards.rglob("*") if f.is_file())
    report["shards_bytes"] = size
    print(f"shards on disk: {size / 2**20:.1f} MiB", flush=True)
    rng = np.random.default_rng(0)
    q = rng.standard_normal((a.queries, 256)).astype(np.float32)
    results = {}
    ref = None
    report["pinned"] = a.pin
    counts = [int(x) for x in a.workers.split(",")]
    runs: dict[int, list] = {w: [] for w in counts}
    startup = {}
    with contextlib.ExitStack() as stack:
        # every cluster is up at once (idle workers cost nothing) and the rounds alternate between them,
        # so a change of machine load hits every worker count alike
        clients = {}
        for w in counts:
            t = time.perf_counter()
            cl = stack.enter_context(D.local_cluster(w))
            cl.wait_for_workers(w)
            startup[w] = time.perf_counter() - t
            if a.pin:
                cpus = sorted(os.sched_getaffinity(0))
                for i, addr in enumerate(sorted(cl.scheduler_info()["workers"])):
                    cl.run(pin, cpus[i % len(cpus)], workers=[addr])
            D.search(shards, q[:8], a.k, client=cl)  # warm-up: every worker opens its shards
            clients[w] = cl
        for r in range(a.rounds):
            for w in counts:
                t1 = time.perf_counter()
                res = D.search(shards, q, a.k, client=clients[w])
                wall = time.perf_counter() - t1
                if ref is None:
                    ref = res.ids
                assert (res.ids == ref).all(), "answers differ between worker counts"
                per_worker: dict[int, float] = {}
                for x in res.tasks:
                    per_worker[x["worker_pid"]] = per_worker.get(x["worker_pid"], 0.0) + x["task_seconds"]
                runs[w].append({"wall_s": wall, "phenix_s_sum": sum(x["phenix_seconds"] for x in res.tasks),
                                "busiest_worker_s": max(per_worker.values()),
                                "engine_s_per_batch": wall - max(per_worker.values()),
                                "task_s_sum": sum(x["task_seconds"] for x in res.tasks),
                                "workers_used": len({x["worker_pid"] for x in res.tasks})})
                print(f"round {r + 1}, {w} workers: {wall * 1e3:.0f} ms, load {os.getloadavg()[0]:.1f}", flush=True)
    for w in counts:
        med = {key: statistics.median(x[key] for x in runs[w]) for key in runs[w][0]}
        med["startup_s"] = startup[w]
        med["queries_per_s"] = a.queries / med["wall_s"]
        med["task_minus_phenix_ms_per_task"] = (med["task_s_sum"] - med["phenix_s_sum"]) / a.shards * 1e3
        results[w] = med
    report["search"] = results
    print(f"load average after {os.getloadavg()}")
    print("\n| workers | cluster start | wall per batch | queries/s | Σ phenix_retrieve_all | Σ task | busiest worker's tasks | engine per batch "
          "(wall − busiest worker) | task − phenix per task |\n|---|---|---|---|---|---|---|---|---|")
    for w, m in results.items():
        print(f"| {w} | {m['startup_s']:.1f} s | {m['wall_s'] * 1e3:.0f} ms | {m['queries_per_s']:.0f} | "
              f"{m['phenix_s_sum'] * 1e3:.0f} ms | {m['task_s_sum'] * 1e3:.0f} ms | {m['busiest_worker_s'] * 1e3:.0f} ms | "
              f"{m['engine_s_per_batch'] * 1e3:.0f} ms | "
              f"{m['task_minus_phenix_ms_per_task']:.1f} ms |")
    if a.json:
        Path(a.json).write_text(json.dumps(report, indent=1, default=str))


if __name__ == "__main__":
    main()
