"""How long a reader's next query takes after another connection commits, on a 1M-row table: a
full load of the rowid <-> slot map (first query; after a delete), or only the appended rows (after
inserts). Run: cargo build --release -p phenix-extension && .venv/bin/python benches/python/reader_refresh.py
"""
import os
import shutil
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

ext = str(Path(__file__).resolve().parents[2] / "target" / "release" / "libphenix.so")
tmp = tempfile.mkdtemp(prefix="phenix-refresh-")
db = os.path.join(tmp, "f.db")
def conn():
    c = sqlite3.connect(db, isolation_level=None); c.enable_load_extension(True); c.load_extension(ext); return c
w = conn(); w.execute("PRAGMA journal_mode=wal")
w.execute("CREATE VIRTUAL TABLE t USING phenix(v float16[8], tag INTEGER)")
w.execute("BEGIN")
w.execute("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < 1000000) INSERT INTO t(rowid, v, tag) SELECT i, json_array(i % 7, 1, 2, 3, 4, 5, 6, i % 11), i % 100 FROM n")
w.execute("COMMIT")
r = conn()
q = "SELECT rowid FROM t WHERE v MATCH '[1,1,1,1,1,1,1,1]' AND k = 10"
def t(c):
    a = time.perf_counter(); c.execute(q).fetchall(); return (time.perf_counter() - a) * 1000
print(f"first query (full load): {t(r):.1f} ms; steady: {statistics.median(t(r) for _ in range(5)):.1f} ms")
app, dele = [], []
for k in range(5):
    w.execute("BEGIN")
    for j in range(10): w.execute("INSERT INTO t(v, tag) VALUES ('[1,2,3,4,5,6,7,8]', 1)")
    w.execute("COMMIT")
    app.append(t(r))
    w.execute("DELETE FROM t WHERE rowid = ?", (1000 + k,))
    dele.append(t(r))
print(f"after another connection appends 10 rows: median {statistics.median(app):.1f} ms; after it deletes 1 row (full reload): median {statistics.median(dele):.1f} ms")
r.close()
w.close()
shutil.rmtree(tmp)
