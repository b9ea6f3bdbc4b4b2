"""What ``phenix train``, ``phenix evaluate`` and ``phenix screen`` do, callable from Python."""

from __future__ import annotations

import itertools
import json
import math
import os
import shutil
import sqlite3
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Optional

import numpy as np

from . import PhenixError, connect
from .wells import (Columns, build_dataset, call_activity, check_split_feasible, first_mismatch,
                    normalize_plates, quote, read_wells)


# ------------------------------------------------------------------------------------------ train

def run_train(db: str, cols: Columns, out: Path, cfg, report_dir: Optional[Path] = None, normalize: str = "center",
              active_p: float = 0.01, n_null: int = 20000, skip_bad_smiles: bool = False, name: str = "model",
              force: bool = False, progress: bool = True, command: str = "", log=print,
              training_data: Optional[str] = None) -> dict:
    """Wells table -> plate normalisation -> activity calls -> scaffold split -> training -> bundle + report."""
    from .training import recipe as T
    from .training.export import export_bundle
    from .training.report import write_report

    import jax

    t0 = time.time()
    out = Path(out)
    report_dir = Path(report_dir) if report_dir else out.with_name(out.name + "-report")
    if out.exists() and not force and any(out.iterdir()):
        raise PhenixError(f"{out} exists and is not empty; pass --force to replace the bundle")
    if not Path(db).exists():
        raise PhenixError(f"no such database: {db}")
    conn = connect(f"file:{db}?mode=ro", uri=True)
    w = read_wells(conn, cols, progress=progress)
    norm = normalize_plates(w, normalize, conn, cols)
    conn.close()
    norm["controls"] = cols.control
    ds, notes = build_dataset(w, chem=True, skip_bad_smiles=skip_bad_smiles)
    check_split_feasible(ds, cfg.test_frac, cfg.val_frac)
    call_activity(ds, active_p, n_null, seed=cfg.seed)
    summary = ds.summary()
    log(f"phenix train: {summary['n_molecules']} molecules, {summary['n_pairs']} (molecule, dose) pairs, "
        f"{summary['n_wells']} wells on {summary['n_plates']} plates; {summary['active_fraction_pairs']:.1%} of pairs "
        f"called active; JAX device: {jax.devices()[0].platform}")
    prep = T.prepare(ds, cfg)
    for code, what in ((2, "test"), (1, "validation")):
        if not (prep.split == code).any():
            raise PhenixError(f"the scaffold split left no {what} molecules: too few scaffolds")
    t_prep = time.time() - t0
    params, spec, info = T.train(prep, cfg, progress=progress)
    t1 = time.time()
    metrics = T.evaluate(params, prep, spec, splits=("val", "scaffold", "unseen_replicates"), keep_ranks=True)
    t_eval = time.time() - t1
    provenance = {
        "training_data": training_data or f"wells table {cols.table!r} of {Path(db).name}",
        "columns": cols.to_dict(),
        "plate_normalization": norm,
        "activity": {"method": "replicate cosine vs random distinct-molecule well tuples", "active_p": active_p,
                     "n_null": n_null},
        "dataset": summary,
        **({"notes": notes} if notes else {}),
    }
    tmp = out.with_name(out.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    diffs = export_bundle(params, prep, spec, cfg, tmp, command=command, metrics=metrics,
                          training_data=provenance.pop("training_data"), provenance=provenance,
                          features=w.features, plate_normalization=norm, name=name)
    if out.exists():
        for f in ("phenix-model.json", "molecule.onnx", "phenomics.onnx"):
            if (out / f).exists():
                (out / f).unlink()
        for f in tmp.iterdir():
            os.replace(f, out / f.name)
        tmp.rmdir()
    else:
        os.replace(tmp, out)
    # joint space of scaffold-test actives
    q, pairs, _, act = T.split_queries(prep, "scaffold")
    sel = np.flatnonzero(act)[:3000]
    joint = None
    if len(sel):
        zp = T.embed_profiles(params, q[sel])
        zm = T.embed_pairs(params, prep, spec, pairs[sel])
        joint = {"phenomics": zp, "molecule": zm, "dose_index": ds.pair_dose[pairs[sel]]}
    record = {"name": name, "command": command, "bundle": str(out), "train_config": asdict(cfg),
              "columns": cols.to_dict(), "plate_normalization": norm, "dataset": summary, "notes": notes,
              "onnx_max_abs_diff": diffs,
              "timing_seconds": {"read_prepare": t_prep, "train": info["train_seconds"], "evaluate": t_eval,
                                 "total": time.time() - t0}}
    page = write_report(report_dir, record, metrics, info["history"], joint)
    public = {sp: {k: v for k, v in d.items() if not k.startswith("_")} for sp, d in metrics.items()}
    return {"bundle": str(out), "report": str(page), "metrics": public, "dataset": summary,
            "seconds": time.time() - t0}


# ------------------------------------------------------------------------------------------ evaluate

def load_manifest(bundle: Path) -> dict:
    p = Path(bundle) / "phenix-model.json"
    if not p.exists():
        raise PhenixError(f"{bundle}: not a model bundle (no phenix-model.json)")
    return json.loads(p.read_text())


def check_features(manifest: dict, features: Optional[list[str]], dim: int, where: str) -> None:
    """Refuses profiles that do not fit the bundle, naming the first mismatching feature."""
    ph = manifest["phenomics"]
    want = ph.get("features")
    if want is not None and features is not None:
        mm = first_mismatch(want, features)
        if mm:
            raise PhenixError(f"{where}: the feature list does not match the model's: {mm}")
    if dim != ph["input_dim"]:
        raise PhenixError(f"{where}: profiles have {dim} features but the model expects {ph['input_dim']}")


def run_evaluate(db: str, bundle: Path, cols: Columns, split: str = "all", normalize: Optional[str] = None,
                 save_queries: Optional[str] = None, progress: bool = True, log=print) -> dict:
    """Top-1 % / 5 % recall (all and active queries) and mAP of a bundle on a wells table, through phenix
    itself: candidates embedded by phenix_embed_molecules, queries by phenix_embed_phenomics, ranked by
    phenix_retrieve_all."""
    t0 = time.time()
    man = load_manifest(bundle)
    prov = man.get("provenance", {})
    tc = prov.get("train_config", {})
    if not Path(db).exists():
        raise PhenixError(f"no such database: {db}")
    conn = connect(db)
    w = read_wells(conn, cols, progress=progress)
    check_features(man, w.features, w.profiles.shape[1], f"table {cols.table!r}")
    method = normalize or man["phenomics"].get("plate_normalization", {}).get("method", "center")
    normalize_plates(w, method, conn, cols)
    ds, notes = build_dataset(w, chem=(split != "all"))
    seed = int(prov.get("seed", 0))
    act_cfg = prov.get("activity", {})
    call_activity(ds, act_cfg.get("active_p", 0.01), act_cfg.get("n_null", 20000), seed=seed)
    if split == "all":
        pairs = np.flatnonzero(ds.present.any(1))
    elif split in ("test", "val"):
        from .training.split import scaffold_split

        sp = scaffold_split(ds.scaffolds, seed, tc.get("test_frac", 0.1), tc.get("val_frac", 0.1))
        mols = np.flatnonzero(sp == (2 if split == "test" else 1))
        pairs = np.flatnonzero(np.isin(ds.pair_mol, mols) & ds.present.any(1))
    else:
        raise PhenixError(f"unknown --split {split!r}: expected all, test or val")
    if len(pairs) == 0:
        raise PhenixError("no (molecule, dose) pairs to evaluate")
    m = ds.present[pairs].astype(np.float32)
    q = ((ds.profiles[pairs] * m[:, :, None]).sum(1) / m.sum(1, keepdims=True)).astype(np.float32)
    smiles = ds.mol_smiles[ds.pair_mol[pairs]]
    um = ds.doses_um[ds.pair_dose[pairs]]
    active = ds.active[pairs]
    n = len(pairs)
    k1, k5 = math.ceil(0.01 * n), math.ceil(0.05 * n)
    with tempfile.TemporaryDirectory(prefix="phenix-eval-") as td:
        c = connect(os.path.join(td, "eval.db"))
        c.execute("SELECT phenix_model_load('eval', ?)", (str(Path(bundle).resolve()),))
        dim = man["embedding"]["dim"]
        c.execute("CREATE TABLE src(id INTEGER PRIMARY KEY, smiles TEXT, um REAL)")
        c.executemany("INSERT INTO src VALUES (?, ?, ?)",
                      [(i + 1, str(s), float(u)) for i, (s, u) in enumerate(zip(smiles, um))])
        c.execute(f"CREATE VIRTUAL TABLE cands USING phenix(embedding float16[{dim}] distance=cosine)")
        c.execute(f"CREATE VIRTUAL TABLE queries USING phenix(embedding float16[{dim}] distance=cosine)")
        # One long statement each: their bar comes from libphenix's progress callback.
        from .progress import bar as sql_bar
        with sql_bar("evaluate", disable=not progress):
            c.execute("INSERT INTO cands(rowid, embedding) SELECT id, embedding "
                      "FROM phenix_embed_molecules('eval', 'SELECT id, smiles, um FROM src')")
        c.executemany("INSERT INTO queries(rowid, embedding) VALUES (?, phenix_embed_phenomics('eval', ?))",
                      [(i + 1, q[i].tobytes()) for i in range(n)])
        c.commit()
        rank = np.full(n, np.inf)
        with sql_bar("evaluate", disable=not progress):
            hits = c.execute("SELECT query_rowid, rowid, rank FROM phenix_retrieve_all('cands', 'queries', ?)",
                             (k5,)).fetchall()
        for qid, rid, rk in hits:
            if qid == rid:
                rank[qid - 1] = rk
        zm = np.stack([np.frombuffer(b, "<f2") for (b,) in c.execute("SELECT embedding FROM cands ORDER BY rowid")])
        zq = np.stack([np.frombuffer(b, "<f2") for (b,) in c.execute("SELECT embedding FROM queries ORDER BY rowid")])
        c.close()
    # mAP: positives of a query are the candidates of the same molecule (any dose)
    mol = ds.pair_mol[pairs]
    S = zq.astype(np.float32) @ zm.astype(np.float32).T
    aps = np.empty(n)
    for i in range(n):
        order = np.argsort(-S[i], kind="stable")
        rel = (mol[order] == mol[i]).astype(np.float64)
        hits = np.cumsum(rel)
        aps[i] = float((rel * hits / np.arange(1, n + 1)).sum() / rel.sum())
    res = {"split": split, "n_queries": int(n), "n_candidates": int(n), "n_active_queries": int(active.sum()),
           "k_top1": k1, "k_top5": k5,
           "top1_all": float(np.mean(rank <= k1)), "top5_all": float(np.mean(rank <= k5)),
           "top1_active": float(np.mean(rank[active] <= k1)) if active.any() else None,
           "top5_active": float(np.mean(rank[active] <= k5)) if active.any() else None,
           "map_same_molecule": float(aps.mean()),
           "map_same_molecule_active": float(aps[active].mean()) if active.any() else None,
           "plate_normalization": method, "seconds": time.time() - t0}
    if save_queries:
        conn.isolation_level = None
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(f"CREATE TABLE {quote(save_queries)}(query_id INTEGER PRIMARY KEY, compound TEXT, smiles TEXT, "
                         "dose_um REAL, active INTEGER, profile BLOB)")
            conn.executemany(f"INSERT INTO {quote(save_queries)} VALUES (?, ?, ?, ?, ?, ?)",
                             [(i + 1, str(ds.mol_compound[mol[i]]), str(smiles[i]), float(um[i]), int(active[i]),
                               q[i].tobytes()) for i in range(n)])
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    conn.close()
    return res


# ------------------------------------------------------------------------------------------ screen

def _open_text(p: Path):
    if p.name.lower().endswith(".gz"):
        import gzip

        return gzip.open(p, "rt", newline="", encoding="utf-8")
    return open(p, newline="", encoding="utf-8")


def _batched(rows, chunk: int):
    ids: list = []
    smis: list = []
    for i, s in rows:
        ids.append(i)
        smis.append(s)
        if len(smis) == chunk:
            yield ids, smis
            ids, smis = [], []
    if smis:
        yield ids, smis


def _text_library(p: Path, library: str, smiles_col: str, id_col: Optional[str], chunk: int, smi: bool):
    """A .smi file (whitespace-separated SMILES and optional id per line, no header) or a CSV/TSV with a
    header naming the SMILES and id columns."""
    import csv

    with _open_text(p) as f:
        if smi:
            def rows():
                for line in f:
                    parts = line.split(None, 2)
                    if parts:
                        yield (parts[1] if len(parts) > 1 else None), parts[0]
            yield from _batched(rows(), chunk)
            return
        sep = "\t" if ".tsv" in p.name.lower() else ","
        r = csv.reader(f, delimiter=sep)
        header = next(r, None)
        if header is None:
            raise PhenixError(f"{library}: the file is empty")
        if smiles_col not in header:
            from .wells import close_matches

            close = close_matches(smiles_col, header)
            raise PhenixError(f"{library}: no SMILES column {smiles_col!r}" + (f" (close matches: {', '.join(close)})"
                                                                            if close else ""))
        si = header.index(smiles_col)
        ii = header.index(id_col) if id_col and id_col in header else None
        # a batch at a time in list comprehensions: a generator per row cost 9 µs a molecule
        while True:
            recs = [rec for rec in itertools.islice(r, chunk) if rec]  # blank lines skipped
            if not recs:
                return
            smis = [rec[si].strip() if si < len(rec) else "" for rec in recs]
            if ii is None:
                ids = [None] * len(recs)
            else:
                ids = [(rec[ii] or None) if ii < len(rec) else None for rec in recs]
            yield ids, smis


def _parquet_library(p: Path, library: str, smiles_col: str, id_col: Optional[str], chunk: int):
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(p)
    names = pf.schema_arrow.names
    if smiles_col not in names:
        from .wells import close_matches

        close = close_matches(smiles_col, names)
        raise PhenixError(f"{library}: no SMILES column {smiles_col!r}" + (f" (close matches: {', '.join(close)})"
                                                                        if close else ""))
    cols = [smiles_col] + ([id_col] if id_col and id_col in names and id_col != smiles_col else [])
    for b in pf.iter_batches(batch_size=chunk, columns=cols):
        smis = ["" if v is None else str(v).strip() for v in b.column(0).to_pylist()]
        ids = ([None if v is None else str(v) for v in b.column(1).to_pylist()] if len(cols) > 1
               else [None] * len(smis))
        yield ids, smis


def _library_chunks(conn, library: str, smiles_col: str, id_col: Optional[str], chunk: int):
    """(total or None, iterator of (ids, smiles) lists) from a file (.csv/.csv.gz/.parquet/.smi) or a table.

    Files are read with the csv module (or pyarrow for Parquet), not pandas: importing pandas takes
    0.5-1.3 s, which was a visible share of a screen of 10,000s of molecules (docs/benchmarks.md).
    A missing id is None (the library row number is used); a missing SMILES is '' (refused as
    unparsable).
    """
    p = Path(library)
    if p.exists():
        name = p.name.lower()
        if name.endswith((".parquet", ".pq")):
            return None, _parquet_library(p, library, smiles_col, id_col, chunk)
        return None, _text_library(p, library, smiles_col, id_col, chunk,
                                   smi=name.endswith((".smi", ".smi.gz", ".txt", ".txt.gz")))
    from .wells import require_columns, table_columns

    have = table_columns(conn, library)
    require_columns(have, {"SMILES": smiles_col, "id": id_col}, library)
    total = conn.execute(f"SELECT count(*) FROM {quote(library)}").fetchone()[0]
    idexpr = quote(id_col) if id_col else "NULL"

    def gen_t():
        last = None
        while True:
            rows = conn.execute(f"SELECT rowid, {idexpr}, {quote(smiles_col)} FROM {quote(library)} "
                                f"WHERE ?1 IS NULL OR rowid > ?1 ORDER BY rowid LIMIT ?2", (last, chunk)).fetchall()
            if not rows:
                return
            last = rows[-1][0]
            yield [None if r[1] is None else str(r[1]) for r in rows], [str(r[2]) for r in rows]
    return total, gen_t()


def run_screen(db: str, model: str, library: Optional[str], doses: list[float], table: str = "screen",
               smiles_col: str = "smiles", id_col: Optional[str] = "id", batch: int = 4096,
               queries: Optional[str] = None, query_profile: str = "profile", query_id: str = "rowid", k: int = 10,
               out: str = "screen_hits", csv: Optional[str] = None, skip_bad_smiles: bool = False,
               progress: bool = True, log=print, commit_seconds: float = 3.0) -> dict:
    """Embeds a molecule library at ``doses`` into the phenix table ``table`` in batches of ``batch``
    molecules (one statement each; the batches of about ``commit_seconds`` are committed together; a
    re-run resumes after the last committed batch), then retrieves the ``k`` nearest candidates for
    every profile of ``queries`` into the table ``out`` (and ``csv``)."""
    from tqdm import tqdm

    if not doses or any(not (d > 0 and math.isfinite(d)) for d in doses):
        raise PhenixError(f"--doses must be positive numbers in µM, got {doses}")
    if batch < 1:
        raise PhenixError(f"--batch-size must be a positive number of molecules, got {batch}")
    if not commit_seconds >= 0:
        raise PhenixError(f"--commit-seconds must be 0 or more, got {commit_seconds}")
    conn = connect(db)
    conn.isolation_level = None
    name = "default"
    if model != "default":
        man = load_manifest(Path(model))
        name = "screen"
        conn.execute("SELECT phenix_model_load(?, ?)", (name, str(Path(model).resolve())))
    else:
        man = None
    dim = conn.execute("SELECT dim FROM phenix_models WHERE name = ?", (name,)).fetchone()[0]
    stats: dict = {"table": table}
    t0 = time.time()
    if library:
        conn.execute("CREATE TABLE IF NOT EXISTS phenix_screens(table_name TEXT PRIMARY KEY, model TEXT, doses TEXT, "
                     "library TEXT, rows_done INTEGER NOT NULL DEFAULT 0)")
        rec = conn.execute("SELECT model, doses, library, rows_done FROM phenix_screens WHERE table_name = ?",
                           (table,)).fetchone()
        spec = (str(model), json.dumps(doses), str(library))
        if rec is None:
            if conn.execute("SELECT 1 FROM sqlite_master WHERE name = ?", (table,)).fetchone():
                raise PhenixError(f"table {table!r} exists and is not a phenix screen; choose another --table")
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(f"CREATE VIRTUAL TABLE {quote(table)} USING phenix(embedding float16[{dim}] distance=cosine, "
                         "compound TEXT, concentration REAL, +smiles TEXT)")
            conn.execute("INSERT INTO phenix_screens VALUES (?, ?, ?, ?, 0)", (table, *spec))
            conn.execute("COMMIT")
            done = 0
        else:
            if tuple(rec[:3]) != spec:
                raise PhenixError(f"table {table!r} was screened with model/doses/library {rec[:3]}, not {spec}; "
                                  "choose another --table to screen differently")
            done = rec[3]
        stats["resumed_after_rows"] = done
        total, chunks = _library_chunks(conn, library, smiles_col, id_col, batch)
        conn.execute("CREATE TEMP TABLE IF NOT EXISTS screen_batch(id INTEGER PRIMARY KEY, smiles TEXT, um REAL, "
                     "compound TEXT)")
        bar = tqdm(total=total, desc="embedding library", unit="mol", disable=not progress, mininterval=1.0)
        if progress:
            # A batch is one long statement: libphenix's progress callback moves the bar within it.
            from .progress import set_progress

            def within_batch(op: str, done_rows: int, _total: int) -> bool:
                if op == "embed_molecules":
                    bar.update(max(0, batch_start + done_rows // nd - bar.n))
                return False

            set_progress(within_batch, 500)
        pos = 0
        skipped = 0
        nd = len(doses)
        # Each batch is one statement inside a savepoint, with its rows_done; a transaction holds the
        # batches of about `commit_seconds`. A commit costs 25-50 ms here (fsyncs of the database,
        # its journal and the vector file), a sixth of the time a 4,096-molecule batch takes to
        # embed on an idle 2-core machine, so committing every batch made the command slower than
        # one INSERT ... SELECT (docs/benchmarks.md). On any error the failed batch is rolled back
        # to its savepoint and the completed ones are committed: a re-run resumes after them.
        in_txn = False
        last_commit = time.monotonic()
        try:
            for ids, smis in chunks:
                start = pos
                pos += len(smis)
                if pos <= done:
                    bar.update(len(smis))
                    continue
                rows = [((start + i) * nd + j + 1, s, float(d), ids[i] if ids[i] is not None else str(start + i + 1))
                        for i, s in enumerate(smis) if start + i >= done for j, d in enumerate(doses)]
                batch_start = bar.n
                if not in_txn:
                    conn.execute("BEGIN IMMEDIATE")
                    in_txn = True
                conn.execute("SAVEPOINT phenix_screen_batch")
                try:
                    conn.execute("DELETE FROM temp.screen_batch")
                    conn.executemany("INSERT INTO temp.screen_batch VALUES (?, ?, ?, ?)", rows)
                    try:
                        _embed_batch(conn, name, table)
                    except sqlite3.Error as e:
                        bad = _bad_smiles(conn)
                        if not bad:
                            raise PhenixError(f"embedding failed: {e}") from e
                        if not skip_bad_smiles:
                            first = "; ".join(f"{s!r} (library row {(rid - 1) // nd + 1})" for rid, s in bad[:3])
                            raise PhenixError(f"{len(bad) // nd} SMILES of this batch cannot be featurized, first: "
                                              f"{first}; fix them or pass --skip-bad-smiles") from e
                        conn.executemany("DELETE FROM temp.screen_batch WHERE id = ?", [(rid,) for rid, _ in bad])
                        skipped += len(bad) // nd
                        _embed_batch(conn, name, table)
                    conn.execute("UPDATE phenix_screens SET rows_done = ? WHERE table_name = ?", (pos, table))
                except BaseException:
                    conn.execute("ROLLBACK TO phenix_screen_batch")
                    conn.execute("RELEASE phenix_screen_batch")
                    raise
                conn.execute("RELEASE phenix_screen_batch")
                bar.update(batch_start + len(smis) - bar.n)
                if time.monotonic() - last_commit >= commit_seconds:
                    conn.execute("COMMIT")
                    in_txn = False
                    last_commit = time.monotonic()
            if in_txn:
                conn.execute("COMMIT")
                in_txn = False
        except BaseException:
            if in_txn and conn.in_transaction:
                try:
                    conn.execute("COMMIT")  # the batches completed before the failure
                except sqlite3.Error:
                    conn.execute("ROLLBACK")
            raise
        finally:
            if progress:
                set_progress(None)
        bar.close()
        stats.update(library_rows=pos, candidates=conn.execute(f"SELECT count(*) FROM {quote(table)}").fetchone()[0],
                     skipped_bad_smiles=skipped, embed_seconds=time.time() - t0)
    if queries:
        from .wells import require_columns, table_columns

        have = table_columns(conn, queries)
        require_columns(have, {"profile": query_profile, "query id": None if query_id == "rowid" else query_id}, queries)
        if conn.execute("SELECT 1 FROM sqlite_master WHERE name = ?", (out,)).fetchone():
            raise PhenixError(f"output table {out!r} exists; choose another --out")
        if man is not None and man["phenomics"].get("features"):
            from .wells import feature_list

            fl = feature_list(conn, queries)
            if fl is not None:
                mm = first_mismatch(man["phenomics"]["features"], fl)
                if mm:
                    raise PhenixError(f"table {queries!r}: the feature list does not match the model's: {mm}")
        t1 = time.time()
        nq = conn.execute(f"SELECT count(*) FROM {quote(queries)}").fetchone()[0]
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(f"CREATE TABLE {quote(out)}(query_id, rank INTEGER, candidate INTEGER, compound TEXT, "
                         "smiles TEXT, concentration_um REAL, distance REAL)")
            qs = conn.execute(f"SELECT {quote(query_id) if query_id != 'rowid' else 'rowid'}, {quote(query_profile)} "
                              f"FROM {quote(queries)}").fetchall()
            for qid, prof in tqdm(qs, total=nq, desc="retrieving", unit="query", disable=not progress):
                conn.execute(
                    f"INSERT INTO {quote(out)} SELECT ?, r.rank, r.rowid, t.compound, t.smiles, t.concentration, "
                    f"r.distance FROM phenix_retrieve(?, phenix_embed_phenomics(?, ?), ?) r "
                    f"JOIN {quote(table)} t ON t.rowid = r.rowid ORDER BY r.rank", (qid, table, name, prof, k))
            conn.execute("COMMIT")
        except sqlite3.Error as e:
            conn.execute("ROLLBACK")
            raise PhenixError(f"retrieval failed: {e}") from e
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        stats.update(queries=nq, hits_table=out, retrieve_seconds=time.time() - t1)
        if csv:
            import pandas as pd

            pd.read_sql_query(f"SELECT * FROM {quote(out)} ORDER BY query_id, rank", conn).to_csv(csv, index=False)
            stats["csv"] = csv
    conn.close()
    return stats


def _embed_batch(conn, name: str, table: str) -> None:
    lit = "'" + name.replace("'", "''") + "'"
    conn.execute(
        f"INSERT INTO {quote(table)}(rowid, embedding, compound, concentration, smiles) "
        f"SELECT e.id, e.embedding, b.compound, b.um, b.smiles FROM phenix_embed_molecules({lit}, "
        f"'SELECT id, smiles, um FROM temp.screen_batch') e JOIN temp.screen_batch b ON b.id = e.id")


def _bad_smiles(conn) -> list[tuple[int, str]]:
    bad = []
    for rid, s in conn.execute("SELECT id, smiles FROM temp.screen_batch").fetchall():
        try:
            conn.execute("SELECT phenix_fingerprint(?, 2, 2048)", (s,)).fetchone()
        except sqlite3.Error:
            bad.append((rid, s))
    return bad
