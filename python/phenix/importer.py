"""``phenix import``: per-well profile files -> a wells table with packed float32 profile blobs.

Input layouts:

* **pycytominer** (CSV, CSV.gz or Parquet): one row per well, ``Metadata_*`` columns and feature
  columns (by default those matching ``Cells_*``, ``Cytoplasm_*``, ``Nuclei_*``, pycytominer's
  ``infer_cp_features`` compartments), as ``normalize`` / ``feature_select`` write them.
* **CellProfiler** (``--cellprofiler DIR``): ``Image.csv`` (``ImageNumber`` and the image's
  ``Metadata_*``) plus one per-object CSV per compartment (``Cells.csv``, ``Cytoplasm.csv``,
  ``Nuclei.csv``: ``ImageNumber``, ``ObjectNumber``, un-prefixed measurements). Objects are aggregated
  per well with the median (pycytominer ``aggregate``'s default), features prefixed with the
  compartment (``Cells_AreaShape_Area``); location, parent/child and object-number columns are dropped.

The wide file is streamed in chunks (``--chunk-size`` rows): peak memory is one chunk, not the file.
The target table is created and filled in one transaction: on any error nothing is left behind.
"""

from __future__ import annotations

import fnmatch
import json
import sqlite3
import time
from pathlib import Path
from typing import Iterator, Optional

import numpy as np

from . import PhenixError
from .wells import FEATURE_LISTS, first_mismatch, quote

DEFAULT_FEATURES = "Cells_*,Cytoplasm_*,Nuclei_*"
CP_DROP = ("Location_*", "Parent_*", "Children_*", "Number_Object_Number", "ObjectNumber", "ImageNumber")


def _patterns(spec: Optional[str]) -> list[str]:
    return [p.strip() for p in (spec or "").split(",") if p.strip()]


def split_columns(columns: list[str], include: str, exclude: str) -> tuple[list[str], list[str]]:
    """(metadata columns, feature columns) in file order; features match ``include`` and not ``exclude``."""
    inc, exc = _patterns(include), _patterns(exclude)
    feats = [c for c in columns if any(fnmatch.fnmatchcase(c, p) for p in inc)
             and not any(fnmatch.fnmatchcase(c, p) for p in exc)]
    fs = set(feats)
    meta = [c for c in columns if c not in fs]
    return meta, feats


def _read_chunks(path: Path, chunk: int) -> Iterator:
    import pandas as pd

    name = path.name.lower()
    if not path.exists():
        raise PhenixError(f"no such file: {path}")
    if name.endswith(".parquet") or name.endswith(".pq"):
        try:
            import pyarrow.parquet as pq
        except ImportError as e:
            raise PhenixError("reading Parquet needs pyarrow: pip install 'phenix[parquet]'") from e
        pf = pq.ParquetFile(path)
        for b in pf.iter_batches(batch_size=chunk):
            yield b.to_pandas()
        return
    if name.endswith(".csv") or name.endswith(".csv.gz") or name.endswith(".tsv") or name.endswith(".tsv.gz"):
        sep = "\t" if ".tsv" in name else ","
        try:
            yield from pd.read_csv(path, sep=sep, chunksize=chunk, low_memory=False)
        except pd.errors.EmptyDataError as e:
            raise PhenixError(f"{path}: the file is empty") from e
        return
    raise PhenixError(f"{path}: unknown file type; expected .csv, .csv.gz, .tsv, .parquet")


def _count_rows(path: Path) -> Optional[int]:
    name = path.name.lower()
    try:
        if name.endswith(".parquet") or name.endswith(".pq"):
            import pyarrow.parquet as pq

            return pq.ParquetFile(path).metadata.num_rows
        if name.endswith(".csv") or name.endswith(".tsv"):
            with open(path, "rb") as f:
                return max(sum(buf.count(b"\n") for buf in iter(lambda: f.read(1 << 20), b"")) - 1, 0)
    except Exception:
        return None
    return None


def cellprofiler_wells(directory: Path, plate_col: str = "Metadata_Plate", well_col: str = "Metadata_Well"):
    """Aggregates a CellProfiler export (Image.csv + per-object CSVs) to one row per well (median)."""
    import pandas as pd

    directory = Path(directory)
    image = directory / "Image.csv"
    if not image.exists():
        raise PhenixError(f"{directory}: no Image.csv (a CellProfiler export has Image.csv and one CSV per object)")
    img = pd.read_csv(image)
    for c in ("ImageNumber", plate_col, well_col):
        if c not in img.columns:
            raise PhenixError(f"{image}: column {c!r} not found")
    objs = sorted(p for p in directory.glob("*.csv") if p.name != "Image.csv")
    if not objs:
        raise PhenixError(f"{directory}: no per-object CSV files next to Image.csv")
    meta_cols = [c for c in img.columns if c.startswith("Metadata_")]
    wells = img[meta_cols].drop_duplicates([plate_col, well_col]).set_index([plate_col, well_col])
    parts = []
    for p in objs:
        comp = p.stem
        o = pd.read_csv(p)
        if "ImageNumber" not in o.columns:
            raise PhenixError(f"{p}: column 'ImageNumber' not found (is it a CellProfiler per-object export?)")
        feats = [c for c in o.columns if not any(fnmatch.fnmatchcase(c, d) for d in CP_DROP)
                 and not c.startswith("Metadata_")]
        o = o[["ImageNumber"] + feats].merge(img[["ImageNumber", plate_col, well_col]], on="ImageNumber")
        agg = o.groupby([plate_col, well_col])[feats].median()
        agg.columns = [f"{comp}_{c}" for c in feats]
        parts.append(agg)
    out = wells.join(parts, how="inner").reset_index()
    return out


def import_profiles(conn: sqlite3.Connection, table: str, sources: list[Path], include: str = DEFAULT_FEATURES,
                    exclude: str = "", chunk: int = 10000, append: bool = False, model_features=None,
                    cellprofiler: bool = False, progress: bool = True) -> dict:
    """Writes the wells of ``sources`` into ``table``; returns counts and timings.

    ``model_features``: the feature list of a bundle; the files' features must equal it.
    """
    if not sources:
        raise PhenixError("no input files")

    def gen():
        for path in sources:
            path = Path(path)
            if cellprofiler:
                yield str(path), None, iter([cellprofiler_wells(path)])
            else:
                yield str(path), _count_rows(path), _read_chunks(path, chunk)

    return write_table(conn, table, gen(), include=include, exclude=exclude, append=append,
                       model_features=model_features, progress=progress,
                       source=json.dumps([str(s) for s in sources]))


def import_frames(conn: sqlite3.Connection, table: str, frames, source: str, total: Optional[int] = None,
                  progress: bool = True, include: str = DEFAULT_FEATURES) -> int:
    """Writes an iterator of DataFrames (one layout) into a new ``table``; returns the row count."""
    return write_table(conn, table, iter([(source, total, frames)]), include=include, progress=progress,
                       source=source)["rows"]


def write_table(conn: sqlite3.Connection, table: str, sources, include: str = DEFAULT_FEATURES, exclude: str = "",
                append: bool = False, model_features=None, progress: bool = True, source: str = "") -> dict:
    """The one writer: ``sources`` yields (label, total rows or None, iterator of DataFrames). One
    transaction: the table, its rows and its feature list appear together or not at all."""
    from tqdm import tqdm

    conn.isolation_level = None
    exists = conn.execute("SELECT 1 FROM sqlite_master WHERE name = ?", (table,)).fetchone() is not None
    if exists and not append:
        raise PhenixError(f"table {table!r} already exists; pass --append to add wells to it or choose another --table")
    if append and not exists:
        raise PhenixError(f"--append: table {table!r} does not exist")
    t0 = time.time()
    n_rows = 0
    features: Optional[list[str]] = None
    meta: list[str] = []
    insert = None
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(f"CREATE TABLE IF NOT EXISTS {FEATURE_LISTS}(table_name TEXT PRIMARY KEY, features TEXT NOT NULL, "
                     "n_features INTEGER NOT NULL, sources TEXT, created TEXT NOT NULL DEFAULT (datetime('now')))")
        old = None
        if append:
            row = conn.execute(f"SELECT features FROM {FEATURE_LISTS} WHERE table_name = ?", (table,)).fetchone()
            if row is None:
                raise PhenixError(f"--append: table {table!r} has no recorded feature list (was it written by phenix import?)")
            old = json.loads(row[0])
        for path, total, chunks in sources:
            bar = tqdm(total=total, desc=f"importing {Path(path).name}", unit="well", disable=not progress,
                       mininterval=1.0)
            line = 2  # the first data row of a CSV is line 2 (after the header)
            for df in chunks:
                cols = [str(c) for c in df.columns]
                if features is None:
                    meta, features = split_columns(cols, include, exclude)
                    if not features:
                        close = [c for c in cols if not c.startswith("Metadata_")][:5]
                        raise PhenixError(f"{path}: no feature columns match {include!r}"
                                          + (f" (non-metadata columns: {', '.join(close)})" if close else
                                             " (the file has only Metadata_ columns)"))
                    if "profile" in meta:
                        raise PhenixError(f"{path}: the file has a column named 'profile', which phenix import writes")
                    for ref, what in ((old, f"table {table!r}"), (model_features, "the model")):
                        if ref is not None:
                            mm = first_mismatch(ref, features)
                            if mm:
                                raise PhenixError(f"{path}: the feature list differs from {what}'s: "
                                                  + mm.replace("the model expects", f"{what} has"))
                    if not append:
                        typed = []
                        for c in meta:
                            k = df[c].dtype.kind
                            typed.append(f"{quote(c)} " + ("INTEGER" if k in "iub" else "REAL" if k == "f" else "TEXT"))
                        conn.execute(f"CREATE TABLE {quote(table)}({', '.join(typed + ['profile BLOB NOT NULL'])})")
                        conn.execute(f"INSERT INTO {FEATURE_LISTS}(table_name, features, n_features, sources) "
                                     "VALUES (?, ?, ?, ?)", (table, json.dumps(features), len(features), source))
                    else:
                        have = [r[1] for r in conn.execute(f"PRAGMA table_info({quote(table)})")]
                        missing = [c for c in meta if c not in have]
                        if missing:
                            raise PhenixError(f"{path}: metadata column {missing[0]!r} is not in table {table!r}")
                    insert = (f"INSERT INTO {quote(table)}({', '.join(quote(c) for c in meta + ['profile'])}) "
                              f"VALUES ({', '.join('?' * (len(meta) + 1))})")
                else:
                    m2, f2 = split_columns(cols, include, exclude)
                    mm = first_mismatch(features, f2)
                    if mm:
                        raise PhenixError(f"{path}: the feature list differs from the first file's: "
                                          + mm.replace("the model expects", "the first file has"))
                    if set(m2) != set(meta):
                        diff = sorted(set(m2) ^ set(meta))
                        raise PhenixError(f"{path}: metadata columns differ from the first file's (first: {diff[0]!r})")
                x = _feature_matrix(df, features, path, line)
                mvals = df[meta].astype(object).where(df[meta].notna(), None).to_numpy()
                conn.executemany(insert, [(*mvals[i], x[i].tobytes()) for i in range(len(df))])
                n_rows += len(df)
                line += len(df)
                bar.update(len(df))
            bar.close()
        if n_rows == 0:
            raise PhenixError("the input has no rows")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return {"table": table, "rows": n_rows, "features": len(features or []), "metadata_columns": meta,
            "seconds": time.time() - t0}


def _feature_matrix(df, features: list[str], path: Path, line: int) -> np.ndarray:
    import pandas as pd

    sub = df[features]
    nonnum = [c for c in features if sub[c].dtype.kind not in "iufb"]
    if nonnum:
        c = nonnum[0]
        bad = pd.to_numeric(sub[c], errors="coerce").isna() & sub[c].notna()
        i = int(np.flatnonzero(bad.to_numpy())[0]) if bad.any() else 0
        raise PhenixError(f"{path}: feature column {c!r} is not numeric (line {line + i}: {sub[c].iloc[i]!r})")
    x = sub.to_numpy(dtype=np.float32, na_value=np.nan)
    fin = np.isfinite(x)
    if not fin.all():
        rows = np.flatnonzero(~fin.all(1))
        j = int(np.flatnonzero(~fin[rows[0]])[0])
        what = "NaN/empty" if np.isnan(x[rows[0], j]) else "infinite or beyond float32"
        raise PhenixError(f"{path}: {len(rows)} rows in this chunk have NaN or infinite features (first: line "
                          f"{line + int(rows[0])}, column {features[j]!r} is {what}); drop or impute them first "
                          "(pycytominer feature_select drops NA columns)")
    return np.ascontiguousarray(x)
