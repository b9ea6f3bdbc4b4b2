"""``phenix import``'s CSV reader and ``phenix screen``'s batching, in process, against independent
references: a whole-file ``pandas.read_csv`` for the import, an uninterrupted run and the scalar
``phenix_embed_molecule`` for the screen."""

from __future__ import annotations

import csv
import gzip
import sqlite3
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import phenix
import phenix.importer as I
import phenix.pipeline as P
from conftest import ROOT

# --------------------------------------------------------------------------------------- import


def _awkward_frame(n: int = 400) -> pd.DataFrame:
    """Metadata that a cut at a line end can break: quoted fields with newlines (LF and CRLF), commas,
    doubled quotes, empty strings; NaN doses; integer and text columns."""
    rng = np.random.default_rng(5)
    notes = []
    for i in range(n):
        if i % 7 == 0:
            notes.append('multi\nline, "quoted"\r\nnote' * (i % 4 + 1))
        elif i % 11 == 0:
            notes.append("")
        else:
            notes.append(f"n{i}, plain")
    df = pd.DataFrame({
        "Metadata_Plate": [f"P{i // 50:02d}" for i in range(n)],
        "Metadata_Note": notes,
        "Metadata_Dose": np.where(np.arange(n) % 13 == 0, np.nan, rng.uniform(0, 1, n)),
        "Metadata_Index": np.arange(n),
    })
    x = rng.standard_normal((n, 12)).astype(np.float32)
    for j in range(12):
        df[f"Cells_F{j}"] = x[:, j]
    return df


def _write(df: pd.DataFrame, path: Path) -> None:
    name = path.name
    sep = "\t" if ".tsv" in name else ","
    term = "\r\n" if "crlf" in name else "\n"
    if name.endswith(".gz"):
        with gzip.open(path, "wt", newline="") as f:
            df.to_csv(f, index=False, sep=sep, lineterminator=term)
    else:
        df.to_csv(path, index=False, sep=sep, lineterminator=term)


def _table(db: Path, meta: list[str]) -> tuple[list[tuple], np.ndarray]:
    c = sqlite3.connect(db)
    rows = c.execute("SELECT " + ", ".join(f'"{m}"' for m in meta) + ", profile FROM wells ORDER BY rowid").fetchall()
    c.close()
    return [r[:-1] for r in rows], np.stack([np.frombuffer(r[-1], "<f4") for r in rows])


@pytest.mark.parametrize("name", ["w.csv", "w-crlf.csv", "w.tsv", "w.csv.gz"])
@pytest.mark.parametrize("chunk,workers", [(1, 1), (3, 3), (37, 2), (100000, 2)])
def test_csv_in_pieces_equals_pandas_reading_the_whole_file(tmp_path, monkeypatch, name, chunk, workers):
    df = _awkward_frame()
    path = tmp_path / name
    _write(df, path)
    # count the pieces that ended inside a quoted field and were joined with the next one
    joins = []
    real = pd.read_csv

    def counting(*a, **k):
        try:
            return real(*a, **k)
        except pd.errors.ParserError as e:
            joins.append("EOF inside string" in str(e))
            raise

    monkeypatch.setattr(pd, "read_csv", counting)
    monkeypatch.setattr(I, "_workers", lambda: workers)
    db = tmp_path / "w.db"
    res = I.import_profiles(sqlite3.connect(db), "wells", [path], include="Cells_*", chunk=chunk, progress=False)
    monkeypatch.setattr(pd, "read_csv", real)
    ref = pd.read_csv(path, sep="\t" if ".tsv" in name else ",")
    meta = [c for c in ref.columns if c.startswith("Metadata_")]
    assert res["rows"] == len(ref) == len(df) and res["metadata_columns"] == meta
    rows, x = _table(db, meta)
    assert np.array_equal(x, ref[[c for c in ref.columns if c.startswith("Cells_")]].to_numpy(np.float32))
    want = [tuple(None if (isinstance(v, float) and np.isnan(v)) else v for v in r)
            for r in ref[meta].astype(object).itertuples(index=False)]
    assert rows == want
    if chunk <= 3:  # small pieces: cuts inside the multi-line notes happened and were joined
        assert sum(joins) > 0


def test_csv_pieces_have_chunk_rows_and_the_reader_runs_ahead_by_a_bounded_amount(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    df = pd.DataFrame(rng.standard_normal((1000, 5)), columns=[f"Cells_F{j}" for j in range(5)])
    df.insert(0, "Metadata_Well", [f"W{i}" for i in range(1000)])
    df.to_csv(tmp_path / "a.csv", index=False)
    sizes = [len(d) for d in I._FileChunks(tmp_path / "a.csv", 64)]
    assert sizes == [64] * 15 + [40]
    # while the consumer holds one chunk, the reader has parsed at most `workers` more and queued one
    parsed = []
    real = pd.read_csv
    monkeypatch.setattr(pd, "read_csv", lambda *a, **k: parsed.append(1) or real(*a, **k))
    monkeypatch.setattr(I, "_workers", lambda: 2)
    it = I._prefetched(I._FileChunks(tmp_path / "a.csv", 64))
    next(it)
    time.sleep(1.0)
    # the one held here, the one queued, the one the reader waits to queue, one more in the pool
    assert 2 <= len(parsed) <= 4, parsed
    it.close()
    assert sum(1 for _ in I._prefetched(I._FileChunks(tmp_path / "a.csv", 64))) == 16


def test_import_of_a_header_only_or_empty_csv_is_a_clear_error(tmp_path):
    (tmp_path / "h.csv").write_text("Metadata_A,Cells_F0\n")
    with pytest.raises(phenix.PhenixError, match="the input has no rows"):
        I.import_profiles(sqlite3.connect(tmp_path / "h.db"), "wells", [tmp_path / "h.csv"], progress=False)
    (tmp_path / "e.csv").write_text("")
    with pytest.raises(phenix.PhenixError, match="the file is empty"):
        I.import_profiles(sqlite3.connect(tmp_path / "e.db"), "wells", [tmp_path / "e.csv"], progress=False)
    with gzip.open(tmp_path / "t.csv.gz", "wb") as f:
        f.write(b"Metadata_A,Cells_F0\n" + b"a,1.5\n" * 1000)
    data = (tmp_path / "t.csv.gz").read_bytes()
    (tmp_path / "t.csv.gz").write_bytes(data[: len(data) // 2])  # a truncated download
    with pytest.raises(phenix.PhenixError, match="cannot read it as gzip-compressed CSV"):
        I.import_profiles(sqlite3.connect(tmp_path / "t.db"), "wells", [tmp_path / "t.csv.gz"], progress=False)
    assert sqlite3.connect(tmp_path / "t.db").execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0


# --------------------------------------------------------------------------------------- screen


def _library(tmp_path: Path, n: int = 45, bad: int | None = None) -> Path:
    rows = []
    with open(ROOT / "data" / "molecules" / "approved_drugs.csv", newline="") as f:
        for r in csv.DictReader(f):
            rows.append([r["id"], r["smiles"]])
    rows = rows[:n]
    if bad is not None:
        rows[bad][1] = "C1CC"
    p = tmp_path / f"lib{n}-{bad}.csv"
    with open(p, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "smiles"])
        w.writerows(rows)
    return p


def _screen_rows(db: Path) -> list[tuple]:
    c = phenix.connect(str(db))
    rows = c.execute("SELECT rowid, compound, concentration, smiles, embedding FROM screen ORDER BY rowid").fetchall()
    c.close()
    return rows


@pytest.mark.parametrize("commit_seconds", [0.0, 1e9])
def test_screen_interrupted_mid_transaction_resumes_to_the_uninterrupted_result(tmp_path, monkeypatch, commit_seconds):
    lib = _library(tmp_path)
    ref_db = tmp_path / "ref.db"
    P.run_screen(str(ref_db), "default", str(lib), [0.3, 3.0], batch=10, progress=False, commit_seconds=0)
    ref = _screen_rows(ref_db)
    assert len(ref) == 90
    # the reference itself against the scalar function, row by row
    c = phenix.connect(str(ref_db))
    assert c.execute("SELECT count(*), sum(embedding = phenix_embed_molecule('default', smiles, concentration)) "
                     "FROM screen").fetchone() == (90, 90)
    c.close()

    db = tmp_path / "s.db"
    real = P._embed_batch
    calls = []

    def interrupted(*a):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # Ctrl-C during the third batch
        return real(*a)

    monkeypatch.setattr(P, "_embed_batch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        P.run_screen(str(db), "default", str(lib), [0.3, 3.0], batch=10, progress=False, commit_seconds=commit_seconds)
    # the two completed batches are committed, whether each had its own transaction or they shared one
    c = phenix.connect(str(db))
    assert c.execute("SELECT rows_done FROM phenix_screens").fetchone()[0] == 20
    assert c.execute("SELECT count(*) FROM screen").fetchone()[0] == 40
    c.close()
    monkeypatch.setattr(P, "_embed_batch", real)
    res = P.run_screen(str(db), "default", str(lib), [0.3, 3.0], batch=10, progress=False,
                       commit_seconds=commit_seconds)
    assert res["resumed_after_rows"] == 20 and res["candidates"] == 90
    assert _screen_rows(db) == ref


def test_screen_bad_smiles_in_a_shared_transaction_keeps_the_batches_before_it(tmp_path):
    lib = _library(tmp_path, bad=32)
    db = tmp_path / "b.db"
    with pytest.raises(phenix.PhenixError, match=r"1 SMILES of this batch cannot be featurized, first: 'C1CC' "
                                                 r"\(library row 33\); fix them"):
        P.run_screen(str(db), "default", str(lib), [1.0], batch=10, progress=False, commit_seconds=1e9)
    c = phenix.connect(str(db))
    assert c.execute("SELECT rows_done FROM phenix_screens").fetchone()[0] == 30
    assert c.execute("SELECT count(*), sum(embedding = phenix_embed_molecule('default', smiles, concentration)) "
                     "FROM screen").fetchone() == (30, 30)
    c.close()


@pytest.mark.parametrize("kind", ["csv", "csv.gz", "smi", "parquet", "table"])
def test_screen_library_formats_give_the_same_candidates(tmp_path, kind):
    """The library readers (csv module, gzip, .smi, pyarrow, a table) against one another and the CSV
    as pandas reads it; an empty id falls back to the library row number."""
    src = pd.read_csv(_library(tmp_path, n=25), dtype=str)
    src.loc[4, "id"] = np.nan
    db = tmp_path / f"{kind}.db"
    if kind == "csv":
        lib = tmp_path / "l.csv"
        src.to_csv(lib, index=False)
    elif kind == "csv.gz":
        lib = tmp_path / "l.csv.gz"
        src.to_csv(lib, index=False, compression="gzip")
    elif kind == "smi":
        lib = tmp_path / "l.smi"
        lib.write_text("".join(f"{s}\t{i}\n" if isinstance(i, str) else f"{s}\n" for i, s in zip(src.id, src.smiles)))
    elif kind == "parquet":
        lib = tmp_path / "l.parquet"
        src.to_parquet(lib, index=False)
    else:
        c = sqlite3.connect(db)
        c.execute("CREATE TABLE lib(id TEXT, smiles TEXT)")
        c.executemany("INSERT INTO lib VALUES (?, ?)", [(None if not isinstance(i, str) else i, s)
                                                      for i, s in zip(src.id, src.smiles)])
        c.commit()
        c.close()
        lib = "lib"
    res = P.run_screen(str(db), "default", str(lib), [2.0], batch=7, progress=False)
    assert res["candidates"] == 25
    rows = _screen_rows(db)
    want_ids = [i if isinstance(i, str) else str(k + 1) for k, i in enumerate(src.id)]
    assert [r[1] for r in rows] == want_ids
    assert [r[3] for r in rows] == src.smiles.tolist()
    c = phenix.connect(str(db))
    assert c.execute("SELECT sum(embedding = phenix_embed_molecule('default', smiles, concentration)) "
                     "FROM screen").fetchone()[0] == 25
    c.close()


def test_screen_refuses_a_missing_smiles_column_with_close_matches(tmp_path):
    p = tmp_path / "l.csv"
    p.write_text("id,SMILES\na,CCO\n")
    with pytest.raises(phenix.PhenixError, match=r"no SMILES column 'smiles' \(close matches: SMILES\)"):
        P.run_screen(str(tmp_path / "x.db"), "default", str(p), [1.0], progress=False)
