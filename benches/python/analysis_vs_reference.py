"""Side by side: phenix's analysis functions inside SQLite vs pycytominer / copairs on the same data,
timed in one run (so the ratios share the machine's load).

    ORT_DYLIB_PATH=.ort/libonnxruntime.so .venv/bin/python benches/python/analysis_vs_reference.py \
        [--wells 50000] [--features 1000] [--plates 50] [--sphere-rows 50000] [--map-wells 10000]

1. Robust (median / MAD) normalisation per plate against its DMSO wells: pycytominer
   `normalize(method="mad_robustize", samples="Metadata_role == 'DMSO'")` per plate vs
   `phenix_norm_fit('robust', …) … GROUP BY plate` + `INSERT … SELECT phenix_norm_apply(…)`
   (profiles already packed as float32 blobs; the SQLite database is in memory).
2. Fitting ZCA-cor sphering on `--sphere-rows` control wells × `--features` (phenix only, one
   aggregate over a table; pycytominer's SVD is printed for reference when `--sphere-ref` is given).
3. Phenotypic-activity mAP for `--map-wells` wells (4 replicates per treatment, 20 % controls,
   128 features, null_size 1000): copairs `average_precision` + `mean_average_precision` vs
   `phenix_activity_map`.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[2]
EXT = os.environ.get("PHENIX_EXT", str(ROOT / "target" / "release" / "libphenix.so"))


def connect():
    c = sqlite3.connect(":memory:", isolation_level=None)
    c.enable_load_extension(True)
    c.load_extension(EXT)
    return c


def timed(f):
    t = time.perf_counter()
    r = f()
    return time.perf_counter() - t, r


def bench_normalize(n, d, plates, rng):
    from pycytominer import normalize

    x = rng.normal(size=(n, d)).astype(np.float32) * 2 + 5
    plate = np.repeat(np.arange(plates), n // plates)[:n]
    role = np.where(rng.random(n) < 0.1, "DMSO", "trt")
    feats = [f"Cells_F{i:04d}" for i in range(d)]
    df = pd.DataFrame(x.astype(np.float64), columns=feats)
    df.insert(0, "Metadata_Plate", plate)
    df.insert(1, "Metadata_role", role)

    def ref():
        return pd.concat([normalize(g, features=feats, meta_features=["Metadata_Plate", "Metadata_role"],
                                    samples="Metadata_role == 'DMSO'", method="mad_robustize")
                          for _, g in df.groupby("Metadata_Plate")])

    c = connect()
    c.execute("CREATE TABLE prof(id INTEGER PRIMARY KEY, plate, role, profile)")
    c.executemany("INSERT INTO prof VALUES (?, ?, ?, ?)",
                  ((i, int(plate[i]), role[i], x[i].tobytes()) for i in range(n)))

    def mine():
        c.execute("CREATE TABLE fits AS SELECT plate, phenix_norm_fit('robust', profile) AS fit FROM prof "
                  "WHERE role = 'DMSO' GROUP BY plate")
        c.execute("CREATE TABLE normed AS SELECT p.id, phenix_norm_apply(f.fit, p.profile) AS profile "
                  "FROM prof p JOIN fits f USING (plate)")
        return c.execute("SELECT count(*) FROM normed").fetchone()[0]

    t_ref, r = timed(ref)
    t_mine, cnt = timed(mine)
    assert cnt == n
    got = np.frombuffer(c.execute("SELECT profile FROM normed WHERE id = 0").fetchone()[0], "<f4")
    want = r.loc[0, feats].to_numpy(np.float64) if 0 in r.index else None
    if want is not None:
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    return t_ref, t_mine


def bench_sphere(n, d, rng, with_ref):
    x = (rng.normal(size=(n, d)) @ (np.eye(d) + 0.05 * rng.normal(size=(d, d)))).astype(np.float32)
    c = connect()
    c.execute("CREATE TABLE ctrl(profile)")
    c.executemany("INSERT INTO ctrl VALUES (?)", ((r.tobytes(),) for r in x))
    t_mine, fit = timed(lambda: c.execute("SELECT phenix_norm_fit('sphere', profile) FROM ctrl").fetchone()[0])
    t_ref = None
    if with_ref:
        from pycytominer.operations.transform import Spherize

        t_ref, _ = timed(lambda: Spherize(method="ZCA-cor").fit(pd.DataFrame(x.astype(np.float64))))
    return t_ref, t_mine, len(fit)


def bench_map(n, d, rng):
    from copairs import map as cmap

    n_ctrl = n // 5
    reps = 4
    n_trt = (n - n_ctrl) // reps
    rows = [("DMSO", 1)] * n_ctrl + [(f"t{k}", 0) for k in range(n_trt) for _ in range(reps)]
    base = rng.normal(size=(n_trt, d)) * rng.uniform(0, 1.5, (n_trt, 1))
    x = np.concatenate([rng.normal(size=(n_ctrl, d)), np.repeat(base, reps, 0) + rng.normal(size=(n_trt * reps, d))])
    x = x.astype(np.float32)
    meta = pd.DataFrame({"Metadata_t": [t for t, _ in rows]})
    meta["Metadata_ref"] = np.where(meta["Metadata_t"] == "DMSO", np.arange(len(meta)), -1)
    cache = tempfile.mkdtemp(prefix="copairs-cache-")

    def ref():
        ap = cmap.average_precision(meta, x, ["Metadata_t", "Metadata_ref"], [], [], ["Metadata_t", "Metadata_ref"],
                                    progress_bar=False)
        ap = ap.query("Metadata_t != 'DMSO'")
        return cmap.mean_average_precision(ap, ["Metadata_t"], null_size=1000, threshold=0.05, seed=0,
                                           progress_bar=False, cache_dir=cache)

    c = connect()
    c.execute("CREATE TABLE w(id INTEGER PRIMARY KEY, t, ctrl, profile)")
    c.executemany("INSERT INTO w(t, ctrl, profile) VALUES (?, ?, ?)", ((t, k, v.tobytes()) for (t, k), v in zip(rows, x)))

    def mine():
        return json.loads(c.execute("SELECT phenix_activity_map(id, t, ctrl, profile, '{\"null_size\": 1000}') FROM w").fetchone()[0])

    t_ref, mp = timed(ref)
    t_mine, got = timed(mine)
    g = {r["treatment"]: r["mean_average_precision"] for r in got["groups"]}
    diff = max(abs(g[t] - m) for t, m in zip(mp["Metadata_t"], mp["mean_average_precision"]))
    return t_ref, t_mine, diff, len(rows)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--wells", type=int, default=50000)
    ap.add_argument("--features", type=int, default=1000)
    ap.add_argument("--plates", type=int, default=50)
    ap.add_argument("--sphere-rows", type=int, default=50000)
    ap.add_argument("--sphere-ref", action="store_true")
    ap.add_argument("--map-wells", type=int, default=10000)
    ap.add_argument("--only", choices=["normalize", "sphere", "map"], default=None)
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    print(f"load: {os.getloadavg()[0]:.2f}")
    if a.only in (None, "normalize"):
        t_ref, t_mine = bench_normalize(a.wells, a.features, a.plates, rng)
        print(f"robust normalise {a.wells} x {a.features}, {a.plates} plates: pycytominer {t_ref:.2f} s, "
              f"phenix {t_mine:.2f} s, ratio {t_ref / t_mine:.1f}x")
    if a.only in (None, "sphere"):
        t_ref, t_mine, size = bench_sphere(a.sphere_rows, a.features, rng, a.sphere_ref)
        ref = f", pycytominer Spherize.fit {t_ref:.2f} s" if t_ref else ""
        print(f"sphere fit (zca-cor) {a.sphere_rows} x {a.features}: phenix {t_mine:.2f} s (fit blob {size} bytes){ref}")
    if a.only in (None, "map"):
        t_ref, t_mine, diff, n = bench_map(a.map_wells, 128, rng)
        print(f"activity mAP {n} wells x 128, null 1000: copairs {t_ref:.2f} s, phenix {t_mine:.2f} s, "
              f"ratio {t_ref / t_mine:.1f}x, max |mAP diff| {diff:.2e}")
    print(f"load: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
