"""The ``phenix`` virtual table through the loadable extension, in every host (Python sqlite3 3.40.1,
apsw 3.54, the sqlite3 3.40.1 CLI), checked against numpy brute force. The multi-process cases (SIGKILL
of a writer, readers beside a writer) are in test_reliability.py."""

from __future__ import annotations

import json

import numpy as np

DIM = 16


def vec_json(v) -> str:
    return "[" + ",".join(repr(float(x)) for x in v) + "]"


def rows_for(seed: int, n: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, size=(n, DIM)).astype(np.float32)


def brute(stored: np.ndarray, q: np.ndarray, k: int, keep=None):
    s = stored.astype(np.float64)
    qq = q.astype(np.float64)
    d = 1.0 - s @ qq / (np.linalg.norm(s, axis=1) * np.linalg.norm(qq))
    ids = np.arange(1, len(s) + 1)
    if keep is not None:
        mask = keep(ids)
        d, ids = d[mask], ids[mask]
    order = np.lexsort((ids, d))[:k]
    return [(int(ids[i]), float(d[i])) for i in order]


def check(got, want):
    assert len(got) == len(want), (got, want)
    for (gi, gd), (wi, wd) in zip(got, want):
        assert abs(gd - wd) < 1e-5, (got, want)
        if gi != wi:
            assert abs(gd - wd) < 1e-6


def test_knn_prefilter_and_retrieve_in_every_host(host):
    data = rows_for(1, 300)
    stored = data.astype(np.float16).astype(np.float32)
    values = ",".join(
        f"({i + 1}, '{vec_json(v)}', {float(i % 10)}, 'mol{i + 1}')" for i, v in enumerate(data)
    )
    host.run(
        f"CREATE VIRTUAL TABLE m USING phenix(embedding float16[{DIM}] distance=cosine, conc REAL, +name TEXT);"
        f"INSERT INTO m(rowid, embedding, conc, name) VALUES {values};"
    )
    q = rows_for(99, 1)[0]
    got = host.run(f"SELECT rowid, distance FROM m WHERE embedding MATCH '{vec_json(q)}' AND k = 7")
    check(got, brute(stored, q, 7))
    # On 3.40 LIMIT does not reach xBestIndex beside MATCH: rows must stream in distance order.
    got = host.run(
        f"SELECT rowid, distance FROM m WHERE embedding MATCH '{vec_json(q)}' ORDER BY distance LIMIT 7"
    )
    check(got, brute(stored, q, 7))
    # Pre-filter: 10 % selectivity, k rows come back.
    got = host.run(
        f"SELECT rowid, distance FROM m WHERE embedding MATCH '{vec_json(q)}' AND k = 12 AND conc = 4"
    )
    check(got, brute(stored, q, 12, keep=lambda ids: (ids - 1) % 10 == 4))
    got = host.run(f"SELECT rowid, rank, distance FROM phenix_retrieve('m', '{vec_json(q)}', 3)")
    check([(r[0], r[2]) for r in got], brute(stored, q, 3))
    assert [r[1] for r in got] == [1, 2, 3]
    j = json.loads(host.one(f"SELECT phenix_retrieve('m', '{vec_json(q)}', 2)"))
    assert [x["rowid"] for x in j] == [r[0] for r in got[:2]]
    name = host.one(f"SELECT name FROM m WHERE embedding MATCH '{vec_json(q)}' AND k = 1")
    assert name == f"mol{got[0][0]}"
    blob = host.one("SELECT embedding FROM m WHERE rowid = 5")
    assert np.array_equal(np.frombuffer(blob, dtype="<f2").astype(np.float32), stored[4])
    # Errors name the column and the expected shape.
    e = host.error("INSERT INTO m(embedding) VALUES ('[1, 2]')")
    assert "embedding" in e and f"float16[{DIM}]" in e, e
    e = host.error(f"SELECT rowid FROM m WHERE embedding MATCH '{vec_json(q)}' AND k = 0")
    assert "positive integer" in e, e


def test_transactions_in_every_host(host):
    host.run(
        "CREATE VIRTUAL TABLE t USING phenix(v float32[2] distance=l2);"
        "INSERT INTO t(rowid, v) VALUES (1, '[0, 0]');"
        "BEGIN; INSERT INTO t(rowid, v) VALUES (2, '[1, 1]'); ROLLBACK;"
        "BEGIN; INSERT INTO t(rowid, v) VALUES (3, '[2, 2]'); SAVEPOINT a;"
        "INSERT INTO t(rowid, v) VALUES (4, '[3, 3]'); ROLLBACK TO a; COMMIT;"
    )
    assert host.run("SELECT rowid FROM t WHERE v MATCH '[3, 3]' AND k = 10") == [(3,), (1,)]
