"""The shipped default model reproduces, from SQL, the top-1 % recall its training report states.

The held-out profiles are regenerated exactly as `phenix simulate` -> `phenix import` -> `phenix train`
made them for the shipped model (the simulator's wells in memory, phenix.simulate.wells_in_memory; the
same plate normalisation, activity calls and scaffold split as phenix train, from the manifest's seeds),
the scaffold-split (molecule, concentration) candidates are embedded
with phenix_embed_molecules('default', ...) into a phenix table, and every query profile goes through
phenix_embed_phenomics('default', profile) and phenix_retrieve(..., k = ceil(candidates / 100)). The
recall must equal the manifest's `provenance.metrics.scaffold.top1_*` within f16 tolerance: the number
of queries whose true candidate sits within float16 rounding of the k-th place (computed here in
float32 with onnxruntime on the same bundle) bounds how many may flip."""

from __future__ import annotations

import json
import math
import sqlite3
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "python"))


def shipped_dataset():
    """(manifest, dataset, prepared) of the shipped model, rebuilt the way phenix train built them."""
    from phenix.simulate import wells_in_memory
    from phenix.training import recipe as T
    from phenix.training.molecules import load_molecules
    from phenix.training.simulator import SimConfig, simulate
    from phenix.wells import build_dataset, call_activity, normalize_plates

    manifest = json.loads((ROOT / "models" / "default" / "phenix-model.json").read_text())
    prov = manifest["provenance"]
    ms = load_molecules()
    scr = simulate(ms, SimConfig(seed=0))  # `phenix simulate --seed 0`
    w = wells_in_memory(scr, ms)
    normalize_plates(w, prov["plate_normalization"]["method"])
    ds, _ = build_dataset(w)
    call_activity(ds, prov["activity"]["active_p"], prov["activity"]["n_null"], seed=prov["seed"])
    prep = T.prepare(ds, T.TrainConfig(**prov["train_config"]))
    return manifest, ds, prep


def test_sql_reproduces_the_reported_top1_recall(ext, tmp_path):
    from phenix.training import recipe as T
    from phenix.training.model import encode_concentration

    bundle = ROOT / "models" / "default"
    manifest, ds, prep = shipped_dataset()
    reported = manifest["provenance"]["metrics"]["scaffold"]
    _, pairs, true_idx, active = T.split_queries(prep, "scaffold")
    n = len(pairs)
    assert n == reported["n_candidates"], (n, reported["n_candidates"])
    assert int(active.sum()) == reported["n_active_queries"]
    # Raw (plate-normalised, not standardised) query profiles: replicate means; phenix applies the
    # bundle's normalisation.
    queries = T.replicate_mean(ds.profiles[pairs], ds.present[pairs])
    smiles = ds.mol_smiles[ds.pair_mol[pairs]]
    um = ds.doses_um[ds.pair_dose[pairs]]
    k = math.ceil(n / 100)

    c = sqlite3.connect(tmp_path / "science.db")
    c.enable_load_extension(True)
    c.load_extension(str(ext))
    c.execute("CREATE TABLE src(id INTEGER PRIMARY KEY, smiles TEXT, um REAL)")
    c.executemany("INSERT INTO src VALUES (?, ?, ?)", [(i + 1, str(s), float(u)) for i, (s, u) in enumerate(zip(smiles, um))])
    c.execute("CREATE VIRTUAL TABLE cands USING phenix(embedding float16[256] distance=cosine)")
    c.execute(
        "INSERT INTO cands(rowid, embedding) SELECT id, embedding "
        "FROM phenix_embed_molecules('default', 'SELECT id, smiles, um FROM src')"
    )
    c.commit()
    hits = np.zeros(n, bool)
    for i in range(n):
        rows = c.execute(
            "SELECT rowid FROM phenix_retrieve('cands', phenix_embed_phenomics('default', ?), ?)",
            (queries[i].tobytes(), k),
        ).fetchall()
        assert len(rows) == k
        hits[i] = (int(true_idx[i]) + 1) in {r[0] for r in rows}
    sql_all, sql_active = hits.mean(), hits[active].mean()

    # The f16 tolerance: queries whose true candidate is within float16 rounding of the k-th place,
    # computed in float32 with onnxruntime on the same ONNX files.
    mol, phen = manifest["molecule"], manifest["phenomics"]
    so = ort.InferenceSession(str(bundle / mol["onnx"]), providers=["CPUExecutionProvider"])
    sp = ort.InferenceSession(str(bundle / phen["onnx"]), providers=["CPUExecutionProvider"])
    fp = prep.fp[ds.pair_mol[pairs]]
    conc = encode_concentration(mol["concentration"], um).astype(np.float32)
    zm = so.run([mol["output"]], {mol["input_fingerprint"]: fp, mol["input_concentration"]: conc})[0]
    norm = phen["normalization"]
    x = ((queries - np.array(norm["center"], np.float32)) / np.array(norm["scale"], np.float32)).astype(np.float32)
    zp = sp.run([phen["output"]], {phen["input"]: x})[0]
    sims = zp @ zm.T
    kth = -np.partition(-sims, k - 1, axis=1)[:, k - 1]
    true_sim = sims[np.arange(n), true_idx]
    borderline = np.abs(true_sim - kth) < 4e-3  # f16 storage of both embeddings: |error| < ~2e-3 each
    f32_hits = true_sim >= kth
    print(
        f"\nscaffold split, {n} queries, k = {k}: SQL top-1 % recall all {sql_all:.4f} / active {sql_active:.4f}; "
        f"reported {reported['top1_all']:.4f} / {reported['top1_active']:.4f}; onnxruntime f32 "
        f"{f32_hits.mean():.4f} / {f32_hits[active].mean():.4f}; borderline queries {borderline.sum()}"
    )
    tol_all = borderline.sum() / n + 1 / n
    tol_active = borderline[active].sum() / max(active.sum(), 1) + 1 / max(active.sum(), 1)
    assert abs(sql_all - reported["top1_all"]) <= tol_all, (sql_all, reported["top1_all"], tol_all)
    assert abs(sql_active - reported["top1_active"]) <= tol_active, (sql_active, reported["top1_active"], tol_active)
