"""phenix.distributed on a local Dask cluster (3 worker processes, loopback only, started and stopped
here) over 8 shards, against one phenix table holding every row.

The one table is built by the package's one-machine path (``phenix.pipeline.run_screen``, what
``phenix screen`` runs) from the same library, so it has the same rowids; the sharded answers must
equal its ``phenix_retrieve_all`` / filtered KNN answers exactly (ids, distances, order). A numpy f64
brute force over the table's embeddings checks the reference itself. The library holds the same
SMILES under several compound ids, so exact distance ties cross shard boundaries.
"""

from __future__ import annotations

import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import ROOT

distributed = pytest.importorskip("distributed", reason="Dask distributed is not installed (tools/requirements.txt)")

import phenix  # noqa: E402  (the checkout's package; conftest puts python/ first on sys.path)
from phenix import PhenixError  # noqa: E402
from phenix import distributed as pd_dist  # noqa: E402
from phenix.pipeline import run_screen  # noqa: E402

N_SHARDS = 8
N_WORKERS = 3
DOSES = [0.3, 3.0]


@pytest.fixture(scope="module")
def cluster():
    with pd_dist.local_cluster(N_WORKERS) as client:
        client.wait_for_workers(N_WORKERS)
        info = client.scheduler_info()
        # scheduler, workers and their nannies listen on loopback only
        addrs = [info["address"], *info["workers"], *(w["nanny"] for w in info["workers"].values())]
        assert len(addrs) == 1 + 2 * N_WORKERS and all(a.startswith("tcp://127.0.0.1:") for a in addrs), addrs
        # and so does every other socket the cluster's processes listen on (e.g. the scheduler's HTTP server)
        import psutil

        socks = {(c.laddr.ip, c.laddr.port) for p in [psutil.Process(), *psutil.Process().children(recursive=True)]
                 for c in p.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN}
        assert len(socks) >= 1 + 2 * N_WORKERS and all(ip == "127.0.0.1" for ip, _ in socks), socks
        yield client


@pytest.fixture(scope="module")
def built(cluster, tmp_path_factory):
    d = tmp_path_factory.mktemp("shards")
    lib = pd.read_csv(ROOT / "data" / "molecules" / "approved_drugs.csv").head(150)[["id", "smiles"]]
    # the same structures again under new ids: identical embeddings in (most likely) other shards
    dup = lib.head(12).copy()
    dup["id"] = [f"DUP{i}" for i in range(len(dup))]
    lib = pd.concat([lib, dup], ignore_index=True)
    lib.to_csv(d / "lib.csv", index=False)
    stats = pd_dist.build_shards(str(d / "lib.csv"), d / "shards", N_SHARDS, DOSES, client=cluster, batch=16,
                                 progress=False)
    one = str(d / "one.db")
    run_screen(one, "default", str(d / "lib.csv"), DOSES, table="screen", batch=64, progress=False)
    conn = phenix.connect(one)
    rows = conn.execute("SELECT rowid, embedding, compound, concentration FROM screen ORDER BY rowid").fetchall()
    emb = np.array([np.frombuffer(r[1], dtype=np.float16) for r in rows], dtype=np.float64)
    rng = np.random.default_rng(7)
    # queries: random directions, and exact copies of duplicated molecules' embeddings (ties at rank 1)
    q = np.concatenate([rng.standard_normal((20, emb.shape[1])), emb[[0, 1, 5, 2 * 150 + 3]]]).astype(np.float32)
    yield {"dir": d, "lib": lib, "stats": stats, "one": one, "conn": conn, "rowids": np.array([r[0] for r in rows]),
           "emb": emb, "compound": [r[2] for r in rows], "conc": np.array([r[3] for r in rows]), "queries": q,
           "shards": d / "shards"}
    conn.close()


def one_table(b, q: np.ndarray, k: int, where=None, params=(), batched=False):
    """The reference: the same queries on the one table — one KNN (`MATCH`, the SQL contract: ascending
    distance, ties by rowid) per query, with the filter if any; or, ``batched``, phenix_retrieve_all."""
    c = b["conn"]
    nq = len(q)
    ids = np.full((nq, k), -1, dtype=np.int64)
    dist = np.full((nq, k), np.inf)
    if batched:
        c.execute("DROP TABLE IF EXISTS temp.q")
        c.execute(f"CREATE VIRTUAL TABLE temp.q USING phenix(v float32[{q.shape[1]}])")
        c.executemany("INSERT INTO temp.q(rowid, v) VALUES (?, ?)", [(i + 1, q[i].tobytes()) for i in range(nq)])
        for qr, rid, rank, d in c.execute("SELECT query_rowid, rowid, rank, distance FROM "
                                          "phenix_retrieve_all('screen', 'temp.q', ?)", (k,)):
            ids[qr - 1, rank - 1], dist[qr - 1, rank - 1] = rid, d
        return ids, dist
    cond = f" AND ({where})" if where else ""
    for i in range(nq):
        rows = c.execute(f"SELECT rowid, distance FROM screen WHERE embedding MATCH ? AND k = ?{cond}",
                         (q[i].tobytes(), k, *params)).fetchall()
        for r, (rid, d) in enumerate(rows):
            ids[i, r], dist[i, r] = rid, d
    return ids, dist


def brute_force_check(b, q, ids, dist, mask=None):
    """The reference agrees with f64 cosine distances: each hit's distance, and nothing left out is closer."""
    e = b["emb"]
    qq = q.astype(np.float64)
    d = 1 - (qq @ e.T) / np.linalg.norm(qq, axis=1)[:, None] / np.linalg.norm(e, axis=1)[None, :]
    if mask is not None:
        d[:, ~mask] = np.inf
    pos = {r: i for i, r in enumerate(b["rowids"])}
    for i in range(len(q)):
        got = [pos[r] for r in ids[i] if r >= 0]
        assert len(got) == min(ids.shape[1], int(np.isfinite(d[i]).sum()))
        np.testing.assert_allclose(dist[i, :len(got)], d[i, got], atol=1e-5)
        kth = dist[i, len(got) - 1]
        outside = np.setdiff1d(np.arange(len(e)), got)
        assert (d[i, outside] >= kth - 1e-5).all()


def test_shards_follow_the_blake2b_rule_and_hold_every_row_once(built):
    lib = built["lib"]
    seen = {}
    for i in range(N_SHARDS):
        p = built["shards"] / pd_dist.shard_name(i, N_SHARDS)
        c = phenix.connect(str(p))
        assert c.execute("SELECT phenix_check('screen')").fetchone()[0] == "ok"
        meta = dict(c.execute("SELECT key, value FROM phenix_shard"))
        assert meta["index"] == str(i) and meta["n_shards"] == str(N_SHARDS) and meta["complete"] == "true"
        for rid, comp, conc, emb in c.execute("SELECT rowid, compound, concentration, embedding FROM screen"):
            h = int.from_bytes(hashlib.blake2b(comp.encode("utf-8"), digest_size=8).digest(), "big")
            assert h % N_SHARDS == i, (comp, i)
            assert rid not in seen
            seen[rid] = (comp, conc, emb)
        c.close()
    # the union of the shards is exactly the one table, embedding bytes included
    ref = {r: (c, u, e) for r, e, c, u in built["conn"].execute(
        "SELECT rowid, embedding, compound, concentration FROM screen")}
    assert seen == ref
    assert len(ref) == len(lib) * len(DOSES)
    counts = [s["rows"] for s in built["stats"]["per_shard"]]
    assert sum(counts) == len(ref) and min(counts) > 0
    # duplicates of one structure landed in more than one shard, so ties cross shards
    comps = {pd_dist.shard_of(c, N_SHARDS) for c in ["CHEMBL2", "DUP0"]}
    assert len(comps) == 2 or any(pd_dist.shard_of(f"DUP{i}", N_SHARDS) != pd_dist.shard_of(lib["id"][i], N_SHARDS)
                                  for i in range(12))


@pytest.mark.parametrize("k", [1, 7, 40])
def test_search_equals_one_table(built, cluster, k):
    q = built["queries"]
    res = pd_dist.search(built["shards"], q, k, client=cluster)
    ids, dist = one_table(built, q, k)
    np.testing.assert_array_equal(res.ids, ids)
    np.testing.assert_array_equal(res.distances, dist)
    brute_force_check(built, q, ids, dist)
    # one table's phenix_retrieve_all gives the same bits when the queries are scaled as the shards
    # scale them (its batched path scores the query as given, its exact re-rank scales it first)
    b_ids, b_dist = one_table(built, pd_dist._scaled(q), k, batched=True)
    np.testing.assert_array_equal(b_ids, ids)
    np.testing.assert_array_equal(b_dist, dist)
    assert len(res.tasks) == N_SHARDS and len({t["worker_pid"] for t in res.tasks}) >= 2


@pytest.mark.parametrize("where,params,mask", [
    ("concentration = ?", (3.0,), lambda b: b["conc"] == 3.0),
    ("compound < ?", ("CHEMBL2",), lambda b: np.array([c < "CHEMBL2" for c in b["compound"]])),
    ("compound >= ? AND concentration < ?", ("DUP", 1.0),
     lambda b: np.array([c >= "DUP" for c in b["compound"]]) & (b["conc"] < 1.0)),
])
def test_filtered_search_equals_one_table(built, cluster, where, params, mask):
    q = built["queries"]
    k = 15
    res = pd_dist.search(built["shards"], q, k, client=cluster, where=where, params=params)
    ids, dist = one_table(built, q, k, where, params)
    np.testing.assert_array_equal(res.ids, ids)
    np.testing.assert_array_equal(res.distances, dist)
    brute_force_check(built, q, ids, dist, mask(built))


def _kill_one_worker_when_busy(client, pids: dict, done: threading.Event) -> int:
    """SIGKILLs a worker process while it runs a shard task (each task sleeps 3 s inside); returns its pid."""
    deadline = time.time() + 60
    while time.time() < deadline and not done.is_set():
        busy = [w for w, tasks in client.processing().items() if tasks and w in pids]
        if busy:
            os.kill(pids[busy[0]], signal.SIGKILL)
            return pids[busy[0]]
        time.sleep(0.05)
    raise AssertionError("no worker became busy")


def _search_while_killing(built, cluster, k):
    out: dict = {}
    done = threading.Event()
    pids = cluster.run(os.getpid)  # before the search, so the kill needs no round trip

    def run():
        try:
            out["res"] = pd_dist.search(built["shards"], built["queries"], k, client=cluster, _task_delay=3.0)
        except Exception as e:  # noqa: BLE001 - inspected below
            out["err"] = e
        done.set()

    t = threading.Thread(target=run)
    t.start()
    out["killed"] = _kill_one_worker_when_busy(cluster, pids, done)
    t.join(300)
    assert not t.is_alive()
    cluster.wait_for_workers(N_WORKERS, timeout=300)  # the nanny restarts the killed worker
    return out


def test_worker_killed_mid_query_is_retried_and_the_answer_is_exact(built, cluster):
    k = 10
    out = _search_while_killing(built, cluster, k)
    assert "err" not in out, out.get("err")
    ids, dist = one_table(built, built["queries"], k)
    np.testing.assert_array_equal(out["res"].ids, ids)
    np.testing.assert_array_equal(out["res"].distances, dist)
    assert out["killed"] not in {t["worker_pid"] for t in out["res"].tasks}


def test_worker_killed_without_retries_fails_clearly(built, cluster):
    def set_failures(n, dask_scheduler=None):
        old = dask_scheduler.allowed_failures
        dask_scheduler.allowed_failures = n
        return old

    old = cluster.run_on_scheduler(set_failures, 0)
    try:
        out = _search_while_killing(built, cluster, 10)
    finally:
        cluster.run_on_scheduler(set_failures, old)
    assert "res" not in out, "a search that lost a shard task returned an answer"
    assert isinstance(out["err"], PhenixError)
    msg = str(out["err"])
    assert "search task phenix-search-shard-" in msg and "KilledWorker" in msg and "no partial result" in msg


def test_missing_duplicate_or_foreign_shards_are_refused(built, cluster, tmp_path):
    paths = pd_dist.shard_paths(built["shards"])
    q = built["queries"][:2]
    with pytest.raises(PhenixError, match=r"missing \[3\]"):
        pd_dist.search(paths[:3] + paths[4:], q, 5, client=cluster)
    with pytest.raises(PhenixError, match=r"given twice \[0\]"):
        pd_dist.search(paths + paths[:1], q, 5, client=cluster)
    with pytest.raises(PhenixError, match="no such shard"):
        pd_dist.search([str(tmp_path / "nope.db")] + paths[1:], q, 5, client=cluster)
    c = sqlite3.connect(tmp_path / "plain.db")
    c.execute("CREATE TABLE t(x)")
    c.close()
    with pytest.raises(PhenixError, match="not a phenix shard"):
        pd_dist.search([str(tmp_path / "plain.db")] + paths[1:], q, 5, client=cluster)
    with pytest.raises(PhenixError, match="k must be a positive integer"):
        pd_dist.search(paths, q, 0, client=cluster)


def test_merge_orders_ties_by_rowid_and_pads():
    a = (np.array([[5, 9, -1]]), np.array([[0.1, 0.2, np.inf]]))
    b = (np.array([[2, 7, 8]]), np.array([[0.1, 0.2, 0.3]]))
    ids, d, src = pd_dist.merge([a, b], 4)
    assert ids.tolist() == [[2, 5, 7, 9]] and d.tolist() == [[0.1, 0.1, 0.2, 0.2]] and src.tolist() == [[1, 0, 1, 0]]
    ids, d, src = pd_dist.merge([(np.array([[4, -1]]), np.array([[0.5, np.inf]]))], 3)
    assert ids.tolist() == [[4, -1, -1]] and np.isinf(d[0, 1:]).all() and src.tolist() == [[0, -1, -1]]
    with pytest.raises(PhenixError, match="two shards"):
        pd_dist.merge([a, (np.array([[5]]), np.array([[0.3]]))], 3)


@pytest.mark.parametrize("seed", range(6))
def test_merge_equals_sorting_all_hits_in_python(seed):
    """Random per-shard lists with many exact ties and short shards, against Python's sorted()."""
    rng = np.random.default_rng(seed)
    n_parts, nq, k = int(rng.integers(1, 40)), 5, int(rng.integers(1, 12))
    rowids = rng.permutation(100000)[: n_parts * k].reshape(n_parts, k)
    parts = []
    for p in range(n_parts):
        d = np.sort(rng.integers(0, 6, (nq, k)) / 8.0, axis=1)  # few distinct values: ties everywhere
        ids = np.broadcast_to(rowids[p], (nq, k)).copy()
        # a shard's own list is ordered by (distance, rowid); some shards have fewer than k rows
        for q in range(nq):
            o = np.lexsort((ids[q], d[q]))
            ids[q], d[q] = ids[q][o], d[q][o]
            short = int(rng.integers(0, k + 1)) if rng.random() < 0.3 else k
            ids[q, short:], d[q, short:] = -1, np.inf
        parts.append((ids, d))
    got_ids, got_d, src = pd_dist.merge(parts, k)
    for q in range(nq):
        allhits = sorted((float(d[q, j]), int(ids[q, j]), p) for p, (ids, d) in enumerate(parts)
                         for j in range(k) if ids[q, j] >= 0)[:k]
        want = allhits + [(np.inf, -1, -1)] * (k - len(allhits))
        assert [(float(a), int(b), int(c)) for a, b, c in zip(got_d[q], got_ids[q], src[q])] == want


def test_build_resumes_and_refuses_another_layout(built, cluster, tmp_path):
    lib = built["dir"] / "lib.csv"
    out = tmp_path / "s"
    # a second run with the same arguments finds every shard complete and embeds nothing again
    pd_dist.build_shards(str(lib), out, 4, DOSES, client=cluster, batch=50, progress=False)
    again = pd_dist.build_shards(str(lib), out, 4, DOSES, client=cluster, batch=50, progress=False)
    assert all(s["embedded_now"] == 0 for s in again["per_shard"]) and again["rows"] == len(built["lib"]) * 2
    with pytest.raises(PhenixError, match="another layout"):
        pd_dist.build_shards(str(lib), out, 8, DOSES, client=cluster, progress=False)
    with pytest.raises(PhenixError, match="was built with"):
        pd_dist.build_shards(str(lib), out, 4, [1.0], client=cluster, progress=False)


def test_worker_killed_mid_build_is_resumed_after_its_last_committed_batch(built, cluster, tmp_path):
    out: dict = {}
    done = threading.Event()
    pids = cluster.run(os.getpid)

    def run():
        try:
            out["res"] = pd_dist.build_shards(str(built["dir"] / "lib.csv"), tmp_path / "s", 4, DOSES, client=cluster,
                                              batch=8, progress=False, _batch_delay=0.4)
        except Exception as e:  # noqa: BLE001 - inspected below
            out["err"] = e
        done.set()

    t = threading.Thread(target=run)
    t.start()
    # kill the worker building a shard once that shard has committed a batch and is not complete
    killed = None
    deadline = time.time() + 120
    while killed is None and time.time() < deadline and not done.is_set():
        for w, keys in cluster.processing().items():
            for key in keys:
                name = str(key).split("phenix-build-")[-1].rsplit("-", 1)[0]
                f = tmp_path / "s" / name
                if w not in pids or not f.exists():
                    continue
                c = sqlite3.connect(f"file:{f}?mode=ro", uri=True, timeout=10)
                try:
                    meta = dict(c.execute("SELECT key, value FROM phenix_shard"))
                except sqlite3.Error:
                    meta = {}
                finally:
                    c.close()
                if "molecules_done" in meta and "complete" not in meta:
                    os.kill(pids[w], signal.SIGKILL)
                    killed = pids[w]
                    break
            if killed is not None:
                break
        time.sleep(0.05)
    assert killed is not None, "no shard was caught mid-build"
    t.join(300)
    assert not t.is_alive()
    cluster.wait_for_workers(N_WORKERS, timeout=300)
    assert "err" not in out, out.get("err")
    res = out["res"]
    assert killed not in {s["worker_pid"] for s in res["per_shard"]}
    # the re-run task continued after the killed one's last committed batch instead of starting over
    assert any(0 < s["embedded_now"] < s["molecules"] for s in res["per_shard"]), res["per_shard"]
    rows = {}
    for p in res["shards"]:
        c = phenix.connect(p)
        assert c.execute("SELECT phenix_check('screen')").fetchone()[0] == "ok"
        for rid, comp, conc, emb in c.execute("SELECT rowid, compound, concentration, embedding FROM screen"):
            assert rid not in rows
            rows[rid] = (comp, conc, emb)
        c.close()
    ref = {r: (c, u, e) for r, e, c, u in built["conn"].execute(
        "SELECT rowid, embedding, compound, concentration FROM screen")}
    assert rows == ref


def test_build_refuses_bad_input_clearly(built, cluster, tmp_path):
    lib = built["lib"].head(20).copy()
    lib.loc[7, "smiles"] = "C1CC"
    lib.to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(PhenixError, match=r"1 SMILES cannot be featurized, first: 'C1CC' \(library row 8\)"):
        pd_dist.build_shards(str(tmp_path / "bad.csv"), tmp_path / "a", 2, DOSES, client=cluster, progress=False)
    res = pd_dist.build_shards(str(tmp_path / "bad.csv"), tmp_path / "b", 2, DOSES, client=cluster, progress=False,
                               skip_bad_smiles=True)
    assert res["rows"] == 19 * len(DOSES) and sum(s["skipped_bad_smiles"] for s in res["per_shard"]) == 1
    with pytest.raises(PhenixError, match="no such file"):
        pd_dist.build_shards(str(tmp_path / "nope.csv"), tmp_path / "c", 2, DOSES, client=cluster)
    with pytest.raises(PhenixError, match="n_shards must be at least 1"):
        pd_dist.build_shards(str(tmp_path / "bad.csv"), tmp_path / "c", 0, DOSES, client=cluster)
    with pytest.raises(PhenixError, match="doses must be positive"):
        pd_dist.build_shards(str(tmp_path / "bad.csv"), tmp_path / "c", 2, [0.0], client=cluster)


def test_cli_screen_cluster_builds_shards_and_retrieves_like_one_table(built, cluster, tmp_path):
    db = tmp_path / "cli.db"
    c = phenix.connect(str(db))
    c.execute("CREATE TABLE q(query_id TEXT, profile BLOB)")
    prof = np.random.default_rng(3).standard_normal((6, 384)).astype(np.float32)
    c.executemany("INSERT INTO q VALUES (?, ?)", [(f"Q{i}", p.tobytes()) for i, p in enumerate(prof)])
    c.commit()
    c.close()
    env = dict(os.environ, PYTHONPATH=str(ROOT / "python"))
    addr = cluster.scheduler.address
    p = subprocess.run([sys.executable, "-m", "phenix.cli", "screen", str(db), "--cluster", addr, "--shards",
                        str(tmp_path / "sh"), "--n-shards", str(N_SHARDS), "--library", str(built["dir"] / "lib.csv"),
                        "--doses", "0.3,3", "--queries", "q", "--query-id", "query_id", "-k", "6", "--quiet"],
                       capture_output=True, text=True, env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    c = phenix.connect(str(db))
    got = c.execute("SELECT query_id, rank, candidate, compound, concentration_um, distance FROM screen_hits "
                    "ORDER BY query_id, rank").fetchall()
    c.close()
    # the same profiles through the one table: phenix_embed_phenomics then phenix_retrieve_all
    qe = pd_dist.embed_profiles(prof)
    ids, dist = one_table(built, qe, 6)
    names = dict(zip(built["rowids"].tolist(), zip(built["compound"], built["conc"].tolist())))
    want = [(f"Q{i}", r + 1, int(ids[i, r]), *names[int(ids[i, r])], float(dist[i, r]))
            for i in range(len(prof)) for r in range(6)]
    assert got == want
    bad = subprocess.run([sys.executable, "-m", "phenix.cli", "screen", str(db), "--cluster", addr, "--queries", "q",
                          "--quiet"], capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and bad.stderr.strip() == "phenix screen: --cluster needs --shards DIR"
