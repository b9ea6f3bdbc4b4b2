"""Dask distributed vs Ray on one machine: start-up, per-task overhead, moving numpy arrays.

The measurement behind phenix.distributed's engine choice (docs/scale-out.md). Both engines run N
local worker processes on loopback; each figure is the median of --repeat runs inside one process
(Dask and Ray alternate per round, so both see the same machine load).

    python benches/python/engine_compare.py --workers 3 --tasks 1000 --repeat 3

Needs ``dask[distributed]`` and ``ray`` (a throw-away venv is fine).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import numpy as np


def noop(x):
    return x


def total(a):
    return float(a.sum())


def make(n_bytes):
    return np.ones(n_bytes // 8, dtype=np.float64)


def pid(_=None):
    return os.getpid()


def listening() -> tuple[int, int]:
    """(listening TCP sockets of this process and its children, those not bound to loopback)."""
    import psutil

    procs = [psutil.Process()] + psutil.Process().children(recursive=True)
    socks = set()
    for p in procs:
        try:
            for c in p.net_connections(kind="inet"):
                if c.status == psutil.CONN_LISTEN:
                    socks.add((c.laddr.ip, c.laddr.port))
        except psutil.Error:
            pass
    outside = [s for s in socks if not (s[0].startswith("127.") or s[0] == "::1")]
    return len(socks), len(outside)


def dask_round(workers: int, tasks: int, sizes: list[int]) -> dict:
    import distributed

    out = {}
    t0 = time.perf_counter()
    cluster = distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                                       dashboard_address=None, silence_logs=40)
    client = distributed.Client(cluster)
    client.wait_for_workers(workers)
    out["startup_s"] = time.perf_counter() - t0
    out["listening_sockets"], out["listening_not_loopback"] = listening()
    # first task on every worker (imports, connections)
    client.gather(client.map(pid, range(workers), pure=False))
    t = time.perf_counter()
    for i in range(100):
        client.submit(noop, i, pure=False).result()
    out["roundtrip_ms"] = (time.perf_counter() - t) / 100 * 1e3
    t = time.perf_counter()
    client.gather(client.map(noop, range(tasks), pure=False))
    out["task_us_in_bulk"] = (time.perf_counter() - t) / tasks * 1e6
    for sz in sizes:
        a = np.ones(sz // 8)
        t = time.perf_counter()
        f = client.scatter(a, broadcast=False)
        client.submit(total, f, pure=False).result()
        out[f"to_worker_{sz >> 20}MiB_ms"] = (time.perf_counter() - t) * 1e3
        del f
        t = time.perf_counter()
        client.submit(make, sz, pure=False).result()
        out[f"from_worker_{sz >> 20}MiB_ms"] = (time.perf_counter() - t) * 1e3
        # the same array to every worker (a query batch broadcast)
        t = time.perf_counter()
        f = client.scatter(a, broadcast=True)
        client.gather([client.submit(total, f, pure=False, key=f"b{i}-{sz}") for i in range(workers)])
        out[f"broadcast_{sz >> 20}MiB_ms"] = (time.perf_counter() - t) * 1e3
        del f
    t = time.perf_counter()
    client.close()
    cluster.close()
    out["shutdown_s"] = time.perf_counter() - t
    return out


def ray_round(workers: int, tasks: int, sizes: list[int]) -> dict:
    import ray

    out = {}
    t0 = time.perf_counter()
    ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False, configure_logging=False,
             _node_ip_address="127.0.0.1")
    rnoop, rtotal, rmake, rpid = (ray.remote(num_cpus=1)(f) for f in (noop, total, make, pid))
    # ray starts worker processes lazily: start-up is until every worker has answered once
    ray.get([rpid.remote(i) for i in range(workers)])
    out["startup_s"] = time.perf_counter() - t0
    out["listening_sockets"], out["listening_not_loopback"] = listening()
    t = time.perf_counter()
    for i in range(100):
        ray.get(rnoop.remote(i))
    out["roundtrip_ms"] = (time.perf_counter() - t) / 100 * 1e3
    t = time.perf_counter()
    ray.get([rnoop.remote(i) for i in range(tasks)])
    out["task_us_in_bulk"] = (time.perf_counter() - t) / tasks * 1e6
    for sz in sizes:
        a = np.ones(sz // 8)
        t = time.perf_counter()
        ref = ray.put(a)
        ray.get(rtotal.remote(ref))
        out[f"to_worker_{sz >> 20}MiB_ms"] = (time.perf_counter() - t) * 1e3
        del ref
        t = time.perf_counter()
        ray.get(rmake.remote(sz))
        out[f"from_worker_{sz >> 20}MiB_ms"] = (time.perf_counter() - t) * 1e3
        t = time.perf_counter()
        ref = ray.put(a)
        ray.get([rtotal.remote(ref) for _ in range(workers)])
        out[f"broadcast_{sz >> 20}MiB_ms"] = (time.perf_counter() - t) * 1e3
        del ref
    t = time.perf_counter()
    ray.shutdown()
    out["shutdown_s"] = time.perf_counter() - t
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, default=3)
    ap.add_argument("--tasks", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--sizes-mib", default="1,64")
    ap.add_argument("--json")
    a = ap.parse_args()
    sizes = [int(x) << 20 for x in a.sizes_mib.split(",")]
    runs: dict[str, list[dict]] = {"dask": [], "ray": []}
    print(f"load average before: {os.getloadavg()}")
    for r in range(a.repeat):
        runs["dask"].append(dask_round(a.workers, a.tasks, sizes))
        runs["ray"].append(ray_round(a.workers, a.tasks, sizes))
        print(f"round {r + 1}: dask {runs['dask'][-1]}\n         ray {runs['ray'][-1]}", flush=True)
    print(f"load average after: {os.getloadavg()}")
    keys = list(runs["dask"][0])
    print(f"\nmedians of {a.repeat} rounds, {a.workers} worker processes\n| measure | Dask | Ray |\n|---|---|---|")
    med = {}
    for k in keys:
        d = statistics.median(x[k] for x in runs["dask"])
        y = statistics.median(x[k] for x in runs["ray"])
        med[k] = {"dask": d, "ray": y}
        print(f"| {k} | {d:.3g} | {y:.3g} |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"runs": runs, "medians": med}, f, indent=1)


if __name__ == "__main__":
    main()
