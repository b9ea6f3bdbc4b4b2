"""phenix IVF-SQ8 vs faiss (IVFFlat, IVF-SQ8, IVFPQ) vs usearch (HNSW, f16): recall@10 / latency.

One data set for all engines: embedding-shaped vectors (a mixture of clusters in a low-dimensional
subspace, plus isotropic noise), unit length, rounded to float16 (what phenix stores); the exact top-10
under cosine is computed on those rounded rows with faiss's flat inner-product index. Each engine runs
in its own child process (so its peak RSS is its own), on the same threads, one query at a time.

    .venv/bin/python benches/python/ivf_compare.py --rows 1000000 --dim 256 --threads 2

writes <dir>/results.jsonl and docs/img/ivf-recall-latency.png. phenix runs as
target/release/ivf (build it first: cargo build --release -p phenix-benches --bin ivf).
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

NPROBES = [1, 4, 8, 16, 32, 64, 128, 256]
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def gen(n, dim, seed):
    """Embedding-shaped rows: one of 2000 cluster centres in a 32-dimensional subspace, a spread
    within that subspace and isotropic noise (spread 1.0 and noise 3.0 give a curve where one probed
    list of 1024 finds a third of the true top-10, as for real embeddings, unlike well-separated
    clusters), unit length, rounded to float16."""
    basis = np.random.default_rng(1).standard_normal((32, dim)).astype(np.float32)
    centers = np.random.default_rng(2).standard_normal((2000, 32)).astype(np.float32) @ basis
    rng = np.random.default_rng(seed)
    out = np.empty((n, dim), dtype=np.float32)
    step = 100_000
    for a in range(0, n, step):
        b = min(n, a + step)
        x = centers[rng.integers(0, len(centers), b - a)]
        x += rng.standard_normal((b - a, 32)).astype(np.float32) @ basis
        x += 3.0 * rng.standard_normal((b - a, dim)).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        out[a:b] = x.astype(np.float16).astype(np.float32)
    return out


def make_data(d, rows, dim, nq):
    import faiss

    os.makedirs(d, exist_ok=True)
    t = time.time()
    base = gen(rows, dim, 10)
    query = gen(nq, dim, 11)
    base.tofile(os.path.join(d, "base.f32"))
    query.tofile(os.path.join(d, "query.f32"))
    # Exact cosine on the stored (f16-rounded) rows: inner product of re-normalised copies.
    faiss.omp_set_num_threads(2)
    flat = faiss.IndexFlatIP(dim)
    flat.add(base / np.linalg.norm(base, axis=1, keepdims=True))
    _, gt = flat.search(query / np.linalg.norm(query, axis=1, keepdims=True), 10)
    gt.astype(np.int32).tofile(os.path.join(d, "gt.i32"))
    with open(os.path.join(d, "dim.txt"), "w") as f:
        f.write(str(dim))
    print(f"data: {rows} x {dim} in {time.time() - t:.1f} s", file=sys.stderr)


def load(d):
    """The stored rows and queries, re-normalised: cosine is then exactly the inner product faiss
    computes (the f16 rounding leaves norms off 1 by ~1e-3, enough to reorder near-ties)."""
    dim = int(open(os.path.join(d, "dim.txt")).read())
    base = np.fromfile(os.path.join(d, "base.f32"), dtype=np.float32).reshape(-1, dim)
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    query = np.fromfile(os.path.join(d, "query.f32"), dtype=np.float32).reshape(-1, dim)
    query /= np.linalg.norm(query, axis=1, keepdims=True)
    gt = np.fromfile(os.path.join(d, "gt.i32"), dtype=np.int32).reshape(-1, 10)
    return base, query, gt


def rss_kb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def emit(out, **kw):
    out.write(json.dumps(kw) + "\n")
    out.flush()
    print(json.dumps(kw), file=sys.stderr)


def recall(found, gt):
    return float(np.mean([len(set(f[:10]) & set(g)) / 10 for f, g in zip(found, gt)]))


def run_faiss(d, kind, threads, lists, out):
    import faiss

    faiss.omp_set_num_threads(threads)
    base, query, gt = load(d)
    n, dim = base.shape
    rss0 = rss_kb()
    quant = faiss.IndexFlatIP(dim)
    if kind == "IVFFlat":
        index = faiss.IndexIVFFlat(quant, dim, lists, faiss.METRIC_INNER_PRODUCT)
    elif kind == "IVF-SQ8":
        index = faiss.IndexIVFScalarQuantizer(quant, dim, lists, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
    else:
        index = faiss.IndexIVFPQ(quant, dim, lists, 32, 8, faiss.METRIC_INNER_PRODUCT)
    # The same k-means work as phenix: 10 iterations on a 64-per-list sample.
    index.cp.niter = 10
    t = time.time()
    sample = base[np.random.default_rng(0).choice(n, min(n, 64 * lists), replace=False)]
    index.train(sample)
    index.add(base)
    build = time.time() - t
    size = faiss.serialize_index(index).nbytes
    emit(out, engine=f"faiss {kind}", rows=n, dim=dim, lists=lists, threads=threads, build_s=round(build, 2),
         index_bytes=int(size), rss_before_kb=rss0, peak_rss_kb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    for nprobe in NPROBES:
        index.nprobe = nprobe
        found = []
        t = time.time()
        for q in query:
            _, i = index.search(q[None, :], 10)
            found.append(i[0])
        ms = (time.time() - t) * 1e3 / len(query)
        emit(out, engine=f"faiss {kind}", param=nprobe, recall=round(recall(found, gt), 4), ms=round(ms, 3))


def run_usearch(d, threads, out):
    from usearch.index import Index

    base, query, gt = load(d)
    n, dim = base.shape
    rss0 = rss_kb()
    index = Index(ndim=dim, metric="cos", dtype="f16", connectivity=16, expansion_add=128)
    t = time.time()
    index.add(np.arange(n, dtype=np.uint64), base, threads=threads)
    build = time.time() - t
    emit(out, engine="usearch HNSW f16", rows=n, dim=dim, threads=threads, build_s=round(build, 2),
         index_bytes=int(index.memory_usage), rss_before_kb=rss0,
         peak_rss_kb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    for ef in [16, 32, 64, 128, 256]:
        index.expansion_search = ef
        found = []
        t = time.time()
        for q in query:
            m = index.search(q, 10, threads=threads)
            found.append(np.asarray(m.keys))
        ms = (time.time() - t) * 1e3 / len(query)
        emit(out, engine="usearch HNSW f16", param=ef, recall=round(recall(found, gt), 4), ms=round(ms, 3))


def plot(results, path, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5))
    engines = sorted({r["engine"] for r in results if "recall" in r})
    for e in engines:
        pts = [(r["ms"], r["recall"]) for r in results if r.get("engine") == e and "recall" in r]
        if e == "phenix exact":
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], marker="*", s=150, label=e, zorder=3)
            continue
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=e)
    ax.set_xscale("log")
    ax.set_xlabel("latency per query (ms, one query at a time, log scale)")
    ax.set_ylabel("recall@10 vs exact cosine top-10")
    ax.axhline(0.95, color="grey", lw=0.5, ls="--")
    ax.set_title(title)
    ax.grid(True, which="both", lw=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def table(results):
    """Markdown: build/memory per engine, then recall and latency per setting."""
    lines = ["| engine | build (s) | index bytes | peak RSS of its process |", "|---|---|---|---|"]
    for r in results:
        if "build_s" in r:
            lines.append(f"| {r['engine']} | {r['build_s']} | {r['index_bytes'] / 1e6:.0f} MB | {r['peak_rss_kb'] / 1e6:.2f} GB |")
    lines += ["", "| engine | nprobe / ef | recall@10 | ms per query |", "|---|---|---|---|"]
    for r in results:
        if "recall" in r:
            lines.append(f"| {r['engine']} | {r['param']} | {r['recall']:.3f} | {r['ms']:.2f} |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--lists", type=int, default=0, help="0: 4*sqrt(rows)")
    ap.add_argument("--dir", default="/tmp/phenix-ivf")
    ap.add_argument("--engines", default="phenix,IVF-SQ8,usearch,IVFFlat,IVFPQ")
    ap.add_argument("--keep-data", action="store_true")
    ap.add_argument("--child", default="")
    ap.add_argument("--report", action="store_true", help="only re-plot and print tables of results.jsonl")
    ap.add_argument("--plot", default=os.path.join(ROOT, "docs", "img", "ivf-recall-latency.png"))
    a = ap.parse_args()
    lists = a.lists or int(4 * np.sqrt(a.rows))
    res = os.path.join(a.dir, "results.jsonl")
    if a.child:
        with open(res, "a") as out:
            if a.child == "usearch":
                run_usearch(a.dir, a.threads, out)
            else:
                run_faiss(a.dir, a.child, a.threads, lists, out)
        return
    if a.report:
        results = [json.loads(l) for l in open(res)]
        n = next(r["rows"] for r in results if "rows" in r)
        plot(results, a.plot, f"{n:,} x {a.dim} (cosine, f16 rows), {a.threads} threads, {lists} lists")
        print(table(results))
        return
    if not (a.keep_data and os.path.exists(os.path.join(a.dir, "gt.i32"))):
        make_data(a.dir, a.rows, a.dim, a.queries)
    open(res, "w").close()
    for e in a.engines.split(","):
        if e == "phenix":
            exe = os.path.join(ROOT, "target", "release", "ivf")
            t = subprocess.run([exe, a.dir, str(lists), str(a.threads)], capture_output=True, text=True, check=True)
            with open(res, "a") as out:
                for line in t.stdout.splitlines():
                    out.write(line + "\n")
                    print(line, file=sys.stderr)
        else:
            subprocess.run([sys.executable, __file__, "--child", e, "--dir", a.dir, "--threads", str(a.threads),
                            "--lists", str(lists), "--rows", str(a.rows)], check=True)
    results = [json.loads(l) for l in open(res)]
    n = next(r["rows"] for r in results if "rows" in r)
    plot(results, a.plot, f"{n:,} x {a.dim} (cosine, f16 rows), {a.threads} threads, {lists} lists")
    print(f"plot: {a.plot}", file=sys.stderr)
    print(table(results))


if __name__ == "__main__":
    main()
