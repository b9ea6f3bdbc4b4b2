"""Side-by-side figures for the phenix command line (docs/benchmarks.md, "The phenix package").

    .venv/bin/python benches/python/cli_bench.py import --rows 100000 --features 500 --repeat 3
    .venv/bin/python benches/python/cli_bench.py screen --molecules 17480 --repeat 5
    .venv/bin/python benches/python/cli_bench.py commit

import: writes a pycytominer-style CSV (rows x features float32 + 7 Metadata_ columns; --input PATH
keeps it, a .csv.gz is compressed as it is written), then, alternating, each in a fresh process with
its peak RSS (ru_maxrss) and CPU time: `phenix import` (--chunk-size, several allowed) vs the obvious
pandas path (pandas.read_csv of the whole file, then executemany of the metadata + a packed float32
blob per row into the same table layout).

screen: embeds the molecules of data/molecules at one dose with `phenix screen` (batches of 4,096
molecules; --paths screen-commit-each commits every batch) vs one `INSERT ... SELECT FROM
phenix_embed_molecules(...)` in the sqlite3 module, alternating.

commit: the insert and COMMIT time of one screen transaction's rows, phenix table vs ordinary table.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "python"))


def child(code: str) -> dict:
    """Runs code in a fresh interpreter; it prints a JSON dict; adds peak RSS in MB and the wall time of
    the whole process (interpreter start and imports included)."""
    wrapped = code + "\nimport resource, json, sys\n" \
        "print(json.dumps(dict(RESULT, rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)))\n"
    env = dict(os.environ, PYTHONPATH=str(ROOT / "python"))
    t = time.time()
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    p = subprocess.run([sys.executable, "-c", wrapped], capture_output=True, text=True, env=env)
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall = time.time() - t
    if p.returncode:
        raise SystemExit(p.stderr)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    return dict(json.loads(p.stdout.strip().splitlines()[-1]), wall=wall, cpu=cpu)


def make_csv(path: Path, rows: int, features: int) -> None:
    """A pycytominer-style CSV written with pyarrow's CSV writer (fast), float32 features; a .csv.gz
    is compressed with zlib level 1 as it is written (no uncompressed copy on disk)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.csv as pacsv

    rng = np.random.default_rng(0)
    names = [f"Cells_F{i}" for i in range(features)]
    if path.name.endswith(".gz"):
        import gzip

        with gzip.open(path, "wb", compresslevel=1) as gz:
            for s in range(0, rows, 20000):
                n = min(20000, rows - s)
                t = _wells_table(rng, s, n, names)
                buf = pa.BufferOutputStream()
                pacsv.write_csv(t, buf, pacsv.WriteOptions(include_header=s == 0))
                gz.write(buf.getvalue().to_pybytes())
        return
    writer = None
    for s in range(0, rows, 20000):
        t = _wells_table(rng, s, min(20000, rows - s), names)
        if writer is None:
            writer = pacsv.CSVWriter(str(path), t.schema)
        writer.write_table(t)
    writer.close()


def _wells_table(rng, s: int, n: int, names: list[str]):
    import numpy as np
    import pyarrow as pa

    cols = {"Metadata_Plate": [f"P{(s + i) // 384:05d}" for i in range(n)],
            "Metadata_Well": [f"W{(s + i) % 384:03d}" for i in range(n)],
            "Metadata_Batch": ["b1"] * n, "Metadata_broad_sample": [f"BRD-{s + i}" for i in range(n)],
            "Metadata_SMILES": ["CCO"] * n, "Metadata_mmoles_per_liter": np.full(n, 0.001),
            "Metadata_control_type": ["trt"] * n}
    x = rng.standard_normal((n, len(names))).astype(np.float32)
    for j, nm in enumerate(names):
        cols[nm] = x[:, j]
    return pa.table(cols)


def bench_import(a) -> None:
    """Alternating runs of phenix import and the pandas path on one file. Both children import pandas,
    numpy and sqlite3 before their clock starts ("seconds"); "wall" is the whole process."""
    with tempfile.TemporaryDirectory(prefix="phenix-bench-", dir=a.tmp) as td:
        if a.input:
            csv = Path(a.input)
            if not csv.exists():
                t = time.time()
                make_csv(csv, a.rows, a.features)
                print(f"wrote {csv.stat().st_size / 1e6:.0f} MB in {time.time() - t:.0f}s", file=sys.stderr)
        else:
            csv = Path(td) / "wells.csv"
            t = time.time()
            make_csv(csv, a.rows, a.features)
            print(f"wrote {csv.stat().st_size / 1e6:.0f} MB CSV in {time.time() - t:.0f}s", file=sys.stderr)
        rows = []
        for rep in range(a.repeat):
            for chunk in a.chunk_size:
                db = Path(td) / "a.db"
                ph = child(f"""
import sqlite3, time
import numpy, pandas
from phenix.importer import import_profiles
c = sqlite3.connect({str(db)!r})
t = time.time()
r = import_profiles(c, 'wells', [{str(csv)!r}], include='Cells_*', progress=False, chunk={chunk})
RESULT = dict(seconds=time.time() - t, rows=r['rows'])
""")
                db.unlink()
                rows.append((f"phenix import (chunks of {chunk:,})", rep, ph))
            if a.only_phenix:
                continue
            db = Path(td) / "b.db"
            pd_ = child(f"""
import sqlite3, time
import numpy as np, pandas as pd
t = time.time()
df = pd.read_csv({str(csv)!r})
meta = [c for c in df.columns if c.startswith('Metadata_')]
feats = [c for c in df.columns if c.startswith('Cells_')]
c = sqlite3.connect({str(db)!r})
c.execute('CREATE TABLE wells(' + ', '.join('"%s"' % m for m in meta) + ', profile BLOB)')
x = df[feats].to_numpy(np.float32)
m = df[meta].to_numpy(object)
c.executemany('INSERT INTO wells VALUES (' + ','.join('?' * (len(meta) + 1)) + ')',
              [(*m[i], x[i].tobytes()) for i in range(len(df))])
c.commit()
RESULT = dict(seconds=time.time() - t, rows=len(df))
""")
            db.unlink()
            rows.append(("pandas.read_csv + executemany", rep, pd_))
            print(f"run {rep + 1}: phenix (last chunk size)/pandas rows/s = {pd_['seconds'] / ph['seconds']:.2f}x "
                  f"(whole process {pd_['wall'] / ph['wall']:.2f}x, CPU {pd_['cpu'] / ph['cpu']:.2f}x)", file=sys.stderr)
    print("| path | run | rows | seconds | rows/s | process wall s | process CPU s | peak RSS (MB) |\n"
          "|---|---|---|---|---|---|---|---|")
    for name, rep, r in rows:
        print(f"| {name} | {rep + 1} | {r['rows']:,} | {r['seconds']:.1f} | {r['rows'] / r['seconds']:,.0f} | "
              f"{r['wall']:.1f} | {r['cpu']:.1f} | {r['rss_mb']:.0f} |")
    for chunk in a.chunk_size:
        ph = [r for n, _, r in rows if n == f"phenix import (chunks of {chunk:,})"]
        pdr = [r for n, _, r in rows if n.startswith("pandas")]
        if pdr:
            ratios = [b["seconds"] / p["seconds"] for p, b in zip(ph, pdr)]
            cpu = [b["cpu"] / p["cpu"] for p, b in zip(ph, pdr)]
            print(f"chunks of {chunk:,}: phenix/pandas rows/s per run {', '.join(f'{x:.2f}x' for x in ratios)}; "
                  f"pandas/phenix process CPU {', '.join(f'{x:.2f}x' for x in cpu)}")


def bench_screen(a) -> None:
    """Alternating runs: `phenix screen` (run_screen: reading the library file, staging each batch, one
    transaction per batch) vs one INSERT ... SELECT FROM phenix_embed_molecules over a table that holds
    the same library. "seconds" is the timed region of each child (the screen child from the call of
    run_screen, the SQL child from CREATE VIRTUAL TABLE, its library table already filled); "CPU" is
    the process's user + system CPU time of all threads (in the timed region, and of the whole
    process), which load from other processes disturbs less than wall time."""
    import csv as csvmod

    with tempfile.TemporaryDirectory(prefix="phenix-bench-", dir=a.tmp) as td:
        lib = Path(td) / "lib.csv"
        rows = []
        for name in ("approved_drugs.csv", "nci_5k.csv", "wehi_pains_test.csv"):
            with open(ROOT / "data" / "molecules" / name, newline="") as f:
                rows += [(r["id"], r["smiles"]) for r in csvmod.DictReader(f)]
        import phenix

        chk = phenix.connect(":memory:")
        good = []
        for i, s in rows:  # the same valid molecules for both paths
            try:
                chk.execute("SELECT phenix_fingerprint(?, 2, 2048)", (s,)).fetchone()
                good.append((i, s))
            except Exception:
                pass
        good = [(f"{i}#{r}", s) for r in range(a.repeat_library) for i, s in good[:a.molecules]]
        with open(lib, "w", newline="") as f:
            w = csvmod.writer(f)
            w.writerow(["id", "smiles"])
            w.writerows(good)
        results = []
        for rep in range(a.repeat):
            for path in a.paths:
                db = Path(td) / f"{path}.db"
                if path.startswith("screen"):
                    commit = 0.0 if path == "screen-commit-each" else 3.0
                    r = child(f"""
import time
from phenix.pipeline import run_screen
t, c0 = time.time(), time.process_time()
r = run_screen({str(db)!r}, 'default', {str(lib)!r}, [1.0], batch={a.batch_size}, progress=False, log=lambda m: None,
               commit_seconds={commit})
RESULT = dict(seconds=time.time() - t, cpu_timed=time.process_time() - c0, n=r['candidates'])
""")
                else:
                    r = child(f"""
import time, csv, phenix
c = phenix.connect({str(db)!r})
c.execute('CREATE TABLE src(id INTEGER PRIMARY KEY, compound TEXT, smiles TEXT, um REAL)')
c.executemany('INSERT INTO src(compound, smiles, um) VALUES (?, ?, 1.0)', list(csv.reader(open({str(lib)!r})))[1:])
c.commit()
t, c0 = time.time(), time.process_time()
c.execute('CREATE VIRTUAL TABLE screen USING phenix(embedding float16[256] distance=cosine, compound TEXT, concentration REAL, +smiles TEXT)')
c.execute("INSERT INTO screen(rowid, embedding, compound, concentration, smiles) SELECT e.id, e.embedding, s.compound, s.um, s.smiles FROM phenix_embed_molecules('default', 'SELECT id, smiles, um FROM src') e JOIN src s ON s.id = e.id")
c.commit()
RESULT = dict(seconds=time.time() - t, cpu_timed=time.process_time() - c0,
              n=c.execute('SELECT count(*) FROM screen').fetchone()[0])
""")
                for ext in ("", "-journal", "-wal", "-shm"):
                    Path(str(db) + ext).unlink(missing_ok=True)
                for f in Path(td).glob(f"{path}.db*"):  # phenix's side files
                    shutil.rmtree(f) if f.is_dir() else f.unlink()
                results.append((path, rep, r))
                print(f"run {rep + 1} {path}: {r['n'] / r['seconds']:,.0f} molecules/s, cpu {r['cpu_timed']:.2f}s",
                      file=sys.stderr)
    label = {"screen": f"`phenix screen` --batch-size {a.batch_size:,} (CSV library)",
             "screen-commit-each": f"`phenix screen` --batch-size {a.batch_size:,} --commit-seconds 0",
             "sql": "one INSERT … SELECT FROM phenix_embed_molecules"}
    print("| run | path | candidates | seconds | molecules/s | CPU s (timed part) | CPU s (process) |\n"
          "|---|---|---|---|---|---|---|")
    for path, rep, r in results:
        print(f"| {rep + 1} | {label[path]} | {r['n']:,} | {r['seconds']:.1f} | {r['n'] / r['seconds']:,.0f} | "
              f"{r['cpu_timed']:.2f} | {r['cpu']:.2f} |")
    by = {(p, k): r for p, k, r in results}
    for path in a.paths:
        if path == "sql" or "sql" not in a.paths:
            continue
        ratios = [by["sql", k]["seconds"] / by[path, k]["seconds"] for k in range(a.repeat)]
        cpu = [by["sql", k]["cpu_timed"] / by[path, k]["cpu_timed"] for k in range(a.repeat)]
        print(f"{path}/SQL throughput per run: {', '.join(f'{x:.2f}x' for x in ratios)}; "
              f"SQL/{path} CPU per run: {', '.join(f'{x:.2f}x' for x in cpu)}")


def bench_commit(a) -> None:
    """What one transaction of `phenix screen` costs besides embedding: `executemany` of --batch-size
    random float16[256] rows into a phenix table (and into an ordinary table), then `COMMIT`."""
    import numpy as np

    import phenix

    with tempfile.TemporaryDirectory(prefix="phenix-bench-", dir=a.tmp) as td:
        c = phenix.connect(str(Path(td) / "c.db"))
        c.isolation_level = None
        c.execute("CREATE VIRTUAL TABLE v USING phenix(embedding float16[256] distance=cosine, compound TEXT, "
                  "concentration REAL, +smiles TEXT)")
        c.execute("CREATE TABLE p(id INTEGER PRIMARY KEY, e BLOB, compound TEXT, concentration REAL, smiles TEXT)")
        rng = np.random.default_rng(0)
        print("| table | insert ms per batch | COMMIT ms per batch |\n|---|---|---|")
        for tab in ("v", "p") * a.repeat:
            ins, com = [], []
            for _ in range(5):
                rows = [(None, rng.standard_normal(256).astype(np.float16).tobytes(), f"c{i}", 1.0, "CCO" * 10)
                        for i in range(a.batch_size)]
                c.execute("BEGIN IMMEDIATE")
                t = time.perf_counter()
                if tab == "v":
                    c.executemany("INSERT INTO v(rowid, embedding, compound, concentration, smiles) "
                                  "VALUES (?, ?, ?, ?, ?)", rows)
                else:
                    c.executemany("INSERT INTO p VALUES (?, ?, ?, ?, ?)", rows)
                t1 = time.perf_counter()
                c.execute("COMMIT")
                ins.append(t1 - t)
                com.append(time.perf_counter() - t1)
            print(f"| {'phenix' if tab == 'v' else 'ordinary'} | {' '.join(f'{x * 1000:.0f}' for x in ins)} | "
                  f"{' '.join(f'{x * 1000:.0f}' for x in com)} |")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True)
    p = sub.add_parser("import")
    p.add_argument("--rows", type=int, default=100000)
    p.add_argument("--features", type=int, default=500)
    p.add_argument("--input", help="an existing file (CSV, CSV.gz, Parquet) instead of a generated CSV")
    p.add_argument("--chunk-size", type=int, nargs="+", default=[10000], help="phenix import chunk sizes")
    p.add_argument("--repeat", type=int, default=1, help="alternating runs of each path")
    p.add_argument("--tmp", default=None, help="directory for the temporary files")
    p.add_argument("--only-phenix", action="store_true", help="skip the pandas baseline (peak RSS at large sizes)")
    p = sub.add_parser("screen")
    p.add_argument("--molecules", type=int, default=17480)
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--repeat-library", type=int, default=1, help="repeat the library (amortises fixed costs)")
    p.add_argument("--repeat", type=int, default=3, help="alternating runs of each path")
    p.add_argument("--paths", nargs="+", default=["screen", "sql"], choices=["screen", "screen-commit-each", "sql"])
    p.add_argument("--tmp", default=None, help="directory for the temporary files")
    p = sub.add_parser("commit")
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--tmp", default=None, help="directory for the temporary files")
    a = ap.parse_args()
    os.environ.setdefault("ORT_DYLIB_PATH", str(ROOT / ".ort" / "libonnxruntime.so"))
    {"import": bench_import, "screen": bench_screen, "commit": bench_commit}[a.what](a)


if __name__ == "__main__":
    main()
