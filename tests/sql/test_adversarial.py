"""Adversarial cases through real hosts: Python's sqlite3 (deserialize, the backup API, shared cache) and
the sqlite3 CLI (a crafted database that used to kill the shell with SIGBUS).

Each test runs its host in a child process whose working directory is a fresh temporary directory, so
a file written relative to the working directory is seen, and a crash is an exit status, not a dead
pytest.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from conftest import SQLITE3_CLI

PY = "/usr/bin/python3"


def run_py(ext: Path, cwd: Path, body: str) -> subprocess.CompletedProcess:
    code = textwrap.dedent(
        f"""
        import sqlite3
        def connect(target=":memory:", **kw):
            c = sqlite3.connect(target, isolation_level=None, **kw)
            c.enable_load_extension(True)
            c.load_extension({str(ext)!r})
            return c
        """
    ) + textwrap.dedent(body)
    return subprocess.run([PY, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_deserialized_database_leaves_files_in_the_working_directory_alone(ext, tmp_path):
    # A real database named `x` in the working directory, with a phenix table.
    r = run_py(
        ext,
        tmp_path,
        """
        c = connect("x")
        c.executescript("CREATE VIRTUAL TABLE t USING phenix(v float32[2] distance=l2);"
                        "INSERT INTO t(rowid, v) VALUES (1, '[1,1]');")
        c.close()
        img = sqlite3.connect(":memory:")
        img.execute("CREATE TABLE plain(x)")
        data = img.serialize()
        for _ in range(2):
            d = connect()
            d.deserialize(data)
            d.executescript("CREATE VIRTUAL TABLE u USING phenix(v float32[2] distance=l2);"
                            "INSERT INTO u(rowid, v) VALUES (7, '[0,1]');")
            assert d.execute("SELECT rowid FROM u WHERE v MATCH '[0,1]' AND k = 1").fetchall() == [(7,)]
        c = connect("x")
        assert c.execute("SELECT rowid FROM t WHERE v MATCH '[1,1]' AND k = 1").fetchall() == [(1,)]
        assert c.execute("SELECT phenix_check('t')").fetchone()[0] == "ok"
        print("done")
        """,
    )
    assert r.returncode == 0, r.stderr
    assert "done" in r.stdout
    # Only the real database's own vector file (and its row-id file) is in x-phenix/.
    assert sorted(p.suffix for p in (tmp_path / "x-phenix").iterdir()) == [".ids", ".phx"]


def test_memory_backup_copy_and_shared_cache_keep_rows_apart(ext, tmp_path):
    r = run_py(
        ext,
        tmp_path,
        """
        a = connect()
        a.executescript("CREATE VIRTUAL TABLE t USING phenix(v float32[2] distance=l2);"
                        "INSERT INTO t(rowid, v) VALUES (1, '[0,1]'), (2, '[1,0]');")
        b = connect()
        a.backup(b)
        a.execute("INSERT INTO t(rowid, v) VALUES (4, '[0,0.2]')")
        try:
            b.execute("INSERT INTO t(rowid, v) VALUES (3, '[0,0.1]')")
            got = b.execute("SELECT rowid, distance FROM t WHERE v MATCH '[0,0]' AND k = 10").fetchall()
            assert [r for r, _ in got] == [3, 2, 1] or [r for r, _ in got] == [3, 1, 2], got
            assert abs(got[0][1] - 0.1) < 1e-6, got
        except sqlite3.Error as e:
            assert "phenix" in str(e), e
        assert [r for r, in a.execute("SELECT rowid FROM t ORDER BY rowid")] == [1, 2, 4]

        uri = "file:shm?mode=memory&cache=shared"
        s1, s2 = connect(uri, uri=True), connect(uri, uri=True)
        s1.executescript("CREATE VIRTUAL TABLE t USING phenix(v float32[2] distance=l2);"
                         "INSERT INTO t(rowid, v) VALUES (1, '[0,0]'), (2, '[1,1]'), (3, '[0,0.5]');")
        s2.executescript("DELETE FROM t WHERE rowid = 1; INSERT INTO t(t) VALUES ('optimize');")
        s1.execute("INSERT INTO t(rowid, v) VALUES (4, '[2,2]')")
        for c in (s1, s2, connect(uri, uri=True)):
            got = c.execute("SELECT rowid, distance FROM t WHERE v MATCH '[0,0]' AND k = 10").fetchall()
            assert [r for r, _ in got] == [3, 2, 4], got
            assert abs(got[0][1] - 0.5) < 1e-6, got
        print("done")
        """,
    )
    assert r.returncode == 0, r.stderr
    assert "done" in r.stdout
    assert list(tmp_path.iterdir()) == []


def test_crafted_shared_table_id_never_crashes_the_cli(ext, tmp_path):
    db = tmp_path / "a.db"
    setup = f"""
.load {ext}
CREATE VIRTUAL TABLE t1 USING phenix(v float32[8] distance=l2);
CREATE VIRTUAL TABLE t2 USING phenix(v float32[8] distance=l2);
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2000)
INSERT INTO t1(rowid, v) SELECT i, json_array(i, 0, 0, 0, 0, 0, 0, 0) FROM n;
UPDATE t2_info SET value = (SELECT value FROM t1_info WHERE key = 'table_id') WHERE key = 'table_id';
"""
    r = subprocess.run([SQLITE3_CLI, str(db)], input=setup, capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    victim = f"""
.load {ext}
SELECT phenix_check('t1');
SELECT count(*) FROM t1 WHERE v MATCH '[0,0,0,0,0,0,0,0]' AND k = 5;
INSERT INTO t2(rowid, v) VALUES (1, '[1,1,1,1,1,1,1,1]');
SELECT count(*) FROM t1 WHERE v MATCH '[0,0,0,0,0,0,0,0]' AND k = 5;
"""
    r = subprocess.run([SQLITE3_CLI, str(db)], input=victim, capture_output=True, text=True, cwd=tmp_path)
    # SQL errors are fine (the shell goes on, exit status 1); a signal is not.
    assert r.returncode in (0, 1), (r.returncode, r.stderr)
    assert "table id" in r.stdout + r.stderr


def test_in_lists_collations_and_rowids_beside_k_in_the_cli(ext, tmp_path):
    # The loadable build reaches sqlite3_vtab_in through the host's API table: IN beside k must filter
    # as one set there too, and the other pre-filters must hold.
    script = f"""
.load {ext}
CREATE VIRTUAL TABLE t USING phenix(v float32[2] distance=l2, s TEXT);
INSERT INTO t(rowid, v, s) VALUES (1, '[0,0]', 'a'), (2, '[1,0]', 'A'), (3, '[2,0]', 'b'), (4, '[3,0]', 'B'), (5, '[4,0]', 'a');
SELECT group_concat(rowid) FROM (SELECT rowid FROM t WHERE v MATCH '[0,0]' AND k = 1 AND s IN ('a', 'b'));
SELECT group_concat(rowid) FROM (SELECT rowid FROM t WHERE v MATCH '[0,0]' AND k = 2 AND s IN ('b', 'a'));
SELECT group_concat(rowid) FROM (SELECT rowid FROM t WHERE v MATCH '[0,0]' AND k = 2 AND s = 'b' COLLATE NOCASE);
SELECT group_concat(rowid) FROM (SELECT rowid FROM t WHERE v MATCH '[0,0]' AND k = 3 AND rowid IN (4, 5));
SELECT group_concat(rowid) FROM (SELECT rowid FROM t WHERE v MATCH '[0,0]' AND k = 3 AND rowid = 5);
"""
    r = subprocess.run([SQLITE3_CLI, ":memory:"], input=script, capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["1", "1,3", "3,4", "4,5", "5"], r.stdout
