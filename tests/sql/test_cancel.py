"""Cancellation and progress through the loadable extension, on an old and a new host.

- ``sqlite3``: Python's sqlite3 module (Debian's SQLite 3.40.1, as /usr/bin/python3 has): it has no
  ``sqlite3_is_interrupted``, so phenix cannot see ``conn.interrupt()``; the work runs to its end and
  SQLite reports the interrupt when it next looks (a table-valued result's rows, a write's nested
  statements), or the statement succeeds if it had nothing left to do. The progress callback stops work
  on this host.
- ``apsw`` (its bundled SQLite, >= 3.41): phenix reads the flag once per chunk and stops.

Each case runs in a child process (one SQLite library per process; the progress callback is
process-wide): the callback's first report, mid-operation, hands over to a thread that calls
``interrupt()``, waits for it, and the time from that call to the statement's return is printed
(``-s``), never asserted. Data and usability are checked afterwards. ``PHENIX_CANCEL_ROWS`` (default
40000), ``PHENIX_CANCEL_DIM`` (64) and ``PHENIX_CANCEL_QUERIES`` (200) size the tables.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT

_CHILD = r"""
import json, os, sys, threading, time
sys.path.insert(0, os.path.join(sys.argv[4], "python"))
os.environ["PHENIX_EXT"] = sys.argv[2]
import phenix, phenix.progress
host, ext, dbdir, root, op, mode = sys.argv[1:7]
rows = int(os.environ.get("PHENIX_CANCEL_ROWS", "40000"))
dim = int(os.environ.get("PHENIX_CANCEL_DIM", "64"))
if host == "apsw":
    import apsw
    conn = apsw.Connection(os.path.join(dbdir, "db.sqlite"))
    Error = apsw.Error
    version = apsw.sqlite_lib_version()
    def q(sql):
        return [tuple(r) for r in conn.execute(sql).fetchall()]
else:
    import sqlite3
    conn = sqlite3.connect(os.path.join(dbdir, "db.sqlite"), isolation_level=None, check_same_thread=False)
    Error = sqlite3.Error
    version = sqlite3.sqlite_version
    def q(sql):
        return [tuple(r) for r in conn.execute(sql).fetchall()]
phenix.load(conn)
q(f"CREATE VIRTUAL TABLE t USING phenix(v float16[{dim}] distance=cosine, tag INTEGER)")
q(f"CREATE VIRTUAL TABLE qs USING phenix(v float16[{dim}])")
import numpy as np
nq = int(os.environ.get("PHENIX_CANCEL_QUERIES", "200"))
x = np.random.default_rng(7).standard_normal((rows, dim)).astype("<f4")
q("BEGIN")
conn.executemany("INSERT INTO t(rowid, v, tag) VALUES (?, ?, ?)", [(i + 1, x[i].tobytes(), i + 1) for i in range(rows)])
q(f"INSERT INTO qs(rowid, v) SELECT rowid, v FROM t WHERE rowid <= {nq}")
q("DELETE FROM t WHERE rowid % 7 = 0")
q("COMMIT")
sqls = {
    "knn": "SELECT rowid, distance FROM t WHERE v MATCH (SELECT v FROM qs WHERE rowid = 1) AND k = 5",
    "retrieve_all": "SELECT query_rowid, rowid, rank FROM phenix_retrieve_all('t', 'qs', 5)",
    "optimize": "INSERT INTO t(t) VALUES ('optimize')",
    "backup": "SELECT phenix_backup('" + os.path.join(dbdir, "copy.sqlite") + "')",
    "embed_molecules": "SELECT id, hex(embedding) FROM phenix_embed_molecules('default', "
    "'WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2000) "
    "SELECT i, ''C'' || substr(''CCCCCCCCCCCC'', 1, i % 12) || ''O'', 1.0 FROM n')",
}
sql = sqls[op]
if mode == "bar":
    # The command line's bar: tqdm on stderr, fed by the callback during the one statement.
    with phenix.progress.bar("test", interval_ms=0):
        n = len(q(sql))
    print(json.dumps({"version": version, "rows": n}))
    sys.exit(0)
snapshot = lambda: q("SELECT rowid, tag, hex(v) FROM t ORDER BY rowid")
before = snapshot()
out = {"version": version}
if op != "optimize" and op != "backup":
    t = time.perf_counter(); want = q(sql); out["full_ms"] = (time.perf_counter() - t) * 1e3
seen, stamp = [], {}
go, done_ev = threading.Event(), threading.Event()
def interrupter():
    go.wait()
    stamp["t"] = time.perf_counter()
    conn.interrupt()
    done_ev.set()
def cb(o, done, total):
    if o != op:
        return False
    seen.append((done, total))
    if mode == "callback":
        return True
    if not go.is_set():
        go.set()
        done_ev.wait()
    return False
th = threading.Thread(target=interrupter)
if mode == "interrupt":
    th.start()
phenix.progress.set_progress(cb, 0)
try:
    r = q(sql)
    out["result"] = "ok"
except Error as e:
    out["result"] = "error"
    out["message"] = str(e)
end = time.perf_counter()
phenix.progress.set_progress(None)
go.set()
if mode == "interrupt":
    th.join()
if "t" in stamp:
    out["to_stop_ms"] = (end - stamp["t"]) * 1e3
out["seen"] = seen[-1:] + [len(seen)]
out["intact"] = snapshot() == before  # a compaction keeps every row as it was
if op in ("knn", "retrieve_all", "embed_molecules"):
    out["again_same"] = q(sql) == want
if op == "optimize":
    q("INSERT INTO t(t) VALUES ('optimize')")
    out["intact_after_optimize"] = snapshot() == before
    out["check"] = q("SELECT phenix_check('t')")[0][0]
if op == "backup":
    copy = os.path.join(dbdir, "copy.sqlite")
    out["copy_left"] = os.path.exists(copy) and out["result"] == "error"
    if os.path.exists(copy):
        q("ATTACH '" + copy + "' AS copy")
        out["copy_complete"] = q("SELECT rowid, tag, hex(v) FROM copy.t ORDER BY rowid") == before
print(json.dumps(out))
"""


def _run(host: str, ext, tmp_path, op: str, mode: str, stderr: list | None = None) -> dict:
    p = subprocess.run(
        [sys.executable, "-c", _CHILD, host, str(ext), str(tmp_path), str(ROOT), op, mode],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stderr
    if stderr is not None:
        stderr.append(p.stderr)
    out = json.loads(p.stdout.strip().splitlines()[-1])
    print(f"cancel[{host} {out['version']} {op} {mode}]: {json.dumps(out)}")
    return out


OPS = ["knn", "retrieve_all", "optimize", "backup", "embed_molecules"]


@pytest.mark.parametrize("op", OPS)
def test_interrupt_stops_phenix_on_a_new_host(op, ext, tmp_path):
    out = _run("apsw", ext, tmp_path, op, "interrupt")
    assert out["result"] == "error" and out["message"].endswith("interrupted"), out
    # From phenix, mid-operation, not SQLite noticing afterwards: the last report came before the end
    # (and a table says "phenix: interrupted"; a scalar function, phenix_backup, keeps the code only
    # with SQLite's own message).
    done, total = out["seen"][0]
    assert done < total, out
    if op != "backup":
        assert out["message"].startswith("phenix"), out
    assert out["intact"], out
    if op in ("knn", "retrieve_all", "embed_molecules"):
        assert out["again_same"], out
    if op == "optimize":
        assert out["intact_after_optimize"] and out["check"] == "ok", out
    if op == "backup":
        assert not out["copy_left"], out


@pytest.mark.parametrize("op", OPS)
def test_interrupt_on_an_old_host_takes_effect_after_the_work(op, ext, tmp_path):
    out = _run("sqlite3", ext, tmp_path, op, "interrupt")
    assert out["version"] < "3.41", "this case is about SQLite without sqlite3_is_interrupted"
    # phenix could not see the flag: no phenix "interrupted"; SQLite may report it afterwards.
    if out["result"] == "error":
        assert out["message"] == "interrupted", out
    assert out["intact"], out
    if op == "optimize":
        assert out["check"] == "ok" and out["intact_after_optimize"], out
    if op == "backup" and out["copy_left"]:
        # The copy finished before SQLite reported the interrupt: it is whole.
        assert out["copy_complete"], out


@pytest.mark.parametrize("host", ["sqlite3", "apsw"])
@pytest.mark.parametrize("op", OPS)
def test_the_progress_callback_stops_work_on_every_host(op, host, ext, tmp_path):
    out = _run(host, ext, tmp_path, op, "callback")
    assert out["result"] == "error" and out["message"].endswith("interrupted"), out
    if op != "backup":
        assert out["message"].startswith("phenix"), out
    assert out["seen"][1] == 1, "stopped at the first report"
    assert out["intact"], out
    if op == "optimize":
        assert out["check"] == "ok", out
    if op == "backup":
        assert not out["copy_left"], out


def test_the_cli_progress_bar_moves_during_one_statement(ext, tmp_path):
    err: list = []
    out = _run("sqlite3", ext, tmp_path, "retrieve_all", "bar", err)
    assert out["rows"] == 5 * int(os.environ.get("PHENIX_CANCEL_QUERIES", "200")), out
    assert "test (retrieve_all)" in err[0], err[0][-500:]
    assert "%|" in err[0], err[0][-500:]  # a drawn bar
