"""The phenix package end to end, as a user runs it: pip-installed into a fresh venv, a simulated screen
written as pycytominer CSV -> ``phenix import`` -> ``phenix train`` (reduced) -> ``phenix evaluate`` ->
the bundle in the sqlite3 CLI, whose recall computed in SQL must equal ``phenix evaluate``'s. Then the
real-format layouts, the virtual screen, and every bad input of the issue (exit 2, one line, nothing
half-written)."""

from __future__ import annotations

import json
import math
import re
import sqlite3
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import ROOT, sqlite3_cli


def _lib_env(venv):
    out = venv.py("import phenix; print(phenix.loadable_path()); print(phenix.ort_library_path())").split()
    env = dict(venv.env, ORT_DYLIB_PATH=out[1])
    return out[0], env


def _tables(db: Path) -> set[str]:
    c = sqlite3.connect(db)
    try:
        return {r[0] for r in c.execute("SELECT name FROM sqlite_master")}
    finally:
        c.close()


def test_package_imports_without_training_extras_and_loads_into_sqlite3_and_apsw(venv):
    # importing phenix pulls neither JAX nor RDKit nor onnx
    out = venv.py("import sys, phenix; print(sorted(m for m in ('jax', 'rdkit', 'onnx', 'optax', 'pandas') "
                  "if m in sys.modules))")
    assert out.strip() == "[]"
    assert venv.py("import sqlite3, phenix; c = sqlite3.connect(':memory:'); phenix.load(c); "
                   "print(c.execute('SELECT phenix_version()').fetchone()[0])").strip() == "0.1.0"
    assert venv.py("import apsw, phenix; c = apsw.Connection(':memory:'); phenix.load(c); "
                   "print(c.execute('SELECT phenix_dims(?)', ('[1,2,3]',)).fetchone()[0])").strip() == "3"
    for cmd in ("simulate", "import", "train", "evaluate", "screen"):
        p = venv.run(cmd, "--help")
        assert f"usage: phenix {cmd}" in p.stdout


def test_end_to_end_recall_computed_in_sql_equals_evaluate(venv, screen):
    d, db, bundle = screen["dir"], screen["db"], screen["bundle"]
    man = json.loads((bundle / "phenix-model.json").read_text())
    # the bundle knows its inputs: the imported feature list and the plate normalisation
    header = pd.read_csv(screen["csv"], nrows=0).columns
    assert man["phenomics"]["features"] == [c for c in header if not c.startswith("Metadata_")]
    assert man["phenomics"]["plate_normalization"]["method"] == "center"
    assert (Path(str(bundle) + "-report") / "report.md").exists()
    for png in ("recall.png", "training.png", "joint.png"):
        assert (Path(str(bundle) + "-report") / png).stat().st_size > 5000

    venv.run("evaluate", db, "--model", bundle, "--split", "test", "--json", d / "eval.json",
             "--save-queries", "evalq", "--quiet")
    ev = json.loads((d / "eval.json").read_text())
    sc = screen["train"]["metrics"]["scaffold"]
    # evaluate rebuilt the same scaffold-test queries and activity calls as training did
    assert (ev["n_queries"], ev["n_active_queries"]) == (sc["n_queries"], sc["n_active_queries"])
    n, n_act = ev["n_queries"], ev["n_active_queries"]
    # and (float16 embeddings in SQL vs float32 in JAX) agrees with the training report within flips
    assert abs(ev["top5_all"] - sc["top5_all"]) <= 3 / n + 1e-9
    # a reduced run still learns: top-5 % recall on actives well above random (0.05)
    assert ev["top5_active"] >= 0.15, ev

    lib, env = _lib_env(venv)
    k1, k5 = math.ceil(n / 100), math.ceil(5 * n / 100)
    out = sqlite3_cli(db, f"""
.load {lib}
SELECT count(*) FROM (SELECT phenix_model_load('m', '{bundle}'));
CREATE VIRTUAL TABLE cand USING phenix(embedding float16[256] distance=cosine);
INSERT INTO cand(rowid, embedding)
  SELECT id, embedding FROM phenix_embed_molecules('m', 'SELECT query_id, smiles, dose_um FROM evalq');
CREATE TEMP TABLE hits AS SELECT q.query_id, q.active,
  EXISTS (SELECT 1 FROM phenix_retrieve('cand', phenix_embed_phenomics('m', q.profile), {k1}) r
          WHERE r.rowid = q.query_id) AS hit1,
  EXISTS (SELECT 1 FROM phenix_retrieve('cand', phenix_embed_phenomics('m', q.profile), {k5}) r
          WHERE r.rowid = q.query_id) AS hit5
  FROM evalq q;
SELECT sum(hit1), sum(hit5), sum(hit1 * active), sum(hit5 * active), count(*), sum(active) FROM hits;
""", env)
    h1, h5, a1, a5, cnt, act = map(int, out.strip().splitlines()[-1].split("|"))
    assert (cnt, act) == (n, n_act)
    assert h1 / n == ev["top1_all"] and h5 / n == ev["top5_all"]
    assert a1 / act == ev["top1_active"] and a5 / act == ev["top5_active"]

    # an independent float32 reference (onnxruntime on the bundle, numpy ranks) within float16 flips
    import onnxruntime as ort

    from phenix_ref import reference_ranks

    c = sqlite3.connect(db)
    rows = c.execute("SELECT smiles, dose_um, profile, active FROM evalq ORDER BY query_id").fetchall()
    c.close()
    r = reference_ranks(bundle, [x[0] for x in rows], np.array([x[1] for x in rows]),
                        np.stack([np.frombuffer(x[2], "<f4") for x in rows]), ort)
    assert abs(np.mean(r < k5) - ev["top5_all"]) <= 4 / n


def test_phenix_embed_phenomics_refuses_a_profile_of_another_length(venv, screen):
    lib, env = _lib_env(venv)
    p = __import__("subprocess").run(
        ["/usr/bin/sqlite3", ":memory:"], input=f".load {lib}\nSELECT phenix_model_load('m', '{screen['bundle']}');\n"
        "SELECT phenix_embed_phenomics('m', phenix_f32('[1, 2, 3]'));\n", capture_output=True, text=True, env=env)
    assert "expects float32[384]: got a 12-byte blob, a float32 profile of 3 features" in p.stderr, p.stderr


def test_pycytominer_normalized_feature_selected_csv_imports_as_written(venv, screen, tmp_path):
    """A file exactly as pycytominer writes it (normalize -> feature_select, Metadata_ prefixes)."""
    from pycytominer import feature_select, normalize

    df = pd.read_csv(screen["csv"], nrows=3000)
    # the simulated features are neither constant nor strongly correlated: add one of each, which
    # feature_select must drop, so the written file has a strict subset of the features
    df["Cells_Granularity_16_DNA"] = 1.0
    df["Nuclei_Intensity_Copy_DNA"] = 2 * df["Cells_AreaShape_Area"] + 1e-3 * np.random.default_rng(0).normal(size=len(df))
    norm = normalize(df, method="mad_robustize", samples="Metadata_control_type == 'negcon'",
                     meta_features=[c for c in df.columns if c.startswith("Metadata_")])
    sel = feature_select(norm, operation=["variance_threshold", "correlation_threshold", "drop_na_columns"])
    path = tmp_path / "normalized_feature_select.csv.gz"
    sel.to_csv(path, index=False, compression="gzip")
    db = tmp_path / "p.db"
    res = json.loads(venv.run("import", db, path, "--chunk-size", 700, "--quiet").stdout)
    written = pd.read_csv(path)
    feats = [c for c in written.columns if not c.startswith("Metadata_")]
    assert 0 < len(feats) < 386 and res["rows"] == len(written) and res["features"] == len(feats)
    c = sqlite3.connect(db)
    assert json.loads(c.execute("SELECT features FROM phenix_feature_lists WHERE table_name='wells'").fetchone()[0]) == feats
    got = c.execute("SELECT Metadata_Plate, Metadata_Well, Metadata_SMILES, profile FROM wells ORDER BY rowid").fetchall()
    c.close()
    prof = np.stack([np.frombuffer(r[3], "<f4") for r in got])
    assert np.array_equal(prof, written[feats].to_numpy(np.float32))
    assert [r[0] for r in got] == written["Metadata_Plate"].tolist()
    assert [r[1] for r in got] == written["Metadata_Well"].tolist()
    assert [r[2] or "" for r in got] == written["Metadata_SMILES"].fillna("").tolist()


def test_cellprofiler_per_object_export_is_aggregated_per_well(venv, tmp_path):
    """Image.csv + per-object Cells/Cytoplasm/Nuclei CSVs -> one row per well, median per feature."""
    rng = np.random.default_rng(0)
    d = tmp_path / "cp"
    d.mkdir()
    wells = [(p, f"{r}{c:02d}") for p in ("P1", "P2") for r in "AB" for c in (1, 2, 3)]
    img = pd.DataFrame({"ImageNumber": np.arange(1, 2 * len(wells) + 1),
                        "Metadata_Plate": [w[0] for w in wells for _ in range(2)],
                        "Metadata_Well": [w[1] for w in wells for _ in range(2)],
                        "Metadata_Site": [s for _ in wells for s in (1, 2)]})
    img.to_csv(d / "Image.csv", index=False)
    meas = ["AreaShape_Area", "Intensity_MeanIntensity_DNA", "Texture_Contrast_ER_3_00_256"]
    objs = {}
    for comp in ("Cells", "Cytoplasm", "Nuclei"):
        rows = []
        for im in img["ImageNumber"]:
            for o in range(1, rng.integers(2, 7)):
                rows.append([im, o, *rng.normal(size=len(meas)), rng.uniform(0, 100), rng.uniform(0, 100)])
        objs[comp] = pd.DataFrame(rows, columns=["ImageNumber", "ObjectNumber", *meas, "Location_Center_X",
                                                 "Location_Center_Y"])
        objs[comp].to_csv(d / f"{comp}.csv", index=False)
    db = tmp_path / "cp.db"
    venv.run("import", db, d, "--cellprofiler", "--quiet")
    c = sqlite3.connect(db)
    feats = json.loads(c.execute("SELECT features FROM phenix_feature_lists").fetchone()[0])
    assert feats == [f"{comp}_{m}" for comp in ("Cells", "Cytoplasm", "Nuclei") for m in meas]
    rows = c.execute("SELECT Metadata_Plate, Metadata_Well, profile FROM wells").fetchall()
    assert len(rows) == len(wells)
    for plate, well, blob in rows:
        ims = img[(img.Metadata_Plate == plate) & (img.Metadata_Well == well)]["ImageNumber"]
        want = [float(np.median(objs[comp][objs[comp].ImageNumber.isin(ims)][m])) for comp in ("Cells", "Cytoplasm",
                                                                                                 "Nuclei") for m in meas]
        assert np.allclose(np.frombuffer(blob, "<f4"), want, rtol=1e-6, atol=1e-7)


# --------------------------------------------------------------------------------------- bad input

def _copy_db(src: Path, dst: Path, sql: str = "") -> Path:
    s, t = sqlite3.connect(src), sqlite3.connect(dst)
    s.backup(t)
    s.close()
    if sql:
        t.executescript(sql)
        t.commit()
    t.close()
    return dst


def test_bad_input_is_one_line_exit_2_and_nothing_half_written(venv, screen, tmp_path):
    db, bundle, csv = screen["db"], screen["bundle"], screen["csv"]
    out = tmp_path / "b"
    # missing / misnamed column: the close matches are listed
    msg = venv.fails("train", db, "--out", out, "--smiles", "Metadata_smile")
    assert "SMILES column 'Metadata_smile' not found" in msg and "Metadata_SMILES" in msg
    assert not out.exists()
    # unknown dose unit
    msg = venv.fails("train", db, "--out", out, "--dose-unit", "mg/ml")
    assert "unknown dose unit 'mg/ml'" in msg and "uM" in msg
    # unparsable SMILES: count and first rows; skipped only with the flag
    bad = _copy_db(db, tmp_path / "smiles.db", "UPDATE wells SET Metadata_SMILES = 'C1CC(' "
                   "WHERE Metadata_broad_sample IN (SELECT DISTINCT Metadata_broad_sample FROM wells "
                   "WHERE Metadata_broad_sample != 'DMSO' ORDER BY 1 LIMIT 2)")
    msg = venv.fails("train", bad, "--out", out)
    assert re.search(r"2 SMILES cannot be parsed by RDKit, first: 'C1CC\(' \(rows \d+, \d+, \d+\)", msg), msg
    assert "--skip-bad-smiles" in msg and not out.exists()
    res = json.loads(venv.run("train", bad, "--out", out, "--skip-bad-smiles", "--steps", 3, "--n-null", 500,
                              "--quiet").stdout)
    notes = json.loads((out / "phenix-model.json").read_text())["provenance"]["notes"]
    assert notes["dropped_molecules_bad_smiles"] == 2 and res["dataset"]["n_molecules"] == 298
    out = tmp_path / "b2"
    # no control wells on a plate
    noctl = _copy_db(db, tmp_path / "noctl.db", "DELETE FROM wells WHERE Metadata_broad_sample = 'DMSO' AND "
                     "Metadata_Plate = (SELECT min(Metadata_Plate) FROM wells)")
    msg = venv.fails("train", noctl, "--out", out)
    assert "plate(s) have no control wells" in msg and "SIM0001" in msg
    # too few molecules / scaffolds for the split
    few = _copy_db(db, tmp_path / "few.db", "DELETE FROM wells WHERE Metadata_broad_sample != 'DMSO' AND "
                   "Metadata_broad_sample NOT IN (SELECT DISTINCT Metadata_broad_sample FROM wells "
                   "WHERE Metadata_broad_sample != 'DMSO' ORDER BY 1 LIMIT 12)")
    msg = venv.fails("train", few, "--out", out)
    assert "too few molecules for the scaffold split: 12 molecules" in msg
    assert not out.exists()

    # NaN / inf features in a later chunk: no table, no feature list
    df = pd.read_csv(csv, nrows=400)
    df.loc[350, "Nuclei_AreaShape_Area"] = np.nan
    df.loc[360, "Cells_AreaShape_Perimeter"] = np.inf
    p = tmp_path / "nan.csv"
    df.to_csv(p, index=False)
    dbn = tmp_path / "nan.db"
    msg = venv.fails("import", dbn, p, "--chunk-size", 100)
    assert "2 rows in this chunk have NaN or infinite features (first: line 352, column 'Nuclei_AreaShape_Area'" in msg
    assert "wells" not in _tables(dbn) and "phenix_feature_lists" not in _tables(dbn)
    # a non-numeric feature column
    df2 = pd.read_csv(csv, nrows=50)
    df2["Cells_AreaShape_Area"] = df2["Cells_AreaShape_Area"].astype(str)
    df2.loc[7, "Cells_AreaShape_Area"] = "n/a!"
    df2.to_csv(tmp_path / "txt.csv", index=False)
    msg = venv.fails("import", tmp_path / "txt.db", tmp_path / "txt.csv")
    assert "feature column 'Cells_AreaShape_Area' is not numeric (line 9: 'n/a!')" in msg
    # no feature columns at all
    df.filter(like="Metadata_").to_csv(tmp_path / "meta.csv", index=False)
    assert "no feature columns match" in venv.fails("import", tmp_path / "m.db", tmp_path / "meta.csv")
    # importing over an existing table
    assert "already exists" in venv.fails("import", db, csv)

    # a bundle whose feature list does not match: import --model and evaluate name the first mismatch
    sw = pd.read_csv(csv, nrows=300)
    cols = list(sw.columns)
    i = cols.index("Cytoplasm_AreaShape_Area")
    sw = sw.rename(columns={"Cytoplasm_AreaShape_Area": "Cytoplasm_AreaShape_Areaa"})
    sw.to_csv(tmp_path / "renamed.csv", index=False)
    dbm = tmp_path / "mm.db"
    msg = venv.fails("import", dbm, tmp_path / "renamed.csv", "--model", bundle)
    assert "feature 2 is 'Cytoplasm_AreaShape_Areaa' but the model has 'Cytoplasm_AreaShape_Area'" in msg, (msg, i)
    assert "wells" not in _tables(dbm)
    venv.run("import", dbm, tmp_path / "renamed.csv", "--quiet")
    msg = venv.fails("evaluate", dbm, "--model", bundle)
    assert "does not match the model's: feature 2 is 'Cytoplasm_AreaShape_Areaa'" in msg
    # fewer features than the model
    sw0 = pd.read_csv(csv, nrows=300)
    sw0.drop(columns=[c for c in sw0.columns if c.startswith("Nuclei_")]).to_csv(tmp_path / "fewer.csv", index=False)
    msg = venv.fails("import", tmp_path / "f.db", tmp_path / "fewer.csv", "--model", bundle)
    assert "feature 3 is 'Cells_AreaShape_Perimeter' but the model has 'Nuclei_AreaShape_Area'" in msg


# --------------------------------------------------------------------------------------- screen

def test_screen_embeds_in_batches_resumes_and_retrieves(venv, screen, tmp_path):
    lib = pd.read_csv(ROOT / "data" / "molecules" / "approved_drugs.csv").head(45)[["id", "smiles"]]
    lib.loc[32, "smiles"] = "C1CC"  # a bad SMILES in the fourth batch
    lib.to_csv(tmp_path / "lib.csv", index=False)
    db = _copy_db(screen["db"], tmp_path / "s.db")
    args = ("screen", db, "--model", screen["bundle"], "--library", tmp_path / "lib.csv", "--doses", "0.3,3",
            "--batch-size", 10, "--quiet")
    msg = venv.fails(*args)
    assert "1 SMILES of this batch cannot be featurized, first: 'C1CC' (library row 33)" in msg
    c = sqlite3.connect(db)
    venv_lib, env = _lib_env(venv)
    assert c.execute("SELECT rows_done FROM phenix_screens").fetchone()[0] == 30
    c.close()
    # the re-run resumes after the three committed batches and skips the bad molecule
    res = json.loads(venv.run(*args[:-1], "--skip-bad-smiles", "--quiet").stdout)
    assert res["resumed_after_rows"] == 30 and res["skipped_bad_smiles"] == 1 and res["candidates"] == 44 * 2
    # every candidate equals phenix_embed_molecule of its SMILES and dose
    out = sqlite3_cli(db, f""".load {venv_lib}
SELECT phenix_model_load('m', '{screen['bundle']}');
SELECT count(*), sum(s.embedding = phenix_embed_molecule('m', s.smiles, s.concentration)) FROM screen s;
""", env)
    assert out.strip().splitlines()[-1] == "88|88"
    # retrieval for query profiles into a table and a CSV
    venv.run("evaluate", db, "--model", screen["bundle"], "--save-queries", "q", "--quiet")
    res = json.loads(venv.run("screen", db, "--model", screen["bundle"], "--queries", "q", "--query-id", "query_id",
                              "-k", 5, "--csv", tmp_path / "hits.csv", "--quiet").stdout)
    hits = pd.read_csv(tmp_path / "hits.csv")
    assert len(hits) == res["queries"] * 5 and set(hits["rank"]) == {1, 2, 3, 4, 5}
    assert hits.groupby("query_id")["distance"].apply(lambda s: s.is_monotonic_increasing).all()


def test_readme_use_from_python_snippet_runs(venv, tmp_path):
    text = (ROOT / "README.md").read_text()
    sec = text[text.index("## Use from Python"):]
    code = re.search(r"```python\n(.*?)```", sec, re.S).group(1)
    (tmp_path / "snippet.py").write_text(code)
    p = __import__("subprocess").run([str(venv.python), str(tmp_path / "snippet.py")], capture_output=True, text=True,
                                     env=venv.env, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "phenix 0.1.0" in p.stdout
