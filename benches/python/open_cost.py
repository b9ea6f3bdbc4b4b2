"""What a new connection and a reader's catch-up cost, with the persisted row-id map (format 2) and
without it (format 1: the live set read from ``<t>_rows``), on one table of ``--rows`` x ``--dim``
float16 rows, in one run (docs/benchmarks.md, "Opening a table").

Each measurement is a new Python process (``/usr/bin/python3`` or the venv's, Python ``sqlite3``):

- **first KNN**: connect, load the extension, run one KNN (k = 10) and time it; then the median of 5
  more (**steady**);
- **catch-up**: a reader connection runs a KNN, another connection of the same process appends 10 rows
  (one transaction), the reader's next KNN is timed; then the other connection deletes one row and the
  reader's next KNN is timed (5 rounds, medians).

The table is built once by the new extension (format 2), measured, then turned into a format-1 table
(``format`` = 1 in ``t_info``, ``t_dead`` dropped: the vector file is the same) and measured with the
``--before`` extension (a build without the row-id map, e.g. main's). A warm-up process reads every
vector first, so both runs start from the page cache.

    cargo build --release -p phenix-extension
    cp /work/main/target/release/libphenix.so /tmp/phenix-before.so   # a build without the change
    .venv/bin/python benches/python/open_cost.py --rows 1000000 --before /tmp/phenix-before.so
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]

CHILD = r"""
import json, sqlite3, statistics, sys, time
import numpy as np
db, ext, dim, what = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
def conn():
    c = sqlite3.connect(db, isolation_level=None)
    c.enable_load_extension(True)
    c.load_extension(ext)
    return c
rng = np.random.default_rng()
def q():
    return rng.standard_normal(dim).astype("<f4").tobytes()
SQL = "SELECT rowid FROM t WHERE v MATCH ? AND k = 10"
def t(c):
    a = time.perf_counter(); c.execute(SQL, (q(),)).fetchall(); return (time.perf_counter() - a) * 1000
out = {}
if what == "warm":
    c = conn(); t(c)
elif what == "first":
    import resource
    a = time.perf_counter()
    c = conn()
    out["connect_ms"] = (time.perf_counter() - a) * 1000
    u0 = resource.getrusage(resource.RUSAGE_SELF)
    out["first_ms"] = t(c)
    u1 = resource.getrusage(resource.RUSAGE_SELF)
    out["steady_ms"] = statistics.median(t(c) for _ in range(5))
    u2 = resource.getrusage(resource.RUSAGE_SELF)
    # CPU of the first query vs one later query (system time: mapping the files into this process).
    out["first_user_ms"] = (u1.ru_utime - u0.ru_utime) * 1000
    out["first_sys_ms"] = (u1.ru_stime - u0.ru_stime) * 1000
    out["first_faults"] = u1.ru_minflt - u0.ru_minflt
    out["steady_user_ms"] = (u2.ru_utime - u1.ru_utime) * 1000 / 5
    out["steady_sys_ms"] = (u2.ru_stime - u1.ru_stime) * 1000 / 5
else:
    r = conn(); w = conn()
    t(r); t(r)
    steady, app, dele = [], [], []
    nxt = w.execute("SELECT max(rowid) FROM t").fetchone()[0] + 1
    for k in range(5):
        steady.append(t(r))
        w.execute("BEGIN")
        for j in range(10):
            w.execute("INSERT INTO t(rowid, v, tag) VALUES (?, ?, 1)", (nxt, q())); nxt += 1
        w.execute("COMMIT")
        app.append(t(r))
        # A row that exists (every run and phase deletes other rows).
        victim = w.execute("SELECT rowid FROM t WHERE rowid >= ? ORDER BY rowid LIMIT 1",
                           (int(rng.integers(1, nxt)),)).fetchone()[0]
        assert w.execute("DELETE FROM t WHERE rowid = ?", (victim,)).rowcount == 1
        dele.append(t(r))
    out = {"steady_ms": statistics.median(steady), "append10_ms": statistics.median(app),
           "delete1_ms": statistics.median(dele)}
print(json.dumps(out))
"""


def child(py: str, db: Path, ext: str, dim: int, what: str) -> dict:
    r = subprocess.run([py, "-c", CHILD, str(db), ext, str(dim), what], capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"{what} with {ext} failed:\n{r.stderr}")
    return json.loads(r.stdout)


def build(db: Path, ext: str, rows: int, dim: int) -> float:
    c = sqlite3.connect(db, isolation_level=None)
    c.enable_load_extension(True)
    c.load_extension(ext)
    c.execute("PRAGMA journal_mode=wal")
    c.execute(f"CREATE VIRTUAL TABLE t USING phenix(v float16[{dim}], tag INTEGER)")
    rng = np.random.default_rng(1)
    a = time.perf_counter()
    chunk = 100_000
    for start in range(0, rows, chunk):
        n = min(chunk, rows - start)
        v = rng.standard_normal((n, dim), dtype=np.float32).astype("<f2")
        c.execute("BEGIN")
        c.executemany(
            "INSERT INTO t(rowid, v, tag) VALUES (?, ?, ?)",
            ((start + i + 1, v[i].tobytes(), (start + i) % 100) for i in range(n)),
        )
        c.execute("COMMIT")
        if (start // chunk) % 10 == 9:
            print(f"  built {start + n:,} rows in {time.perf_counter() - a:.0f} s", flush=True)
    c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    c.close()
    return time.perf_counter() - a


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--after", default=str(ROOT / "target" / "release" / "libphenix.so"))
    ap.add_argument("--before", required=True, help="an extension build without the row-id map")
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--runs", type=int, default=3, help="new processes per measurement (medians)")
    ap.add_argument("--dir", default=None, help="where to build the table (deleted afterwards)")
    ap.add_argument("--json")
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="phenix-open-", dir=a.dir))
    db = tmp / "o.db"
    try:
        print(f"building {a.rows:,} x {a.dim} float16 ...", flush=True)
        secs = build(db, a.after, a.rows, a.dim)
        size = sum(f.stat().st_size for f in tmp.rglob("*") if f.is_file())
        print(f"built in {secs:.0f} s; {size / 1e9:.2f} GB on disk", flush=True)
        report = {"rows": a.rows, "dim": a.dim, "build_s": secs, "bytes": size}
        for label, ext in (("after (row-id map, format 2)", a.after), ("before (format 1)", a.before)):
            if ext == a.before:
                c = sqlite3.connect(db, isolation_level=None)
                c.execute("UPDATE t_info SET value = 1 WHERE key = 'format'")
                c.execute("DROP TABLE t_dead")
                c.close()
            child(a.python, db, ext, a.dim, "warm")
            firsts = [child(a.python, db, ext, a.dim, "first") for _ in range(a.runs)]
            catch = [child(a.python, db, ext, a.dim, "catch") for _ in range(a.runs)]
            med = lambda rs, k: statistics.median(r[k] for r in rs)  # noqa: E731
            r = {
                "connect_ms": med(firsts, "connect_ms"),
                "first_knn_ms": med(firsts, "first_ms"),
                "steady_knn_ms": med(firsts, "steady_ms"),
                "first_cpu_user_sys_ms": (med(firsts, "first_user_ms"), med(firsts, "first_sys_ms")),
                "steady_cpu_user_sys_ms": (med(firsts, "steady_user_ms"), med(firsts, "steady_sys_ms")),
                "first_minor_faults": med(firsts, "first_faults"),
                "after_append10_ms": med(catch, "append10_ms"),
                "after_delete1_ms": med(catch, "delete1_ms"),
                "catchup_steady_ms": med(catch, "steady_ms"),
            }
            report[label] = r
            print(
                f"{label}: open + load_extension {r['connect_ms']:.1f} ms, first KNN {r['first_knn_ms']:.1f} ms, "
                f"steady {r['steady_knn_ms']:.1f} ms (first/steady {r['first_knn_ms'] / r['steady_knn_ms']:.2f}); "
                f"next KNN after another connection appends 10 rows {r['after_append10_ms']:.1f} ms, "
                f"after it deletes 1 row {r['after_delete1_ms']:.1f} ms (steady {r['catchup_steady_ms']:.1f} ms); "
                f"CPU user/sys of the first query {r['first_cpu_user_sys_ms'][0]:.0f}/{r['first_cpu_user_sys_ms'][1]:.0f} ms, "
                f"of a steady one {r['steady_cpu_user_sys_ms'][0]:.0f}/{r['steady_cpu_user_sys_ms'][1]:.0f} ms, "
                f"{r['first_minor_faults']:.0f} minor faults in the first",
                flush=True,
            )
        if a.json:
            Path(a.json).write_text(json.dumps(report, indent=1))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
