"""Side-by-side figures for the phenix command line (docs/benchmarks.md, "The phenix package").

    .venv/bin/python benches/python/cli_bench.py import --rows 100000 --features 500
    .venv/bin/python benches/python/cli_bench.py screen --molecules 17480

import: writes a pycytominer-style CSV (rows x features float32 + 7 Metadata_ columns), then, each in a
fresh process with its peak RSS (ru_maxrss): `phenix import` (chunks of 10,000 rows) vs the obvious
pandas path (pandas.read_csv of the whole file, then executemany of the metadata + a packed float32
blob per row into the same table layout).

screen: embeds the molecules of data/molecules at one dose with `phenix screen` (batches of 4,096, one
transaction each) vs one `INSERT ... SELECT FROM phenix_embed_molecules(...)` in the sqlite3 module.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "python"))


def child(code: str) -> dict:
    """Runs code in a fresh interpreter; it prints a JSON dict; adds peak RSS in MB."""
    wrapped = code + "\nimport resource, json, sys\n" \
        "print(json.dumps(dict(RESULT, rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)))\n"
    env = dict(os.environ, PYTHONPATH=str(ROOT / "python"))
    p = subprocess.run([sys.executable, "-c", wrapped], capture_output=True, text=True, env=env)
    if p.returncode:
        raise SystemExit(p.stderr)
    return json.loads(p.stdout.strip().splitlines()[-1])


def make_csv(path: Path, rows: int, features: int) -> None:
    """A pycytominer-style CSV written with pyarrow's CSV writer (fast), float32 features."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.csv as pacsv

    rng = np.random.default_rng(0)
    names = [f"Cells_F{i}" for i in range(features)]
    writer = None
    for s in range(0, rows, 20000):
        n = min(20000, rows - s)
        cols = {"Metadata_Plate": [f"P{(s + i) // 384:05d}" for i in range(n)],
                "Metadata_Well": [f"W{(s + i) % 384:03d}" for i in range(n)],
                "Metadata_Batch": ["b1"] * n, "Metadata_broad_sample": [f"BRD-{s + i}" for i in range(n)],
                "Metadata_SMILES": ["CCO"] * n, "Metadata_mmoles_per_liter": np.full(n, 0.001),
                "Metadata_control_type": ["trt"] * n}
        x = rng.standard_normal((n, features)).astype(np.float32)
        for j, nm in enumerate(names):
            cols[nm] = x[:, j]
        t = pa.table(cols)
        if writer is None:
            writer = pacsv.CSVWriter(str(path), t.schema)
        writer.write_table(t)
    writer.close()


def bench_import(a) -> None:
    with tempfile.TemporaryDirectory(prefix="phenix-bench-") as td:
        csv = Path(td) / "wells.csv"
        t = time.time()
        make_csv(csv, a.rows, a.features)
        print(f"wrote {csv.stat().st_size / 1e6:.0f} MB CSV in {time.time() - t:.0f}s", file=sys.stderr)
        ph = child(f"""
import sqlite3, time
from phenix.importer import import_profiles
c = sqlite3.connect({str(Path(td) / 'a.db')!r})
t = time.time()
r = import_profiles(c, 'wells', [{str(csv)!r}], include='Cells_*', progress=False)
RESULT = dict(seconds=time.time() - t, rows=r['rows'])
""")
        if a.only_phenix:
            print(f"| phenix import (chunks of 10,000) | {ph['rows']:,} | {a.features} | {ph['seconds']:.1f} | "
                  f"{ph['rows'] / ph['seconds']:,.0f} | {ph['rss_mb']:.0f} |")
            return
        pd_ = child(f"""
import sqlite3, time
import numpy as np, pandas as pd
t = time.time()
df = pd.read_csv({str(csv)!r})
meta = [c for c in df.columns if c.startswith('Metadata_')]
feats = [c for c in df.columns if c.startswith('Cells_')]
c = sqlite3.connect({str(Path(td) / 'b.db')!r})
c.execute('CREATE TABLE wells(' + ', '.join('"%s"' % m for m in meta) + ', profile BLOB)')
x = df[feats].to_numpy(np.float32)
m = df[meta].to_numpy(object)
c.executemany('INSERT INTO wells VALUES (' + ','.join('?' * (len(meta) + 1)) + ')',
              [(*m[i], x[i].tobytes()) for i in range(len(df))])
c.commit()
RESULT = dict(seconds=time.time() - t, rows=len(df))
""")
    print("| path | rows | features | seconds | rows/s | peak RSS (MB) |\n|---|---|---|---|---|---|")
    for name, r in (("phenix import (chunks of 10,000)", ph), ("pandas.read_csv + executemany", pd_)):
        print(f"| {name} | {r['rows']:,} | {a.features} | {r['seconds']:.1f} | {r['rows'] / r['seconds']:,.0f} | "
              f"{r['rss_mb']:.0f} |")
    print(f"ratio phenix/pandas rows/s: {pd_['seconds'] / ph['seconds']:.2f}x")


def bench_screen(a) -> None:
    import csv as csvmod

    with tempfile.TemporaryDirectory(prefix="phenix-bench-") as td:
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
        good = [(f"{i}#{r}", s) for r in range(a.repeat) for i, s in good[:a.molecules]]
        with open(lib, "w", newline="") as f:
            w = csvmod.writer(f)
            w.writerow(["id", "smiles"])
            w.writerows(good)
        sc = child(f"""
import time
from phenix.pipeline import run_screen
t = time.time()
r = run_screen({str(Path(td) / 'a.db')!r}, 'default', {str(lib)!r}, [1.0], batch={a.batch_size}, progress=False, log=lambda m: None)
RESULT = dict(seconds=time.time() - t, n=r['candidates'])
""")
        sq = child(f"""
import time, csv, phenix
c = phenix.connect({str(Path(td) / 'b.db')!r})
c.execute('CREATE TABLE src(id INTEGER PRIMARY KEY, compound TEXT, smiles TEXT, um REAL)')
c.executemany('INSERT INTO src(compound, smiles, um) VALUES (?, ?, 1.0)', list(csv.reader(open({str(lib)!r})))[1:])
c.commit()
t = time.time()
c.execute('CREATE VIRTUAL TABLE screen USING phenix(embedding float16[256] distance=cosine, compound TEXT, concentration REAL, +smiles TEXT)')
c.execute("INSERT INTO screen(rowid, embedding, compound, concentration, smiles) SELECT e.id, e.embedding, s.compound, s.um, s.smiles FROM phenix_embed_molecules('default', 'SELECT id, smiles, um FROM src') e JOIN src s ON s.id = e.id")
c.commit()
RESULT = dict(seconds=time.time() - t, n=c.execute('SELECT count(*) FROM screen').fetchone()[0])
""")
    print("| path | candidates | seconds | molecules/s |\n|---|---|---|---|")
    for name, r in ((f"phenix screen --batch-size {a.batch_size} (CSV library, one transaction per batch)", sc),
                    ("INSERT ... SELECT FROM phenix_embed_molecules (one statement)", sq)):
        print(f"| {name} | {r['n']:,} | {r['seconds']:.1f} | {r['n'] / r['seconds']:,.0f} |")
    print(f"ratio screen/SQL throughput: {sq['seconds'] / sc['seconds']:.2f}x")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True)
    p = sub.add_parser("import")
    p.add_argument("--rows", type=int, default=100000)
    p.add_argument("--features", type=int, default=500)
    p.add_argument("--only-phenix", action="store_true", help="skip the pandas baseline (peak RSS at large sizes)")
    p = sub.add_parser("screen")
    p.add_argument("--molecules", type=int, default=17480)
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--repeat", type=int, default=1, help="repeat the library (amortises fixed costs)")
    a = ap.parse_args()
    os.environ.setdefault("ORT_DYLIB_PATH", str(ROOT / ".ort" / "libonnxruntime.so"))
    (bench_import if a.what == "import" else bench_screen)(a)


if __name__ == "__main__":
    main()
