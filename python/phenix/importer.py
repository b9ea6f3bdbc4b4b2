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

The wide file is streamed in chunks (``--chunk-size`` rows): peak memory is a few chunks, not the file.
The target table is created and filled in one transaction: on any error nothing is left behind.
"""

from __future__ import annotations

import fnmatch
import io
import json
import os
import queue
import re
import sqlite3
import threading
import time
from pathlib import Path
from typing import Iterable, Iterator, Optional

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


# the smallest piece of a CSV read at once, in bytes
_MIN_PIECE = 1 << 12
_NONBLANK = re.compile(rb"\S")


def _workers() -> int:
    """Parser threads for a CSV: the CPUs this process may use, at most 4 (each holds a chunk)."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    return max(1, min(n, 4))


class _FileChunks:
    """DataFrames of ``chunk`` rows from a CSV / CSV.gz / TSV / Parquet file, in file order.

    A CSV is cut into pieces of ``chunk`` lines, each given the header line, and the pieces are parsed
    by pandas' C parser in :func:`_workers` threads (it releases the GIL while it tokenises and
    converts): that is how one ``pandas.read_csv`` of a whole file is fast in pandas 3, without holding
    the file. A piece cut inside a quoted field that spans lines ends in an open quote, which pandas
    refuses ("EOF inside string"); it is joined with the next piece and parsed again, so such a
    chunk has more rows. Each DataFrame carries ``attrs["phenix_position"]``, the bytes of the file
    read up to its end (compressed bytes of a .gz), for the progress bar: the file is read once.
    Parquet is read in record batches of ``chunk`` rows (its footer has the count).
    """

    def __init__(self, path: Path, chunk: int, workers: Optional[int] = None):
        name = path.name.lower()
        if not path.exists():
            raise PhenixError(f"no such file: {path}")
        if chunk < 1:
            raise PhenixError(f"--chunk-size must be a positive number of rows, got {chunk}")
        self.path, self.chunk = path, chunk
        self.workers = workers or _workers()
        if name.endswith(".parquet") or name.endswith(".pq"):
            try:
                import pyarrow.parquet as pq
            except ImportError as e:
                raise PhenixError("reading Parquet needs pyarrow: pip install 'phenix[parquet]'") from e
            self.kind = "parquet"
            self._pf = pq.ParquetFile(path)
            self.unit, self.total = "well", self._pf.metadata.num_rows
        elif name.endswith((".csv", ".csv.gz", ".tsv", ".tsv.gz")):
            self.kind = "csv"
            self.sep = "\t" if ".tsv" in name else ","
            self.gz = name.endswith(".gz")
            self.unit, self.total = "B", path.stat().st_size
        else:
            raise PhenixError(f"{path}: unknown file type; expected .csv, .csv.gz, .tsv, .parquet")

    def _what(self) -> str:
        return ("gzip-compressed " if self.gz else "") + ("TSV" if self.sep != "," else "CSV")

    def __iter__(self):
        if self.kind == "parquet":
            for b in self._pf.iter_batches(batch_size=self.chunk):
                yield b.to_pandas()
            return
        with open(self.path, "rb") as raw:
            f = raw
            if self.gz:
                import gzip

                f = gzip.GzipFile(fileobj=raw, mode="rb")
            try:
                yield from self._csv(raw, f)
            except (OSError, EOFError) as e:  # a truncated or corrupt .gz, an I/O error
                raise PhenixError(f"{self.path}: cannot read it as {self._what()}: {e}") from e

    def _csv(self, raw, f):
        import pandas as pd

        # the header line (a quoted newline in a column name is not supported)
        buf = b""
        while True:
            data = f.read(1 << 16)
            buf += data
            end = buf.find(b"\n")
            if end >= 0 or not data:
                break
        if not buf.strip():
            raise PhenixError(f"{self.path}: the file is empty")
        end = len(buf) if end < 0 else end + 1
        header, carry = buf[:end], buf[end:]
        if not header.endswith(b"\n"):
            header += b"\n"
        # the buffer for `chunk` lines, from the length of the first lines
        sample = carry + f.read(1 << 20)
        n_lines = sample.count(b"\n")
        per_row = max(len(sample) // n_lines, 1) if n_lines else max(len(sample), 1)
        block = max(per_row * self.chunk + per_row * self.chunk // 8, _MIN_PIECE)
        carry = sample

        chunk = self.chunk

        def pieces():
            """`chunk` lines each (fewer at the end) in a buffer of their own, read into directly,
            and the file position after them; the partial line after them starts the next buffer."""
            nonlocal carry
            while True:
                buf = bytearray(max(block, len(carry) + _MIN_PIECE))
                n = len(carry)
                buf[:n] = carry
                eof = False
                scan = lines = 0  # line ends found in buf[:scan]
                while True:
                    while lines < chunk:
                        j = buf.find(b"\n", scan, n)
                        if j < 0:
                            break
                        scan, lines = j + 1, lines + 1
                    if lines >= chunk or eof:
                        break
                    if n == len(buf):  # `chunk` lines are longer than the buffer
                        buf.extend(bytes(len(buf)))
                    view = memoryview(buf)
                    got = f.readinto(view[n:])
                    view.release()
                    eof = not got
                    n += got or 0
                cut = scan if lines >= chunk else n
                carry = bytes(buf[cut:n])
                del buf[cut:]
                if _NONBLANK.search(buf):
                    yield buf, raw.tell()
                if eof and not carry:
                    return

        def parse(piece):
            """(DataFrame or the error, the piece): a piece cut inside a quoted field that spans lines
            ends in an open quote, which the consumer joins with the next piece."""
            text, pos = piece
            try:
                df = pd.read_csv(_Pieces(header, text), sep=self.sep, low_memory=False)
            except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as e:
                return e, piece
            df.attrs["phenix_position"] = pos
            return df, piece

        def fail(e):
            return PhenixError(f"{self.path}: cannot read it as {self._what()}: {e}")

        joined = None  # a piece ending inside a quoted field, waiting for the next one
        any_rows = False
        for res, (text, pos) in _ordered_map(parse, pieces(), self.workers):
            if joined is not None:
                text = joined + text
                res, _ = parse((text, pos))
                joined = None
            if isinstance(res, BaseException):
                if "EOF inside string" in str(res):
                    joined = text
                    continue
                raise fail(res) from res
            any_rows = True
            yield res
        if joined is not None:  # the file ends inside a quoted field
            res, _ = parse((joined, raw.tell()))
            if isinstance(res, BaseException):
                raise fail(res) from res
            yield res
        elif not any_rows:  # a header and no rows: still checks the columns
            res, _ = parse((b"", raw.tell()))
            if isinstance(res, BaseException):
                raise fail(res) from res
            yield res


class _Pieces(io.RawIOBase):
    """The header line, then one piece of the file, as a binary file: pandas reads it in blocks of
    256 KiB, so the piece is not copied whole to put the header in front of it."""

    def __init__(self, *parts):
        super().__init__()
        self._parts = [memoryview(p) for p in parts]

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        while self._parts:
            p = self._parts[0]
            if not len(p):
                self._parts.pop(0).release()
                continue
            k = min(len(b), len(p))
            b[:k] = p[:k]
            self._parts[0] = p[k:]
            return k
        return 0


def _ordered_map(fn, items: Iterable, workers: int) -> Iterator:
    """``fn`` of each item in ``workers`` threads, results in order, at most ``workers`` items at once."""
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    if workers <= 1:
        for it in items:
            yield fn(it)
        return
    pending: deque = deque()
    ex = ThreadPoolExecutor(workers, thread_name_prefix="phenix-csv")
    try:
        for it in items:
            pending.append(ex.submit(fn, it))
            if len(pending) >= workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for fut in pending:
            fut.cancel()
        ex.shutdown(wait=True)


def _prefetched(chunks: Iterable, depth: int = 1) -> Iterator:
    """``chunks`` read by a background thread ``depth`` items ahead, so parsing the next chunk (pandas'
    C tokenizer and gzip release the GIL) overlaps inserting this one. At most ``depth`` + 2 chunks
    exist at once (the one inserted, the queued ones, the one being parsed): memory stays bounded by
    the chunk size. Exceptions of the reader are raised here; closing this generator stops the reader.
    """
    q: queue.Queue = queue.Queue(depth)
    stop = threading.Event()
    end = object()

    def put(x) -> bool:
        while not stop.is_set():
            try:
                q.put(x, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def run() -> None:
        it = iter(chunks)
        try:
            for x in it:
                if not put((None, x)):
                    return
            put((None, end))
        except BaseException as e:  # handed to the consumer, which raises it
            put((e, None))
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                close()  # the file is closed by the thread that read it

    t = threading.Thread(target=run, name="phenix-import-reader", daemon=True)
    t.start()
    try:
        while True:
            err, x = q.get()
            if err is not None:
                raise err
            if x is end:
                return
            yield x
    finally:
        stop.set()
        t.join(timeout=5)


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
                    exclude: str = "", chunk: int = 5000, append: bool = False, model_features=None,
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
                src = _FileChunks(path, chunk)
                yield str(path), src.total, src

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
            unit = getattr(chunks, "unit", "well")
            bar = tqdm(total=total, desc=f"importing {Path(path).name}", unit=unit, unit_scale=unit == "B",
                       unit_divisor=1024 if unit == "B" else 1000, disable=not progress, mininterval=1.0)
            line = 2  # the first data row of a CSV is line 2 (after the header)
            for df in _prefetched(chunks):
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
                if len(df) == 0:  # a file with a header and no rows: its columns were checked
                    continue
                x = _feature_matrix(df, features, path, line)
                # one bytes object per row (its float32 profile), made in C; metadata as Python lists
                # per column, missing values (NaN, NA) as None -> NULL
                blobs = x.view(np.dtype((np.void, x.shape[1] * 4))).ravel().tolist()
                mcols = [_py_column(df[c]) for c in meta]
                conn.executemany(insert, zip(*mcols, blobs))
                n_rows += len(df)
                line += len(df)
                if unit == "B":
                    bar.update(df.attrs.get("phenix_position", bar.n) - bar.n)
                    bar.set_postfix_str(f"{n_rows:,} wells", refresh=False)
                else:
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


def _py_column(s) -> list:
    """A column's values as Python objects, missing ones as None."""
    if s.hasnans:
        return s.astype(object).where(s.notna(), None).tolist()
    return s.tolist()


def _feature_matrix(df, features: list[str], path: Path, line: int) -> np.ndarray:
    import pandas as pd

    sub = df[features]
    nonnum = [c for c, dt in zip(features, sub.dtypes) if dt.kind not in "iufb"]
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
