"""Sharded screens on a Dask cluster: build phenix shards in parallel, answer query batches exactly.

A library too large for one machine is split into ``N`` shards. **Every shard is a phenix database**
(``shard-00003-of-00008.db`` plus its ``-phenix/`` vector directory) holding, self-contained:

- ``phenix_shard(key, value)``: the shard's index, the shard count, the partition rule, the model, the
  doses, the library and whether it is complete;
- ``shard_library(id, compound, smiles)``: this shard's molecules, ``id`` = 0-based position in the
  library;
- the phenix table (default ``screen``) exactly as ``phenix screen`` makes it: ``embedding
  float16[dim] distance=cosine, compound TEXT, concentration REAL, +smiles TEXT``, rowid
  ``position · n_doses + dose_index + 1`` — the rowids the one-table screen gives the same library.

**Partition rule.** A molecule goes to shard ``int.from_bytes(blake2b(compound_id.encode('utf-8'),
digest_size=8).digest(), 'big') % N`` (:func:`shard_of`): stable across processes, machines and Python
versions (unlike ``hash()``), and every dose of a molecule lands in the same shard. The compound id is
the library's id column, or the 1-based row number as text when there is none (as ``phenix screen``).

**Engine.** Dask ``distributed`` (the measurement behind the choice is in docs/scale-out.md). Building:
one task per shard; the driver partitions the library into the shards' ``shard_library`` tables, each
worker embeds its shard inside SQL with ``phenix_embed_molecules`` in batches, one transaction each, so
a killed worker's task is re-run by Dask and resumes after the last committed batch. Searching: the
query batch is scattered once; one task per shard runs ``phenix_retrieve_all`` (or, with a metadata
filter, one filtered KNN per query) and returns its top ``k``; the driver merges them by ``(distance,
rowid)``, the order of one table. Before merging, the driver checks that every shard ``0..N-1`` answered
exactly once with the same ``N``; a failed shard task makes :func:`search` raise — a partial answer is
never returned. Dask re-runs a task whose worker died (``distributed.scheduler.allowed-failures``, 3 by
default) on another worker; after that the search fails with :class:`~phenix.PhenixError`.

The shard paths must be readable at the same path on every worker (one machine, or a shared file
system); the model bundle too.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence, Union

import numpy as np

from . import PhenixError

__all__ = ["shard_of", "shard_name", "build_shards", "search", "SearchResult", "local_cluster", "client_for",
           "shard_paths", "PARTITION_RULE"]

PARTITION_RULE = "blake2b-64(compound id, utf-8) mod n_shards"
_INT64_MAX = np.iinfo(np.int64).max


def shard_of(compound_id: str, n_shards: int) -> int:
    """The shard of a molecule: the first 8 bytes of blake2b(``compound_id`` as UTF-8), big-endian,
    modulo ``n_shards``."""
    if n_shards < 1:
        raise PhenixError(f"n_shards must be at least 1, got {n_shards}")
    h = hashlib.blake2b(str(compound_id).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(h, "big") % n_shards


def shard_name(index: int, n_shards: int) -> str:
    """``shard-00003-of-00008.db``."""
    return f"shard-{index:05d}-of-{n_shards:05d}.db"


def shard_paths(shards: Union[str, os.PathLike, Sequence[Union[str, os.PathLike]]]) -> list[str]:
    """A directory of ``shard-*-of-*.db`` files, or a list of shard files, as absolute paths."""
    if isinstance(shards, (str, os.PathLike)):
        p = Path(shards)
        if p.is_dir():
            found = sorted(glob.glob(str(p / "shard-*-of-*.db")))
            if not found:
                raise PhenixError(f"{p}: no shard-*-of-*.db files in this directory")
            return [str(Path(f).resolve()) for f in found]
        return [str(p.resolve())]
    out = [str(Path(s).resolve()) for s in shards]
    if not out:
        raise PhenixError("no shards given")
    return out


# ------------------------------------------------------------------------------------------ clusters

def _distributed():
    try:
        import distributed
    except ImportError as e:  # pragma: no cover - exercised only without dask
        raise PhenixError("phenix.distributed needs Dask: pip install 'dask[distributed]'") from e
    return distributed


@contextlib.contextmanager
def local_cluster(n_workers: int = 3, threads_per_worker: int = 1, **kwargs: Any) -> Iterator[Any]:
    """A Dask ``LocalCluster`` of ``n_workers`` worker processes on loopback (127.0.0.1, ports chosen by
    the OS, no dashboard) and a ``Client`` on it; both are closed on exit."""
    distributed = _distributed()
    kw = dict(n_workers=n_workers, threads_per_worker=threads_per_worker, processes=True, host="127.0.0.1",
              dashboard_address=None, scheduler_port=0, silence_logs=40)
    kw.update(kwargs)
    cluster = distributed.LocalCluster(**kw)
    try:
        client = distributed.Client(cluster)
        try:
            yield client
        finally:
            client.close()
    finally:
        cluster.close()


@contextlib.contextmanager
def client_for(spec: Union[str, Any]) -> Iterator[Any]:
    """A ``Client`` from ``spec``: an existing Client (used as is), ``local:N`` (a loopback cluster of N
    worker processes, closed on exit) or a scheduler address such as ``tcp://10.0.0.5:8786``."""
    if not isinstance(spec, str):
        yield spec
        return
    if spec.startswith("local"):
        n = spec.partition(":")[2] or "3"
        try:
            workers = int(n)
        except ValueError as e:
            raise PhenixError(f"--cluster {spec!r}: expected local:N (N worker processes) or a scheduler "
                              "address such as tcp://host:8786") from e
        if workers < 1:
            raise PhenixError(f"--cluster {spec!r}: N must be at least 1")
        with local_cluster(workers) as c:
            yield c
        return
    distributed = _distributed()
    try:
        c = distributed.Client(spec, timeout="20s")
    except (OSError, TimeoutError) as e:
        raise PhenixError(f"--cluster {spec!r}: cannot reach the Dask scheduler: {e}") from e
    try:
        yield c
    finally:
        c.close()


# ------------------------------------------------------------------------------------------ worker side

@dataclass
class _Shard:
    conn: sqlite3.Connection
    lock: threading.Lock
    meta: dict
    ino: int


_OPEN: dict[str, _Shard] = {}
_OPEN_LOCK = threading.Lock()
_MODELS: dict[str, str] = {}


def _read_meta(conn: sqlite3.Connection, path: str) -> dict:
    try:
        rows = conn.execute("SELECT key, value FROM phenix_shard").fetchall()
    except sqlite3.Error as e:
        raise PhenixError(f"{path}: not a phenix shard (no phenix_shard table: {e})") from e
    meta = {k: json.loads(v) for k, v in rows}
    for key in ("index", "n_shards", "table", "doses", "model"):
        if key not in meta:
            raise PhenixError(f"{path}: phenix_shard has no {key!r}")
    return meta


def _connect(path: str) -> sqlite3.Connection:
    from . import load

    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=60)
    load(conn)
    return conn


def _open_shard(path: str) -> _Shard:
    """This worker's connection to a shard, opened once per process (mapping a large vector file and
    reading its rowid map is the cost of a first query) and reopened if the file was replaced."""
    if not os.path.exists(path):
        raise PhenixError(f"{path}: no such shard on this worker")
    ino = os.stat(path).st_ino
    with _OPEN_LOCK:
        sh = _OPEN.get(path)
        if sh is not None and sh.ino == ino:
            return sh
        if sh is not None:
            sh.conn.close()
        conn = _connect(path)
        sh = _Shard(conn, threading.Lock(), _read_meta(conn, path), ino)
        _OPEN[path] = sh
        return sh


def _model_name(conn: sqlite3.Connection, model: str) -> str:
    """Registers a bundle once per process (phenix_model_load is process-wide) and returns its name."""
    if model == "default":
        return "default"
    path = str(Path(model).resolve())
    name = _MODELS.get(path)
    if name is None:
        name = "shard_model_" + hashlib.blake2b(path.encode(), digest_size=6).hexdigest()
        have = {r[0] for r in conn.execute("SELECT name FROM phenix_models")}
        if name not in have:
            conn.execute("SELECT phenix_model_load(?, ?)", (name, path))
        _MODELS[path] = name
    return name


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _build_one(path: str, batch: int, skip_bad_smiles: bool, delay: float = 0.0) -> dict:
    """Embeds the molecules of one shard's ``shard_library`` into its phenix table, in batches of
    ``batch`` molecules, one transaction each; resumes after the last committed batch."""
    t0 = time.time()
    conn = _connect(path)
    try:
        meta = _read_meta(conn, path)
        table, doses = meta["table"], [float(d) for d in meta["doses"]]
        nd = len(doses)
        name = _model_name(conn, meta["model"])
        dim = conn.execute("SELECT dim FROM phenix_models WHERE name = ?", (name,)).fetchone()[0]
        qt = _quote(table)
        conn.execute("BEGIN IMMEDIATE")
        if not conn.execute("SELECT 1 FROM sqlite_master WHERE name = ?", (table,)).fetchone():
            conn.execute(f"CREATE VIRTUAL TABLE {qt} USING phenix(embedding float16[{dim}] distance=cosine, "
                         "compound TEXT, concentration REAL, +smiles TEXT)")
        conn.execute("COMMIT")
        conn.execute("CREATE TEMP TABLE IF NOT EXISTS shard_batch(id INTEGER PRIMARY KEY, smiles TEXT, um REAL, "
                     "compound TEXT)")
        done = int(meta.get("molecules_done", -1))
        skipped = []
        embedded = 0
        while True:
            mols = conn.execute("SELECT id, compound, smiles FROM shard_library WHERE id > ? ORDER BY id LIMIT ?",
                                (done, batch)).fetchall()
            if not mols:
                break
            rows = [(pos * nd + j + 1, smi, d, comp) for pos, comp, smi in mols for j, d in enumerate(doses)]
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute("DELETE FROM temp.shard_batch")
                conn.executemany("INSERT INTO temp.shard_batch VALUES (?, ?, ?, ?)", rows)
                try:
                    _embed_batch(conn, name, qt)
                except sqlite3.Error as e:
                    bad = [(rid, s) for rid, s in conn.execute("SELECT id, smiles FROM temp.shard_batch")
                           if not _parses(conn, s)]
                    if not bad:
                        raise PhenixError(f"{path}: embedding failed: {e}") from e
                    if not skip_bad_smiles:
                        first = "; ".join(f"{s!r} (library row {(rid - 1) // nd + 1})" for rid, s in bad[:3 * nd:nd])
                        raise PhenixError(f"{path}: {len(bad) // nd} SMILES cannot be featurized, first: {first}; "
                                          "fix them or pass skip_bad_smiles / --skip-bad-smiles") from e
                    conn.executemany("DELETE FROM temp.shard_batch WHERE id = ?", [(rid,) for rid, _ in bad])
                    skipped += [(rid - 1) // nd for rid, _ in bad[::nd]]
                    _embed_batch(conn, name, qt)
                done = mols[-1][0]
                conn.execute("INSERT OR REPLACE INTO phenix_shard VALUES ('molecules_done', ?)", (json.dumps(done),))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            embedded += len(mols)
            if delay:
                time.sleep(delay)
        n_mol = conn.execute("SELECT count(*) FROM shard_library").fetchone()[0]
        n_rows = conn.execute(f"SELECT count(*) FROM {qt}").fetchone()[0]
        conn.execute("INSERT OR REPLACE INTO phenix_shard VALUES ('complete', 'true'), ('rows', ?)",
                     (json.dumps(n_rows),))
        return {"shard": meta["index"], "path": path, "molecules": n_mol, "rows": n_rows,
                "embedded_now": embedded, "skipped_bad_smiles": len(skipped), "seconds": time.time() - t0,
                "worker_pid": os.getpid()}
    finally:
        conn.close()


def _embed_batch(conn: sqlite3.Connection, name: str, qt: str) -> None:
    conn.execute(
        f"INSERT INTO {qt}(rowid, embedding, compound, concentration, smiles) "
        f"SELECT e.id, e.embedding, b.compound, b.um, b.smiles FROM phenix_embed_molecules(?, "
        f"'SELECT id, smiles, um FROM temp.shard_batch') e JOIN temp.shard_batch b ON b.id = e.id", (name,))


def _parses(conn: sqlite3.Connection, smiles: str) -> bool:
    try:
        conn.execute("SELECT phenix_fingerprint(?, 2, 2048)", (smiles,)).fetchone()
        return True
    except sqlite3.Error:
        return False


def _search_one(path: str, queries: np.ndarray, k: int, where: Optional[str], params: Sequence[Any],
                table: Optional[str], delay: float = 0.0) -> dict:
    """One shard's top ``k`` for every query: ``ids`` (nq × k, -1 where the shard has fewer rows) and
    ``distances`` (nq × k, +inf there), plus the shard's index and count for the driver's check."""
    t0 = time.perf_counter()
    sh = _open_shard(path)
    if delay:
        time.sleep(delay)
    nq = queries.shape[0]
    ids = np.full((nq, k), -1, dtype=np.int64)
    dist = np.full((nq, k), np.inf, dtype=np.float64)
    tname = table or sh.meta["table"]
    with sh.lock:
        c = sh.conn
        if _metric(c, tname) == "cosine":
            queries = _scaled(queries)
        if not sh.meta.get("complete"):
            sh.meta = _read_meta(c, path)
            if not sh.meta.get("complete"):
                raise PhenixError(f"{path}: shard {sh.meta['index']} is not completely built; run build_shards again")
        t1 = time.perf_counter()
        if where is None:
            c.execute("DROP TABLE IF EXISTS temp.phenix_dist_q")
            c.execute(f"CREATE VIRTUAL TABLE temp.phenix_dist_q USING phenix(v float32[{queries.shape[1]}])")
            c.execute("BEGIN")
            c.executemany("INSERT INTO temp.phenix_dist_q(rowid, v) VALUES (?, ?)",
                          ((i + 1, queries[i].tobytes()) for i in range(nq)))
            c.execute("COMMIT")
            for qr, rid, rank, d in c.execute(
                    "SELECT query_rowid, rowid, rank, distance FROM phenix_retrieve_all(?, 'temp.phenix_dist_q', ?)",
                    (tname, k)):
                ids[qr - 1, rank - 1] = rid
                dist[qr - 1, rank - 1] = d
            c.execute("DROP TABLE temp.phenix_dist_q")
        else:
            sql = f"SELECT rowid, distance FROM {_quote(tname)} WHERE embedding MATCH ? AND k = ? AND ({where})"
            for i in range(nq):
                rows = c.execute(sql, (queries[i].tobytes(), k, *params)).fetchall()
                for r, (rid, d) in enumerate(rows[:k]):
                    ids[i, r] = rid
                    dist[i, r] = d
        t2 = time.perf_counter()
    return {"index": sh.meta["index"], "n_shards": sh.meta["n_shards"], "path": path, "ids": ids,
            "distances": dist, "phenix_seconds": t2 - t1, "task_seconds": t2 - t0, "worker_pid": os.getpid()}


def _metric(conn: sqlite3.Connection, table: str) -> str:
    """The distance of phenix table ``table`` from its CREATE statement (cosine when not given)."""
    import re

    row = conn.execute("SELECT sql FROM sqlite_master WHERE name = ?", (table,)).fetchone()
    m = re.search(r"distance\s*=\s*([A-Za-z0-9]+)", row[0] if row and row[0] else "")
    return m.group(1).lower() if m else "cosine"


def _scaled(queries: np.ndarray) -> np.ndarray:
    """Each query divided by its largest |element| (in float64, then float32), as phenix's exact KNN
    ranking scales a cosine query before scoring (sql/src/table/rank.rs). Cosine distances do not
    change, but their last float32 bit then no longer depends on which of phenix_retrieve_all's paths
    (batched, or re-ranked exactly after a near-tie) a query took in this shard: every shard, and one
    table, score a (query, row) pair to the same bits."""
    q = queries.astype(np.float64)
    m = np.abs(q).max(axis=1, keepdims=True)
    m[(m == 0) | ~np.isfinite(m)] = 1.0
    return (q / m).astype(np.float32)


# ------------------------------------------------------------------------------------------ driver side

def _partition(library: str, out: Path, n_shards: int, doses: list[float], model: str, table: str,
               smiles_col: str, id_col: Optional[str], chunk: int, progress: bool) -> list[str]:
    """Writes each shard's molecules into its ``shard_library`` (one transaction per shard), or checks
    that existing shards were partitioned from the same library, doses and model."""
    from tqdm import tqdm

    from .pipeline import _library_chunks

    out.mkdir(parents=True, exist_ok=True)
    paths = [str((out / shard_name(i, n_shards)).resolve()) for i in range(n_shards)]
    spec = {"n_shards": n_shards, "doses": doses, "model": model, "library": str(library), "table": table,
            "rule": PARTITION_RULE}
    existing = [p for p in paths if os.path.exists(p)]
    others = sorted(set(glob.glob(str(out / "shard-*-of-*.db"))) - set(paths))
    if others:
        raise PhenixError(f"{out} holds shards of another layout ({Path(others[0]).name}); use a new directory")
    if existing:
        for i, p in enumerate(paths):
            if not os.path.exists(p):
                raise PhenixError(f"{out}: {Path(p).name} is missing while other shards exist; use a new directory")
            c = sqlite3.connect(p)
            try:
                meta = {k: json.loads(v) for k, v in c.execute("SELECT key, value FROM phenix_shard")}
            except sqlite3.Error as e:
                raise PhenixError(f"{p}: not a phenix shard: {e}") from e
            finally:
                c.close()
            got = {k: meta.get(k) for k in spec}
            if got != spec or meta.get("index") != i or not meta.get("partitioned"):
                raise PhenixError(f"{p} was built with {got}, not {spec}; use a new directory")
        return paths
    conns = []
    try:
        for i, p in enumerate(paths):
            c = sqlite3.connect(p + ".partial", isolation_level=None)
            c.execute("PRAGMA journal_mode=WAL")
            c.execute("BEGIN")
            c.execute("CREATE TABLE phenix_shard(key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            c.execute("CREATE TABLE shard_library(id INTEGER PRIMARY KEY, compound TEXT NOT NULL, smiles TEXT NOT NULL)")
            c.executemany("INSERT INTO phenix_shard VALUES (?, ?)",
                          [(k, json.dumps(v)) for k, v in {**spec, "index": i}.items()])
            conns.append(c)
        total, chunks = _library_chunks(None, library, smiles_col, id_col, chunk)
        bar = tqdm(total=total, desc="partitioning library", unit="mol", disable=not progress, mininterval=1.0)
        pos = 0
        for ids, smis in chunks:
            per: list[list[tuple]] = [[] for _ in range(n_shards)]
            for i, s in enumerate(smis):
                comp = ids[i] if ids[i] is not None else str(pos + i + 1)
                per[shard_of(comp, n_shards)].append((pos + i, comp, s))
            for c, rows in zip(conns, per):
                if rows:
                    c.executemany("INSERT INTO shard_library VALUES (?, ?, ?)", rows)
            pos += len(smis)
            bar.update(len(smis))
        bar.close()
        for c in conns:
            c.execute("INSERT INTO phenix_shard VALUES ('partitioned', 'true'), ('library_molecules', ?)",
                      (json.dumps(pos),))
            c.execute("COMMIT")
            c.execute("PRAGMA journal_mode=DELETE")
            c.close()
        conns = []
        for p in paths:
            os.replace(p + ".partial", p)
    except BaseException:
        for c in conns:
            c.close()
        for p in paths:
            for suffix in (".partial", ".partial-wal", ".partial-shm", ".partial-journal"):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(p + suffix)
        raise
    return paths


def build_shards(library: str, out_dir: Union[str, os.PathLike], n_shards: int, doses: Sequence[float], *,
                 client: Union[str, Any] = "local:3", model: str = "default", table: str = "screen",
                 smiles_column: str = "smiles", id_column: Optional[str] = "id", batch: int = 4096,
                 skip_bad_smiles: bool = False, progress: bool = True, _batch_delay: float = 0.0) -> dict:
    """Splits ``library`` (a .csv/.csv.gz/.parquet/.smi file, as ``phenix screen --library``) into
    ``n_shards`` phenix shard databases under ``out_dir`` and embeds every molecule at every dose (µM)
    on the cluster: one task per shard, ``phenix_embed_molecules`` inside SQL on the worker.

    ``client``: a Dask ``Client``, ``local:N`` or a scheduler address (:func:`client_for`). Re-running
    with the same arguments resumes: partitioned shards are kept, each shard continues after its last
    committed batch. Returns per-shard statistics and the shard paths. ``_batch_delay`` (seconds a
    worker sleeps after each committed batch) is a test seam for killing a worker mid-build.
    """
    if n_shards < 1:
        raise PhenixError(f"n_shards must be at least 1, got {n_shards}")
    doses = [float(d) for d in doses]
    if not doses or any(not (d > 0 and np.isfinite(d)) for d in doses):
        raise PhenixError(f"doses must be positive numbers in µM, got {doses}")
    if not Path(library).exists():
        raise PhenixError(f"library {library}: no such file (shards are built from a .csv, .csv.gz, .parquet or "
                          ".smi file)")
    if model != "default":
        if not Path(model).is_dir():
            raise PhenixError(f"model {model}: no such bundle directory")
        model = str(Path(model).resolve())
    t0 = time.time()
    paths = _partition(library, Path(out_dir), n_shards, doses, model, table, smiles_column, id_column or None,
                       max(batch, 1), progress)
    t1 = time.time()
    from tqdm import tqdm

    with client_for(client) as cl:
        distributed = _distributed()
        futs = [cl.submit(_build_one, p, batch, skip_bad_smiles, _batch_delay, pure=False,
                          key=f"phenix-build-{os.path.basename(p)}-{time.time_ns()}") for p in paths]
        stats = []
        bar = tqdm(total=len(futs), desc="building shards", unit="shard", disable=not progress)
        try:
            for f in distributed.as_completed(futs):
                stats.append(_result(f, "build"))
                bar.update(1)
        finally:
            bar.close()
            for f in futs:
                f.cancel()
    stats.sort(key=lambda s: s["shard"])
    return {"shards": paths, "n_shards": n_shards, "rows": sum(s["rows"] for s in stats),
            "molecules": sum(s["molecules"] for s in stats), "partition_seconds": t1 - t0,
            "build_seconds": time.time() - t1, "per_shard": stats}


def _result(fut: Any, what: str) -> Any:
    try:
        return fut.result()
    except PhenixError:
        raise
    except Exception as e:  # KilledWorker, CommClosedError, sqlite3.Error raised on the worker, ...
        raise PhenixError(f"{what} task {fut.key} failed ({type(e).__name__}: {e}); no partial result is "
                          "returned") from e


@dataclass
class SearchResult:
    """The merged top ``k`` of every query over all shards, in one table's order.

    ``ids[q, r]`` is the rowid of rank ``r + 1`` for query ``q`` (-1 where fewer than ``k`` rows
    qualify), ``distances[q, r]`` its distance (+inf there). ``tasks`` holds each shard task's timing
    (``phenix_seconds``: inside SQL; ``task_seconds``: the whole task on the worker)."""

    ids: np.ndarray
    distances: np.ndarray
    shard: np.ndarray
    """``shard[q, r]``: the index of the shard holding that hit (-1 where there is none)."""
    shard_paths: dict
    """shard index -> shard file"""
    tasks: list = field(default_factory=list)
    seconds: float = 0.0

    def rows(self) -> Iterator[tuple[int, int, int, float]]:
        """``(query_index, rank, rowid, distance)`` for every hit, rank from 1."""
        for q in range(self.ids.shape[0]):
            for r in range(self.ids.shape[1]):
                if self.ids[q, r] >= 0:
                    yield q, r + 1, int(self.ids[q, r]), float(self.distances[q, r])


def merge(parts: Sequence[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact top ``k`` over per-shard top ``k`` lists: ascending distance, ties by ascending rowid
    (the order of ``phenix_retrieve_all`` on one table); missing entries (-1) sort last. Returns
    ``(ids, distances, source)``, ``source[q, r]`` the position in ``parts`` the hit came from (-1
    for padding)."""
    ids = np.concatenate([p[0] for p in parts], axis=1)
    dist = np.concatenate([p[1] for p in parts], axis=1)
    src = np.concatenate([np.full(p[0].shape, i, dtype=np.int64) for i, p in enumerate(parts)], axis=1)
    key = np.where(ids < 0, _INT64_MAX, ids)
    if ids.shape[1] > 4 * k:
        # Keep every entry whose distance is at most the k-th smallest (ties at the k-th place
        # included), with two linear-time partitions, then sort only those.
        kth = np.take_along_axis(dist, np.argpartition(dist, k - 1, axis=1)[:, k - 1:k], axis=1)
        inside = dist <= kth
        m = int(inside.sum(axis=1).max())
        keep = np.argpartition(~inside, m - 1, axis=1)[:, :m] if m < ids.shape[1] else \
            np.broadcast_to(np.arange(ids.shape[1]), ids.shape)
        ids, dist, src, key = (np.take_along_axis(x, keep, axis=1) for x in (ids, dist, src, key))
    order = np.lexsort((key, dist), axis=1)[:, :k]
    out_ids = np.take_along_axis(ids, order, axis=1)
    out_d = np.take_along_axis(dist, order, axis=1)
    out_src = np.take_along_axis(src, order, axis=1)
    empty = np.isinf(out_d) | (out_ids < 0)
    out_ids = np.where(empty, -1, out_ids)
    out_src = np.where(empty, -1, out_src)
    out_d = np.where(empty, np.inf, out_d)
    if out_ids.shape[1] < k:
        pad = ((0, 0), (0, k - out_ids.shape[1]))
        out_ids = np.pad(out_ids, pad, constant_values=-1)
        out_src = np.pad(out_src, pad, constant_values=-1)
        out_d = np.pad(out_d, pad, constant_values=np.inf)
    s = np.sort(np.where(out_ids < 0, -np.arange(1, k + 1)[None, :], out_ids), axis=1)
    if (s[:, 1:] == s[:, :-1]).any():
        raise PhenixError("the same rowid came from two shards: the shards overlap (built from different "
                          "libraries or partitions?)")
    return out_ids, out_d, out_src


def embed_profiles(profiles: np.ndarray, model: str = "default") -> np.ndarray:
    """Query profiles (n × features, float32) → joint-space embeddings with ``phenix_embed_phenomics``."""
    from . import connect

    conn = connect(":memory:")
    try:
        name = _model_name(conn, model)
        out = [np.frombuffer(conn.execute("SELECT phenix_embed_phenomics(?, ?)", (name, np.asarray(p, np.float32)
                                                                                 .tobytes())).fetchone()[0],
                             dtype=np.float16) for p in profiles]
    finally:
        conn.close()
    return np.asarray(out, dtype=np.float32).reshape(len(profiles), -1)


def search(shards: Union[str, os.PathLike, Sequence[Union[str, os.PathLike]]], queries: np.ndarray, k: int, *,
           client: Union[str, Any] = "local:3", where: Optional[str] = None, params: Sequence[Any] = (),
           table: Optional[str] = None, profiles_model: Optional[str] = None, _task_delay: float = 0.0
           ) -> SearchResult:
    """The ``k`` nearest rows of all shards to every query, equal to one table holding all rows.

    - ``shards``: a directory of ``shard-*-of-*.db`` or a list of shard files (every shard 0..N-1 of one
      build must be present, or the search refuses).
    - ``queries``: (n, dim) embeddings (any float dtype, sent as float32); with ``profiles_model`` they
      are phenomic profiles, embedded first by ``phenix_embed_phenomics`` of that bundle (or
      ``'default'``) on the driver.
    - ``where``/``params``: a metadata filter on the shard table's columns (``"concentration = ?"``,
      ``(3.0,)``), added to each shard's KNN as ``AND (where)``; each query is then one filtered KNN
      per shard (docs/sql.md, "KNN queries") instead of ``phenix_retrieve_all``.
    - ``client``: a Dask ``Client``, ``local:N`` or a scheduler address.

    Raises :class:`~phenix.PhenixError` when a shard task fails (after Dask's retries on a lost worker),
    a shard is missing, duplicated, incomplete or from another build. ``_task_delay`` (seconds each
    shard task sleeps after opening its shard) is a test seam for killing a worker mid-query.
    """
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise PhenixError(f"k must be a positive integer, got {k!r}")
    paths = shard_paths(shards)
    q = np.asarray(queries)
    if q.ndim == 1:
        q = q[None, :]
    if q.ndim != 2 or q.shape[0] == 0:
        raise PhenixError(f"queries must be a non-empty (n, dim) array, got shape {q.shape}")
    if profiles_model is not None:
        q = embed_profiles(q, profiles_model)
    q = np.ascontiguousarray(q, dtype=np.float32)
    if not np.isfinite(q).all():
        raise PhenixError("queries hold NaN or infinite values")
    t0 = time.perf_counter()
    with client_for(client) as cl:
        qf = cl.scatter(q, broadcast=True, hash=False)
        futs = [cl.submit(_search_one, p, qf, int(k), where, tuple(params), table, _task_delay, pure=False,
                          key=f"phenix-search-{os.path.basename(p)}-{time.time_ns()}") for p in paths]
        try:
            res = [_result(f, "search") for f in futs]
        finally:
            for f in futs:
                f.cancel()
            qf.release()
    n = {r["n_shards"] for r in res}
    if len(n) != 1:
        raise PhenixError(f"the shards come from builds with different shard counts {sorted(n)}")
    n_shards = n.pop()
    got = sorted(r["index"] for r in res)
    if got != list(range(n_shards)):
        missing = sorted(set(range(n_shards)) - set(got))
        dup = sorted({i for i in got if got.count(i) > 1})
        raise PhenixError(f"the shards do not form one complete build of {n_shards}: "
                          + (f"missing {missing}" if missing else "") + (" " if missing and dup else "")
                          + (f"given twice {dup}" if dup else "") + "; a partial answer is not returned")
    ids, dist, src = merge([(r["ids"], r["distances"]) for r in res], int(k))
    tasks = [{k2: v for k2, v in r.items() if k2 not in ("ids", "distances")} for r in res]
    shard = np.where(src < 0, -1, np.array([r["index"] for r in res])[np.maximum(src, 0)])
    return SearchResult(ids, dist, shard, {r["index"]: r["path"] for r in res}, tasks, time.perf_counter() - t0)


# ------------------------------------------------------------------------------------------ phenix screen --cluster

def run_screen_cluster(db: str, cluster: Union[str, Any], shards: Optional[str], n_shards: int, model: str,
                       library: Optional[str], doses: list[float], table: str = "screen", smiles_col: str = "smiles",
                       id_col: Optional[str] = "id", batch: int = 4096, queries: Optional[str] = None,
                       query_profile: str = "profile", query_id: str = "rowid", k: int = 10,
                       out: str = "screen_hits", csv: Optional[str] = None, skip_bad_smiles: bool = False,
                       progress: bool = True) -> dict:
    """``phenix screen --cluster``: builds shards of ``library`` under ``shards`` on the cluster and/or
    retrieves the ``k`` nearest candidates over all shards for the profiles of table ``queries`` of
    ``db`` into its table ``out`` (same columns as the one-table ``phenix screen``)."""
    from . import connect
    from .pipeline import load_manifest
    from .wells import feature_list, first_mismatch, quote, require_columns, table_columns

    if not shards:
        raise PhenixError("--cluster needs --shards DIR")
    stats: dict = {"shards_dir": str(shards)}
    with client_for(cluster) as cl:
        if library:
            b = build_shards(library, shards, n_shards, doses, client=cl, model=model, table=table,
                             smiles_column=smiles_col, id_column=id_col, batch=batch, skip_bad_smiles=skip_bad_smiles,
                             progress=progress)
            stats.update(n_shards=b["n_shards"], candidates=b["rows"], library_rows=b["molecules"],
                         skipped_bad_smiles=sum(s["skipped_bad_smiles"] for s in b["per_shard"]),
                         embed_seconds=b["partition_seconds"] + b["build_seconds"])
        if not queries:
            return stats
        conn = connect(db, isolation_level=None)
        try:
            have = table_columns(conn, queries)
            require_columns(have, {"profile": query_profile, "query id": None if query_id == "rowid" else query_id},
                            queries)
            if conn.execute("SELECT 1 FROM sqlite_master WHERE name = ?", (out,)).fetchone():
                raise PhenixError(f"output table {out!r} exists; choose another --out")
            name = "default"
            if model != "default":
                man = load_manifest(Path(model))
                fl = feature_list(conn, queries)
                if man["phenomics"].get("features") and fl is not None:
                    mm = first_mismatch(man["phenomics"]["features"], fl)
                    if mm:
                        raise PhenixError(f"table {queries!r}: the feature list does not match the model's: {mm}")
                name = _model_name(conn, model)
            qid_sql = quote(query_id) if query_id != "rowid" else "rowid"
            rows = conn.execute(f"SELECT {qid_sql}, phenix_embed_phenomics(?, {quote(query_profile)}) "
                                f"FROM {quote(queries)}", (name,)).fetchall()
            if not rows:
                raise PhenixError(f"table {queries!r} has no rows")
            qids = [r[0] for r in rows]
            qe = np.asarray([np.frombuffer(r[1], dtype=np.float16) for r in rows], dtype=np.float32)
            t1 = time.time()
            res = search(shards, qe, k, client=cl, table=table)
            # candidate columns, read from the shard that holds each hit
            info: dict[int, tuple] = {}
            for si, path in res.shard_paths.items():
                want = sorted({int(x) for x in res.ids[res.shard == si]})
                if not want:
                    continue
                sc = connect(path)
                try:
                    for i in range(0, len(want), 500):
                        part = want[i:i + 500]
                        for rid, comp, smi, conc in sc.execute(
                                f"SELECT rowid, compound, smiles, concentration FROM {quote(table)} WHERE rowid IN "
                                f"({','.join('?' * len(part))})", part):
                            info[rid] = (comp, smi, conc)
                finally:
                    sc.close()
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute(f"CREATE TABLE {quote(out)}(query_id, rank INTEGER, candidate INTEGER, compound TEXT, "
                             "smiles TEXT, concentration_um REAL, distance REAL)")
                conn.executemany(f"INSERT INTO {quote(out)} VALUES (?, ?, ?, ?, ?, ?, ?)",
                                 [(qids[q], rank, rid, *info[rid], d) for q, rank, rid, d in res.rows()])
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            stats.update(queries=len(qids), hits_table=out, retrieve_seconds=time.time() - t1)
            if csv:
                import pandas as pd

                pd.read_sql_query(f"SELECT * FROM {quote(out)} ORDER BY query_id, rank", conn).to_csv(csv, index=False)
                stats["csv"] = csv
        finally:
            conn.close()
    return stats
