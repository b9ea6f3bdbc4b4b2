"""The wells -> dataset path in process, against numpy/pandas references: per-plate normalisation in SQL
(phenix_mean, phenix_norm_fit / phenix_norm_apply) vs numpy, and the (molecule, dose) grouping vs a
pandas groupby."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import phenix
from phenix.importer import import_frames
from phenix.wells import Columns, build_dataset, normalize_plates, read_wells


@pytest.fixture()
def table(tmp_path):
    rng = np.random.default_rng(1)
    rows = []
    smiles = ["c1ccccc1O", "CCN(CC)CC", "c1ccncc1C", "OC(=O)c1ccccc1", "CC1CCCCC1"]
    for p in range(3):
        for i in range(40):
            ctrl = i < 8
            rows.append({"Metadata_Plate": f"P{p}", "Metadata_Well": f"W{i:02d}",
                         "Metadata_broad_sample": "DMSO" if ctrl else f"C{i % 5}",
                         "Metadata_SMILES": "" if ctrl else smiles[i % 5],
                         "Metadata_mmoles_per_liter": 0.0 if ctrl else [0.001, 0.01][i % 2]})
    meta = pd.DataFrame(rows)
    x = rng.normal(2.0, 3.0, (len(meta), 6)) * (1 + np.arange(6)) + np.repeat(np.arange(3), 40)[:, None]
    feats = [f"Cells_F{j}" for j in range(6)]
    df = pd.concat([meta, pd.DataFrame(x.astype(np.float32), columns=feats)], axis=1)
    db = tmp_path / "w.db"
    conn = phenix.connect(str(db))
    import_frames(conn, "wells", iter([df]), source="test", progress=False)
    return conn, df, feats


def _numpy(df, feats, method):
    out = df[feats].to_numpy(np.float32).astype(np.float64)
    for p, g in df.groupby("Metadata_Plate"):
        idx = g.index.to_numpy()
        c = out[idx[g["Metadata_broad_sample"].to_numpy() == "DMSO"]]
        if method == "center":
            out[idx] = out[idx] - c.mean(0)
        elif method == "standardize":
            out[idx] = (out[idx] - c.mean(0)) / c.std(0)
        else:  # pycytominer mad_robustize
            med = np.median(c, 0)
            out[idx] = (out[idx] - med) / (np.median(np.abs(c - med), 0) * 1.4826 + 1e-18)
    return out


@pytest.mark.parametrize("method", ["center", "standardize", "robust"])
def test_plate_normalisation_in_sql_equals_numpy(table, method):
    conn, df, feats = table
    cols = Columns(batch=None)
    w = read_wells(conn, cols)
    assert w.features == feats
    normalize_plates(w, method, conn, cols)
    want = _numpy(df, feats, method)
    np.testing.assert_allclose(w.profiles, want, rtol=2e-5, atol=2e-5)
    if method == "center":
        # the in-memory path (tests, demo) gives the same float32 profiles as the SQL one
        w2 = read_wells(conn, cols)
        normalize_plates(w2, method)
        assert np.array_equal(w.profiles, w2.profiles)


def test_grouping_into_pairs_matches_pandas(table):
    conn, df, feats = table
    cols = Columns(batch=None)
    w = read_wells(conn, cols)
    ds, notes = build_dataset(w, chem=False)
    trt = df[df["Metadata_broad_sample"] != "DMSO"]
    g = trt.groupby(["Metadata_broad_sample", "Metadata_mmoles_per_liter"])
    assert len(ds.pair_mol) == g.ngroups
    for (comp, mm), rows in g:
        k = np.flatnonzero((ds.mol_compound[ds.pair_mol] == comp)
                           & np.isclose(ds.doses_um[ds.pair_dose], mm * 1000))
        assert len(k) == 1
        k = k[0]
        want = rows.sort_values(["Metadata_Plate", "Metadata_Well"])[feats].to_numpy(np.float32)
        assert ds.present[k].sum() == len(want)
        assert np.array_equal(ds.profiles[k, :len(want)], want)


def test_import_packs_like_phenix_pack_on_the_wide_table(table):
    """phenix import's blobs and feature list equal phenix_pack / phenix_features_json on the same wide
    table loaded into SQLite (the SQL route for data already in a database)."""
    conn, df, feats = table
    df.to_sql("wide", conn, index=False)
    got = [np.frombuffer(b, "<f4") for (b,) in conn.execute("SELECT profile FROM wells ORDER BY rowid")]
    want = [np.frombuffer(b, "<f4") for (_, b) in
            conn.execute("SELECT rowid, profile FROM phenix_pack('wide', 'Cells_%', '') ORDER BY rowid")]
    assert len(got) == len(want) == len(df)
    assert all(np.array_equal(a, b) for a, b in zip(got, want))
    import json

    assert json.loads(conn.execute("SELECT phenix_features_json('wide', 'Cells_%', '')").fetchone()[0]) == feats
