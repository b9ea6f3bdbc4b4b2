"""Batched exact top-k side by side: faiss IndexFlatIP (f32 BLAS) against every phenix batch path and
faer's plain f32 GEMM, on the same data, in one run.

    cargo build --release -p phenix-benches --bin batch
    .venv/bin/python benches/python/batch_side_by_side.py --rows 1000000 --dim 256 --queries 1000 \
        --k 10 --threads 2 --rounds 2

Each round runs `target/release/batch` (phenix paths, faer GEMM and the units' peak microbenchmark, in
its own process) and then faiss on the rows that binary wrote (`--dump`): the f16 rows widened to f32
and L2-normalised, so IndexFlatIP ranks by the same cosine phenix computes. Only the search is timed
for faiss (the index is built before); phenix's time includes rounding the f16 rows for its unit, which
it does on every call. Ratios are taken within a round, by wall time and by CPU time (process CPU
seconds: on a machine shared with other jobs, wall time mostly measures the scheduler; faiss's OpenMP
threads also spin while waiting, which CPU time counts). "of unit peak" divides the path's GFLOP per
CPU-second by the unit's peak per CPU-second from the microbenchmark run right after it. The phenix ids are checked against faiss's
(overlap of the top-k sets; f16/f32 rounding can swap near-ties) and against each other.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import faiss
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_phenix(args, dump):
    cmd = [
        os.path.join(ROOT, "target", "release", "batch"),
        "--rows", str(args.rows), "--dim", str(args.dim), "--queries", str(args.queries),
        "--k", str(args.k), "--threads", str(args.threads), "--metric", "cosine",
        "--repeat", str(args.repeat), "--dump", dump,
    ]
    if args.paths:
        cmd += ["--paths", args.paths]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def run_faiss(args, dump):
    rows = np.fromfile(os.path.join(dump, "rows.f16"), dtype="<f2").reshape(args.rows, args.dim)
    x = rows.astype(np.float32)
    del rows
    faiss.normalize_L2(x)
    q = np.fromfile(os.path.join(dump, "queries.f32"), dtype="<f4").reshape(args.queries, args.dim)
    q = np.ascontiguousarray(q)
    faiss.normalize_L2(q)
    faiss.omp_set_num_threads(args.threads)
    index = faiss.IndexFlatIP(args.dim)
    index.add(x)
    del x
    times = []
    cpus = []
    ids = None
    for _ in range(args.repeat):
        t = time.perf_counter()
        c = time.process_time()
        _, ids = index.search(q, args.k)
        times.append(time.perf_counter() - t)
        cpus.append(time.process_time() - c)
    return sorted(times)[len(times) // 2], sorted(cpus)[len(cpus) // 2], ids


def overlap(a, b):
    return float(np.mean([len(set(x) & set(y)) / len(x) for x, y in zip(a, b)]))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=1, help="timed runs per engine per round (median)")
    ap.add_argument("--paths", default="", help="phenix paths (default: all this CPU runs, and faer)")
    args = ap.parse_args()
    flops = 2.0 * args.rows * args.queries * args.dim
    with tempfile.TemporaryDirectory(prefix="phenix-batch-") as dump:
        for rnd in range(1, args.rounds + 1):
            load0 = os.getloadavg()[0]
            res = run_phenix(args, dump)
            fs, fc, fids = run_faiss(args, dump)
            load1 = os.getloadavg()[0]
            setup = res[0]
            print(f"\nround {rnd}: {args.queries} queries x {args.rows} x {args.dim}, k = {args.k}, "
                  f"{args.threads} threads, cosine; CPU {setup.get('cpu')}; load {load0:.1f} -> {load1:.1f}")
            print(f"{'engine':<28}{'seconds':>9}{'GFLOP/s':>9}{'vs faiss':>9}{'CPU s':>9}"
                  f"{'vs faiss':>9}{'re-scored/q':>12}{'of unit peak':>13}{'top-k overlap':>14}")
            print(f"{'faiss IndexFlatIP (f32)':<28}{fs:>9.3f}{flops / fs / 1e9:>9.1f}{1.0:>9.2f}"
                  f"{fc:>9.3f}{1.0:>9.2f}")
            for r in res[1:]:
                name = r["what"]
                s = r["seconds"]
                extra = ""
                ov = ""
                path = name.removeprefix("phenix_")
                idf = os.path.join(dump, f"{path}.ids")
                if name.startswith("phenix_") and os.path.exists(idf):
                    pids = np.fromfile(idf, dtype="<u8").reshape(args.queries, args.k)
                    ov = f"{overlap(pids, fids):.4f}"
                rq = r.get("rescored_per_query")
                sp = r.get("share_of_peak")
                c = r.get("cpu_seconds", float("nan"))
                print(f"{name:<28}{s:>9.3f}{r['gflops']:>9.1f}{fs / s:>9.2f}{c:>9.3f}{fc / c:>9.2f}"
                      f"{(f'{rq:.1f}' if rq else ''):>12}{(f'{100 * sp:.1f} %' if sp else ''):>13}{ov:>14}")
                if r.get("unit_peak_gflops"):
                    extra = (f"  (unit peak in the same process: {r['unit_peak_gflops']:.0f} GFLOP/s wall, "
                             f"{r['unit_peak_per_cpu_s']:.0f} GFLOP per CPU-second; this path "
                             f"{r['gflops_per_cpu_s']:.0f} per CPU-second, best run "
                             f"{r['best_gflops_per_cpu_s']:.0f} = {100 * r['best_share_of_peak']:.1f} % of peak)")
                    print(extra)
            by = {r["what"]: r for r in res[1:]}
            base = by.get("faer_gemm_f32")
            for name in ("phenix_amx", "phenix_avx512bf16"):
                if base and name in by:
                    r = by[name]
                    print(f"{name} vs faer GEMM alone: {base['seconds'] / r['seconds']:.2f}x wall, "
                          f"{base['cpu_seconds'] / r['cpu_seconds']:.2f}x CPU; vs faiss: "
                          f"{fs / r['seconds']:.2f}x wall, {fc / r['cpu_seconds']:.2f}x CPU")
            # The exact paths (GEMM included) must agree with each other exactly.
            ref = None
            for path in ("gemm", "amx", "avx512bf16"):
                idf = os.path.join(dump, f"{path}.ids")
                if os.path.exists(idf):
                    ids = np.fromfile(idf, dtype="<u8")
                    if ref is not None and not np.array_equal(ref, ids):
                        print(f"ERROR: the {path} ids differ from another exact path's", file=sys.stderr)
                        sys.exit(1)
                    ref = ids


if __name__ == "__main__":
    main()
