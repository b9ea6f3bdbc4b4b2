"""Crash and concurrency testing of the ``phenix`` table through the loadable extension (Python's sqlite3,
SQLite 3.40.1), in rollback-journal and WAL mode.

- Kill harness: a writer process runs transactions of random size (inserts, vector and metadata updates,
  deletes, and now and then a compaction) and is killed with SIGKILL at a random moment. In each
  transaction it also records, in an ordinary table, a digest of what the phenix table must hold once that
  transaction commits. After the kill the table must equal the last recorded digest exactly (every
  committed transaction whole, nothing of the one in flight), every vector must equal its source to f16
  rounding, KNN must reach every row, ``phenix_check`` must say ``ok``, and the next writer must work.
  ``PHENIX_KILL_TRIALS`` trials per journal mode (12 by default: 24 in CI; the documented full run uses
  100, i.e. 200 trials). The same harness runs on a table with an IVF index (``index=ivf(lists=4)``;
  the writer also rebuilds the index and queries it inside its transactions) with a third of the trials:
  after the kill, KNN through the index (every list probed) must reach every row, ``phenix_check`` must
  accept the snapshot, and the next writer must leave exactly one vector file and one snapshot.
- Concurrency: three reader processes query in read transactions while a writer inserts, deletes and
  compacts; every snapshot they see holds whole transactions only, with intact vectors. Once more (WAL)
  on a table with an IVF index the writer also rebuilds: every reader's index query returns only rows
  of its snapshot, k of them, none nearer than the exact answer's row of the same rank.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

DIM = 8
TRIALS = int(os.environ.get("PHENIX_KILL_TRIALS", "12"))

COMMON = textwrap.dedent(
    """
    import hashlib, json, sqlite3

    def connect(db, ext, mode):
        c = sqlite3.connect(db, isolation_level=None, timeout=30)
        c.enable_load_extension(True)
        c.load_extension(ext)
        c.execute(f"PRAGMA journal_mode={mode}")
        return c

    def digest(state):
        # state: rowid -> (src json, tag)
        h = hashlib.sha256()
        for rowid in sorted(state):
            src, tag = state[rowid]
            h.update(f"{rowid}|{src}|{tag};".encode())
        return h.hexdigest()
    """
)

WRITER = COMMON + textwrap.dedent(
    """
    import random, sys
    db, ext, mode, trial = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    INDEXED = sys.argv[5] == "1"
    c = connect(db, ext, mode)
    rnd = random.Random(trial)
    state = {r: (s, t) for r, s, t in c.execute("SELECT rowid, src, tag FROM t")}
    next_id = max(state, default=0) + 1
    tx = trial * 100000
    def vec():
        return json.dumps([round(rnd.uniform(-1, 1), 3) for _ in range(8)])
    while True:
        tx += 1
        new = dict(state)
        c.execute("BEGIN")
        for _ in range(rnd.randint(1, 60)):
            op = rnd.random()
            if op < 0.6 or not new:
                v, tag = vec(), f"tx{tx}"
                c.execute("INSERT INTO t(rowid, v, tag, src) VALUES (?, ?, ?, ?)", (next_id, v, tag, v))
                new[next_id] = (v, tag)
                next_id += 1
            elif op < 0.75:
                r = rnd.choice(list(new))
                v = vec()
                c.execute("UPDATE t SET v = ?, src = ? WHERE rowid = ?", (v, v, r))
                new[r] = (v, new[r][1])
            elif op < 0.85:
                r = rnd.choice(list(new))
                tag = f"u{tx}"
                c.execute("UPDATE t SET tag = ? WHERE rowid = ?", (tag, r))
                new[r] = (new[r][0], tag)
            elif op < 0.99:
                r = rnd.choice(list(new))
                c.execute("DELETE FROM t WHERE rowid = ?", (r,))
                del new[r]
            else:
                c.execute("INSERT INTO t(t) VALUES ('optimize')")
            if INDEXED and rnd.random() < 0.05:
                try:
                    c.execute("INSERT INTO t(t) VALUES ('build-index')")
                except sqlite3.OperationalError as e:
                    assert "needs at least" in str(e), e
            if INDEXED and rnd.random() < 0.05:
                c.execute("SELECT rowid FROM t WHERE v MATCH ? AND k = 3", (vec(),)).fetchall()
        if rnd.random() < 0.08:
            c.execute("INSERT INTO t(t) VALUES ('optimize')")
        c.execute("INSERT INTO ledger(tx, n, digest) VALUES (?, ?, ?)", (tx, len(new), digest(new)))
        c.execute("COMMIT")
        state = new
        print(tx, flush=True)  # COMMIT returned
    """
)


def _connect(ext, db):
    c = sqlite3.connect(db, isolation_level=None, timeout=30)
    c.enable_load_extension(True)
    c.load_extension(str(ext))
    return c


def _digest(rows) -> str:
    h = hashlib.sha256()
    for rowid, src, tag in sorted(rows):
        h.update(f"{rowid}|{src}|{tag};".encode())
    return h.hexdigest()


def _sidecars(db, ext=".phx"):
    d = f"{db}-phenix"
    return sorted(f for f in os.listdir(d) if f.endswith(ext)) if os.path.isdir(d) else []


@pytest.mark.parametrize("indexed", [False, True], ids=["exact", "ivf"])
@pytest.mark.parametrize("mode", ["delete", "wal"])
def test_sigkill_at_random_moments_loses_no_committed_transaction(ext, tmp_path, mode, indexed):
    db = tmp_path / "k.db"
    c = _connect(ext, db)
    c.execute(f"PRAGMA journal_mode={mode}")
    index = ", index=ivf(lists=4)" if indexed else ""
    c.execute(f"CREATE VIRTUAL TABLE t USING phenix(v float16[8], tag TEXT, +src TEXT{index})")
    c.execute("CREATE TABLE ledger(tx INTEGER PRIMARY KEY, n INTEGER, digest TEXT)")
    c.close()
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    rng = np.random.default_rng(11 if mode == "wal" else 5)
    stats = {"trials": 0, "reported": 0, "in_flight_committed": 0, "compactions": 0, "snapshots": 0}
    trials = max(4, TRIALS // 3) if indexed else TRIALS
    for trial in range(1, trials + 1):
        p = subprocess.Popen(
            [sys.executable, str(script), str(db), str(ext), mode, str(trial), "1" if indexed else "0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(float(rng.uniform(0.15, 0.6)))
        p.send_signal(signal.SIGKILL)
        out, err = p.communicate()
        assert p.returncode == -signal.SIGKILL, err
        reported = [int(x) for x in out.split()]
        stats["trials"] += 1
        stats["reported"] += len(reported)

        c = _connect(ext, db)
        ledger = [r[0] for r in c.execute("SELECT tx FROM ledger WHERE tx > ? ORDER BY tx", (trial * 100000,))]
        # Every transaction whose COMMIT returned is committed; beyond those, at most the one in flight.
        assert ledger[: len(reported)] == reported, (trial, reported[-3:], ledger[-3:])
        assert len(ledger) - len(reported) in (0, 1), (trial, len(ledger), len(reported))
        stats["in_flight_committed"] += len(ledger) - len(reported)
        # The table is exactly the state recorded by the last committed transaction.
        last = c.execute("SELECT n, digest FROM ledger ORDER BY tx DESC LIMIT 1").fetchone()
        rows = c.execute("SELECT rowid, src, tag FROM t").fetchall()
        if last is not None:
            assert len(rows) == last[0], (trial, len(rows), last[0])
            assert _digest(rows) == last[1], trial
        # Every stored vector equals its source to f16 rounding.
        for blob, src in c.execute("SELECT v, src FROM t"):
            want = np.array(json.loads(src), dtype=np.float32).astype(np.float16)
            assert np.array_equal(np.frombuffer(blob, dtype="<f2"), want)
        # KNN reaches every row once; the integrity check agrees.
        q = "[" + ",".join(["0.5"] * DIM) + "]"
        knn = c.execute(f"SELECT rowid FROM t WHERE v MATCH '{q}' AND k = 1000000").fetchall()
        assert sorted(knn) == sorted((r[0],) for r in rows)
        if indexed and len(rows) > 1:
            # Through the index (every list probed, a shortlist of the whole table): the exact answer,
            # so no committed row is missing from the index and no dead one is served.
            k = len(rows) - 1
            via = c.execute(f"SELECT rowid, distance FROM t WHERE v MATCH '{q}' AND k = {k} AND nprobe = 4").fetchall()
            ex = c.execute(f"SELECT rowid, distance FROM t WHERE v MATCH '{q}' AND k = {k} AND exact = 1").fetchall()
            assert via == ex
        assert c.execute("SELECT phenix_check('t')").fetchone()[0] == "ok"
        gen = c.execute("SELECT value FROM t_info WHERE key = 'generation'").fetchone()[0]
        stats["compactions"] = gen
        # The next writer recovers: leftovers truncated, orphans removed, one file left.
        c.execute("INSERT INTO t(rowid, v, tag, src) VALUES (-1, ?, 'probe', ?)", (q, q))
        assert c.execute(f"SELECT count(*) FROM t WHERE v MATCH '{q}' AND k = 1000000").fetchone()[0] == len(rows) + 1
        c.execute("DELETE FROM t WHERE rowid = -1")
        table_id = c.execute("SELECT value FROM t_info WHERE key = 'table_id'").fetchone()[0]
        assert _sidecars(db) == [f"{table_id}.g{gen}.phx"]
        snap = c.execute("SELECT value FROM t_info WHERE key = 'index_gen'").fetchone()
        if indexed and snap is not None:
            stats["snapshots"] = snap[0]
            assert _sidecars(db, ".ivf") == [f"{table_id}.g{gen}.i{snap[0]}.ivf"]
        else:
            assert _sidecars(db, ".ivf") == []
        c.close()
    print(f"{mode}: {stats}")
    assert stats["reported"] > 0
    assert stats["compactions"] > 0
    if indexed:
        assert stats["snapshots"] > 0


READER = COMMON + textwrap.dedent(
    """
    import struct, sys, time
    db, ext, mode, seconds = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
    INDEXED = sys.argv[5] == "1"
    c = connect(db, ext, mode)
    q = "[" + ",".join(["0.25"] * 8) + "]"
    snapshots = busy = 0
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            c.execute("BEGIN")
            rows = c.execute("SELECT rowid, v, src FROM t").fetchall()
            knn = c.execute(f"SELECT rowid FROM t WHERE v MATCH '{q}' AND k = 1000000").fetchall()
            tags = c.execute("SELECT tag, count(*) FROM t GROUP BY tag").fetchall()
            if INDEXED:
                via = c.execute(f"SELECT rowid, distance FROM t WHERE v MATCH '{q}' AND k = 5 AND nprobe = 2").fetchall()
                ex = c.execute(f"SELECT rowid, distance FROM t WHERE v MATCH '{q}' AND k = 5 AND exact = 1").fetchall()
            c.execute("COMMIT")
        except sqlite3.OperationalError as e:
            if c.in_transaction:
                c.execute("ROLLBACK")
            if e.sqlite_errorcode & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
                busy += 1
                continue
            raise
        # Whole transactions only: every tag (one per writer transaction) has 10 rows.
        assert all(n == 10 for _, n in tags), tags
        assert sorted(r for (r,) in knn) == sorted(r for r, _, _ in rows)
        if INDEXED:
            # The index of this snapshot: only its live rows, k of them when k exist, each no nearer
            # than the exact answer's row of the same rank.
            live = {r for r, _, _ in rows}
            assert len(via) == min(5, len(rows)) and all(r in live for r, _ in via), (via, len(rows))
            assert all(a[1] >= b[1] - 1e-6 for a, b in zip(via, ex)), (via, ex)
        for _, blob, src in rows:
            want = [float(x) for x in json.loads(src)]
            got = struct.unpack(f"<{len(blob) // 2}e", blob)
            assert all(abs(a - b) <= 1e-3 * max(1.0, abs(b)) for a, b in zip(got, want)), (got, want)
        snapshots += 1
    print(snapshots, busy)
    """
)


@pytest.mark.parametrize("mode,indexed", [("delete", False), ("wal", False), ("wal", True)])
def test_readers_see_whole_transactions_while_a_writer_inserts_deletes_and_compacts(ext, tmp_path, mode, indexed):
    db = tmp_path / "c.db"
    c = _connect(ext, db)
    c.execute(f"PRAGMA journal_mode={mode}")
    index = ", index=ivf(lists=4)" if indexed else ""
    c.execute(f"CREATE VIRTUAL TABLE t USING phenix(v float16[8], tag TEXT, +src TEXT{index})")
    script = tmp_path / "reader.py"
    script.write_text(READER)
    seconds = 4.0
    readers = [
        subprocess.Popen(
            [sys.executable, str(script), str(db), str(ext), mode, str(seconds), "1" if indexed else "0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    rng = np.random.default_rng(1)
    end = time.time() + seconds + 0.5
    tx = inserts = deletes = compactions = busy = builds = 0
    live = []
    while time.time() < end:
        tx += 1
        action = rng.random()
        try:
            c.execute("BEGIN IMMEDIATE")
            if action < 0.25 and len(live) > 2:
                tag = live[int(rng.integers(len(live)))]
                c.execute("DELETE FROM t WHERE tag = ?", (tag,))
                c.execute("COMMIT")
                live.remove(tag)
                deletes += 1
            elif action < 0.35:
                c.execute("INSERT INTO t(t) VALUES ('optimize')")
                c.execute("COMMIT")
                compactions += 1
            elif indexed and action < 0.42 and len(live) > 0:
                c.execute("INSERT INTO t(t) VALUES ('build-index')")
                c.execute("COMMIT")
                builds += 1
            else:
                tag = f"tx{tx}"
                for v in np.round(rng.uniform(-1, 1, size=(10, DIM)), 3):
                    s = json.dumps([float(x) for x in v])
                    c.execute("INSERT INTO t(v, tag, src) VALUES (?, ?, ?)", (s, tag, s))
                c.execute("COMMIT")
                live.append(tag)
                inserts += 1
        except sqlite3.OperationalError as e:
            if c.in_transaction:
                c.execute("ROLLBACK")
            assert e.sqlite_errorcode & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED), e
            busy += 1
    results = []
    for r in readers:
        out, err = r.communicate(timeout=60)
        assert r.returncode == 0, err
        results.append(tuple(int(x) for x in out.split()))
    assert c.execute("SELECT phenix_check('t')").fetchone()[0] == "ok"
    assert c.execute("SELECT count(*) FROM t").fetchone()[0] == 10 * len(live)
    print(f"{mode}: writer {inserts} inserts, {deletes} deletes, {compactions} compactions, {busy} busy; readers (snapshots, busy) {results}")
    assert compactions > 0 and all(s > 0 for s, _ in results)
    if indexed:
        assert builds > 0
