"""phenix's IVF index through SQL (the loadable extension under Python's sqlite3): load rate, build
time, index memory, recall@10 / latency over nprobe, exact search on the same table (`exact = 1`),
and the first query of a new process (snapshot read + decode); optionally next to the same index in
phenix-core (target/release/ivf) on the same data.

The data is ivf_compare.py's (embedding-shaped clusters, unit length, rounded to float16; exact
cosine top-10 by faiss's flat index), so the figures line up with docs/benchmarks.md's IVF section.
Every engine runs in its own child process (peak RSS is its own).

    cargo build --release -p phenix-extension
    .venv/bin/python benches/python/ivf_sql.py --rows 1000000 --dim 256 --queries 300 --lists 2048
    # with phenix-core's own run beside it: cargo build --release -p phenix-benches --bin ivf; add --core

writes <dir>/sql.jsonl and docs/img/ivf-sql-recall-latency.png, and prints markdown tables.
"""

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
import ivf_compare as ic  # noqa: E402

NPROBES = [1, 4, 8, 16, 32, 64, 128, 256]
EXT = os.path.join(ROOT, "target", "release", "libphenix.so")


def connect(db):
    c = sqlite3.connect(db, isolation_level=None)
    c.enable_load_extension(True)
    c.load_extension(EXT)
    return c


def raw(d):
    """The stored rows as written by ivf_compare (f16-rounded, not re-normalised: what phenix stores)."""
    dim = int(open(os.path.join(d, "dim.txt")).read())
    base = np.fromfile(os.path.join(d, "base.f32"), dtype=np.float32).reshape(-1, dim)
    query = np.fromfile(os.path.join(d, "query.f32"), dtype=np.float32).reshape(-1, dim)
    gt = np.fromfile(os.path.join(d, "gt.i32"), dtype=np.int32).reshape(-1, 10)
    return base, query, gt


def hwm_kb():
    """Peak RSS of this process (VmHWM: reset at exec, unlike ru_maxrss, which a child inherits from
    the parent that generated the data)."""
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def run_sql(d, lists, out, exact_queries):
    base, query, gt = raw(d)
    n, dim = base.shape
    db = os.path.join(d, "sql.db")
    for p in [db, db + "-journal"]:
        if os.path.exists(p):
            os.remove(p)
    subprocess.run(["rm", "-rf", db + "-phenix"], check=True)
    c = connect(db)
    c.execute(f"CREATE VIRTUAL TABLE t USING phenix(v float16[{dim}] distance=cosine, index=ivf(lists={lists}))")
    t = time.time()
    c.execute("BEGIN")
    step = 50_000
    for a in range(0, n, step):
        b = min(n, a + step)
        blobs = base[a:b].astype(np.float16)
        c.executemany("INSERT INTO t(rowid, v) VALUES (?, ?)", ((a + i + 1, blobs[i].tobytes()) for i in range(b - a)))
    c.execute("COMMIT")
    load = time.time() - t
    t = time.time()
    c.execute("INSERT INTO t(t) VALUES ('build-index')")
    build = time.time() - t
    st = json.loads(c.execute("SELECT phenix_index_status('t')").fetchone()[0])
    snap = [f for f in os.listdir(db + "-phenix") if f.endswith(".ivf")]
    snap_bytes = os.path.getsize(os.path.join(db + "-phenix", snap[0]))
    ic.emit(out, engine="phenix IVF via SQL", rows=n, dim=dim, lists=lists, threads=2, load_s=round(load, 2),
            load_rows_per_s=round(n / load), build_s=round(build, 2), index_bytes=st["memory_bytes"],
            snapshot_bytes=snap_bytes, peak_rss_kb=hwm_kb())
    c.close()
    queries(d, out, exact_queries, "phenix IVF via SQL")


def queries(d, out, exact_queries, engine):
    """The recall / latency curve on the table built by run_sql, in this process (after one warm-up
    query, which loads the snapshot)."""
    base, query, gt = raw(d)
    del base
    c = connect(os.path.join(d, "sql.db"))
    qb = [q.astype(np.float32).tobytes() for q in query]
    c.execute("SELECT rowid FROM t WHERE v MATCH ?1 AND k = 10", (qb[0],)).fetchall()
    sql = "SELECT rowid FROM t WHERE v MATCH ?1 AND k = 10 AND nprobe = ?2"
    for nprobe in NPROBES:
        found = []
        t = time.time()
        for q in qb:
            found.append([r - 1 for (r,) in c.execute(sql, (q, nprobe))])
        ms = (time.time() - t) * 1e3 / len(qb)
        ic.emit(out, engine=engine, param=nprobe, recall=round(ic.recall(found, gt), 4), ms=round(ms, 3))
    found = []
    t = time.time()
    for q in qb[:exact_queries]:
        found.append([r - 1 for (r,) in c.execute("SELECT rowid FROM t WHERE v MATCH ?1 AND k = 10 AND exact = 1", (q,))])
    ms = (time.time() - t) * 1e3 / exact_queries
    ic.emit(out, engine=engine.replace("IVF", "exact"), param=0, recall=round(ic.recall(found, gt[:exact_queries]), 4), ms=round(ms, 3))
    c.close()


def run_sql_open(d, out):
    """A new process: the first KNN (reads and decodes the snapshot), then the same query again."""
    dim = int(open(os.path.join(d, "dim.txt")).read())
    query = np.fromfile(os.path.join(d, "query.f32"), dtype=np.float32).reshape(-1, dim)
    c = connect(os.path.join(d, "sql.db"))
    q = query[0].astype(np.float32).tobytes()
    t = time.time()
    c.execute("SELECT rowid FROM t WHERE v MATCH ?1 AND k = 10", (q,)).fetchall()
    first = time.time() - t
    t = time.time()
    c.execute("SELECT rowid FROM t WHERE v MATCH ?1 AND k = 10", (q,)).fetchall()
    second = time.time() - t
    ic.emit(out, engine="phenix IVF via SQL, new process", first_query_ms=round(first * 1e3, 1),
            second_query_ms=round(second * 1e3, 2), peak_rss_kb=hwm_kb())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--exact-queries", type=int, default=50)
    ap.add_argument("--lists", type=int, default=0, help="0: 4*sqrt(rows)")
    ap.add_argument("--dir", default="/tmp/phenix-ivf-sql")
    ap.add_argument("--core", action="store_true", help="also run phenix-core's target/release/ivf")
    ap.add_argument("--keep-data", action="store_true")
    ap.add_argument("--child", default="")
    ap.add_argument("--report", action="store_true")
    ap.add_argument("--queries-only", action="store_true", help="re-measure the curve on the table of a previous run")
    ap.add_argument("--plot", default=os.path.join(ROOT, "docs", "img", "ivf-sql-recall-latency.png"))
    a = ap.parse_args()
    lists = a.lists or int(4 * np.sqrt(a.rows))
    res = os.path.join(a.dir, "sql.jsonl")
    if a.child:
        with open(res, "a") as out:
            if a.child == "sql":
                run_sql(a.dir, lists, out, a.exact_queries)
            elif a.child == "sql-queries":
                queries(a.dir, out, a.exact_queries, "phenix IVF via SQL")
            else:
                run_sql_open(a.dir, out)
        return
    if a.queries_only:
        subprocess.run([sys.executable, __file__, "--child", "sql-queries", "--dir", a.dir,
                        "--exact-queries", str(a.exact_queries)], check=True)
    elif not a.report:
        if not (a.keep_data and os.path.exists(os.path.join(a.dir, "gt.i32"))):
            ic.make_data(a.dir, a.rows, a.dim, a.queries)
        open(res, "w").close()
        for child in ["sql", "sql-open"]:
            subprocess.run([sys.executable, __file__, "--child", child, "--dir", a.dir, "--lists", str(lists),
                            "--rows", str(a.rows), "--exact-queries", str(a.exact_queries)], check=True)
        if a.core:
            exe = os.path.join(ROOT, "target", "release", "ivf")
            t = subprocess.run([exe, a.dir, str(lists), "2"], capture_output=True, text=True, check=True)
            with open(res, "a") as out:
                for line in t.stdout.splitlines():
                    r = json.loads(line)
                    r["engine"] = r["engine"].replace("phenix", "phenix-core")
                    out.write(json.dumps(r) + "\n")
                    print(json.dumps(r), file=sys.stderr)
    results = [json.loads(l) for l in open(res)]
    n = next(r["rows"] for r in results if "rows" in r)
    ic.plot(results, a.plot, f"{n:,} x {a.dim} (cosine, f16 rows), 2 threads, {lists} lists, through SQL")
    print(f"plot: {a.plot}", file=sys.stderr)
    for r in results:
        if "recall" not in r:
            print(json.dumps(r))
    print(ic.table(results))


if __name__ == "__main__":
    main()
