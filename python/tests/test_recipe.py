"""Reduced CI run of the training recipe on the in-memory simulator (about 1-2 min on 2 cores).

    .venv/bin/python -m pytest python/tests/test_recipe.py -q

Checks, each against an independent reference:

* the fingerprints used for training equal ``data/molecules/morgan_reference.csv`` (RDKit bits
  recorded when the data were collected, also phenix's Rust featurizer reference);
* concentration encodings follow the bundle contract, computed here by hand;
* the simulator is deterministic and its activity calls are the replicate-similarity p-values,
  recomputed here by brute force;
* the ranking metric equals a brute-force argsort ranking;
* a reduced simulation + training reaches top-1 % recall >= 10x random (0.10) on scaffold-split
  actives, and the exported ONNX encoders, run by onnxruntime, match the JAX forward pass.
"""

from __future__ import annotations

import csv
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "python"))

from phenix.training import model as M  # noqa: E402
from phenix.training import recipe as T  # noqa: E402
from phenix.training.export import export_bundle, verify  # noqa: E402
from phenix.training.molecules import DATA_DIR, load_molecules, morgan_fingerprints  # noqa: E402
from phenix.training.simulator import SimConfig, call_activity, simulate  # noqa: E402

CI_SIM = SimConfig(seed=0, n_molecules=6000)
CI_TRAIN = T.TrainConfig(seed=0, steps=1200, batch=256)


@pytest.fixture(scope="module")
def molecules():
    return load_molecules()


@pytest.fixture(scope="module")
def screen(molecules):
    return simulate(molecules, CI_SIM)


def test_fingerprints_match_reference(molecules):
    ref = DATA_DIR / "morgan_reference.csv"
    if not ref.exists():
        pytest.skip("data/molecules/morgan_reference.csv not present")
    with open(ref, newline="") as f:
        rows = list(csv.DictReader(f))[:100]
    fps = morgan_fingerprints([r["smiles"] for r in rows])
    for r, fp in zip(rows, fps):
        assert [int(b) for b in r["on_bits"].split()] == np.flatnonzero(fp).tolist()
    # the cached training fingerprints are the same function of the same SMILES
    by_smiles = {s: i for i, s in enumerate(molecules.smiles.tolist())}
    hits = [(by_smiles[r["smiles"]], fp) for r, fp in zip(rows, fps) if r["smiles"] in by_smiles]
    assert len(hits) >= 90
    for i, fp in hits:
        assert np.array_equal(molecules.fingerprints[i], fp)


def test_concentration_encodings_follow_contract():
    doses = (0.1, 0.3, 1.0, 3.0, 10.0)
    oh = M.concentration_spec("one_hot", doses)
    c = np.array([0.05, 0.1, 0.2, 0.6, 2.0, 5.5, 50.0])
    got = M.encode_concentration(oh, c)
    edges = oh["edges_um"]
    for row, ci in zip(got, c):
        idx = sum(1 for e in edges if e <= ci)
        assert row.tolist() == [1.0 if j == idx else 0.0 for j in range(len(edges) + 1)]
    lg = M.concentration_spec("log", doses)
    assert np.allclose(M.encode_concentration(lg, c)[:, 0], [(np.log10(x) - lg["offset"]) / lg["scale"] for x in c])
    sg = M.concentration_spec("sigmoid", doses)
    want = [[1 / (1 + np.exp(-sg["slope"] * (np.log10(x) - m))) for m in sg["centers_log10_um"]] for x in c]
    assert np.allclose(M.encode_concentration(sg, c), want, atol=1e-6)
    assert M.encode_concentration(M.concentration_spec("implicit", doses), c).shape == (len(c), 0)
    with pytest.raises(ValueError):
        M.encode_concentration(lg, [0.0])


def test_simulator_deterministic_and_activity_from_replicates(molecules, screen):
    small = replace(CI_SIM, n_molecules=300)
    a, b = simulate(molecules, small), simulate(molecules, small)
    assert np.array_equal(a.profiles, b.profiles) and np.array_equal(a.active, b.active)
    assert not np.array_equal(a.profiles, simulate(molecules, replace(small, seed=1)).profiles)
    # brute-force replicate similarity and p-value for a few pairs against the same null
    rng = np.random.default_rng(3)
    obs, p, act = call_activity(screen.profiles, screen.pair_mol, 0.01, 2000, rng)
    rng = np.random.default_rng(3)
    n_pair, R, _ = screen.profiles.shape
    pk = rng.integers(0, n_pair, (2000, R))
    pk = pk[[len(set(screen.pair_mol[r].tolist())) == R for r in pk]]
    rk = rng.integers(0, R, pk.shape)

    def mean_cos(ws):
        u = [w / np.linalg.norm(w) for w in ws]
        return np.mean([float(u[i] @ u[j]) for i in range(len(u)) for j in range(i + 1, len(u))])

    null = np.array([mean_cos([screen.profiles[i, r] for i, r in zip(pi, ri)]) for pi, ri in zip(pk, rk)])
    for k in [0, 7, 123, 999, 2500]:
        o = mean_cos(list(screen.profiles[k]))
        assert abs(o - obs[k]) < 1e-5
        assert abs((1 + (null >= o - 1e-6).sum()) / (1 + len(null)) - p[k]) <= 2 / len(null)
    s = screen.summary()
    assert 0.05 < s["active_fraction_pairs"] < 0.5  # inactive majority
    assert s["replicate_cosine_active_mean"] > s["replicate_cosine_inactive_mean"] + 0.1


def test_rank_metric_matches_bruteforce():
    rng = np.random.default_rng(0)
    q = rng.standard_normal((40, 8)).astype(np.float32)
    c = rng.standard_normal((300, 8)).astype(np.float32)
    c[5] = c[6]  # a tie
    true = rng.integers(0, 300, 40)
    true[0] = 5
    r = T.ranks(q, c, true)
    for i in range(40):
        s = c @ q[i]
        order = np.argsort(-s, kind="stable")
        pos = int(np.flatnonzero(order == true[i])[0])
        if true[i] in (5, 6):
            assert r[i] == pytest.approx(min(pos, int(np.flatnonzero(order == (11 - true[i]))[0])) + 0.5)
        else:
            assert r[i] == pos
    assert T.recall_at(np.array([0, 2, 3, 10.0]), 300, 0.01) == 0.5  # ceil(3) -> ranks 0, 1, 2 hit


def test_reduced_training_and_onnx_export(molecules, screen, tmp_path):
    prep = T.prepare(screen, CI_TRAIN)
    params, spec, info = T.train(prep, CI_TRAIN, progress=False)
    m = T.evaluate(params, prep, spec, splits=("scaffold", "unseen_replicates"))
    sc = m["scaffold"]
    print(json.dumps(m, indent=1), f"train {info['train_seconds']:.0f}s")
    assert sc["n_active_queries"] >= 50
    assert sc["top1_active"] >= 10 * 0.01, sc
    # untrained encoders sit at chance level: the metric is not inflated
    p0 = M.init_params(__import__("jax").random.PRNGKey(1), prep.fp.shape[1], M.n_concentration_features(spec),
                       prep.profiles.shape[2], CI_TRAIN.hidden, CI_TRAIN.dim, CI_TRAIN.loss)
    assert T.evaluate(p0, prep, spec, splits=("scaffold",))["scaffold"]["top1_active"] < 0.05

    diffs = export_bundle(params, prep, spec, CI_TRAIN, tmp_path, command="pytest", metrics=m,
                          training_data="reduced simulated screen", name="ci")
    assert max(diffs.values()) < 1e-5, diffs
    man = json.loads((tmp_path / "phenix-model.json").read_text())
    assert man["format_version"] == 1 and man["embedding"] == {"dim": 256, "distance": "cosine"}
    assert man["molecule"]["input_concentration"] == "concentration"
    assert len(man["phenomics"]["normalization"]["center"]) == 384
    # independent check through onnxruntime on raw, un-normalised profiles + the manifest normalisation
    import onnxruntime as ort

    raw = screen.profiles[:64, 0]
    x = (raw - np.array(man["phenomics"]["normalization"]["center"], np.float32)) / np.array(
        man["phenomics"]["normalization"]["scale"], np.float32)
    sess = ort.InferenceSession(str(tmp_path / "phenomics.onnx"), providers=["CPUExecutionProvider"])
    (emb,) = sess.run(["embedding"], {"profile": x.astype(np.float32)})
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert np.abs(emb - np.asarray(M.phenomics_embed(params, prep.profiles[:64, 0]))).max() < 1e-5
    d2 = verify(tmp_path / "molecule.onnx", tmp_path / "phenomics.onnx", params, spec, prep.fp[:32],
                np.full(32, 0.7), prep.profiles[:32, 1])
    assert max(d2.values()) < 1e-5

    # The export round-trips through phenix itself: the built extension loads the bundle and embeds
    # molecules and profiles like the training framework did (to float16 rounding).
    import sqlite3

    lib = ROOT / "target" / "release" / "libphenix.so"
    assert lib.exists(), f"{lib} is missing: build it with `cargo build --release -p phenix-extension`"
    con = sqlite3.connect(":memory:")
    con.enable_load_extension(True)
    con.load_extension(str(lib))
    con.execute("SELECT phenix_model_load('ci', ?)", (str(tmp_path),))
    smiles = molecules.smiles[screen.mol_index[:16]]
    doses = screen.doses_um
    feats = M.encode_concentration(spec, np.full(16, doses[2]))
    want_m = np.asarray(M.molecule_embed(params, prep.fp[:16], feats))
    got_m = np.stack([
        np.frombuffer(con.execute("SELECT phenix_embed_molecule('ci', ?, ?)", (str(s), float(doses[2]))).fetchone()[0], "<f2")
        for s in smiles
    ]).astype(np.float32)
    assert np.abs(got_m - want_m).max() < 2e-3, np.abs(got_m - want_m).max()
    got_p = np.stack([
        np.frombuffer(con.execute("SELECT phenix_embed_phenomics('ci', ?)", (r.astype(np.float32).tobytes(),)).fetchone()[0], "<f2")
        for r in raw[:16]
    ]).astype(np.float32)
    assert np.abs(got_p - emb[:16]).max() < 2e-3, np.abs(got_p - emb[:16]).max()
