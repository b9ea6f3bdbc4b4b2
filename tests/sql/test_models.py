"""Encoders through SQL vs Python: phenix_fingerprint against RDKit, and phenix_embed_molecule /
phenix_embed_phenomics / phenix_embed_molecules against RDKit + numpy + onnxruntime on the same bundle,
for every approved drug. Runs on the shipped default bundle and on a random-weight bundle made by
tests/models/make_test_bundle.py."""

from __future__ import annotations

import csv
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from rdkit import Chem, RDLogger
from rdkit.Chem import rdFingerprintGenerator

RDLogger.DisableLog("rdApp.*")
ROOT = Path(__file__).resolve().parents[2]
DRUGS = [r["smiles"] for r in csv.DictReader(open(ROOT / "data" / "molecules" / "approved_drugs.csv"))]


def connect(ext):
    c = sqlite3.connect(":memory:")
    c.enable_load_extension(True)
    c.load_extension(str(ext))
    return c


def encode_concentration(enc: dict, c: float) -> np.ndarray:
    kind = enc["kind"]
    if kind in ("none", "implicit"):
        return np.zeros(0, dtype=np.float32)
    if kind == "one_hot":
        edges = enc["edges_um"]
        v = np.zeros(len(edges) + 1, dtype=np.float32)
        v[sum(1 for e in edges if e <= c)] = 1.0
        return v
    if kind == "log":
        return np.array([(np.log10(c) - enc["offset"]) / enc["scale"]], dtype=np.float32)
    if kind == "sigmoid":
        m = np.array(enc["centers_log10_um"], dtype=np.float64)
        return (1.0 / (1.0 + np.exp(-enc["slope"] * (np.log10(c) - m)))).astype(np.float32)
    raise AssertionError(kind)


class PyModel:
    """The bundle run the Python way: RDKit fingerprints, numpy encodings, onnxruntime."""

    def __init__(self, bundle: Path):
        self.m = json.loads((bundle / "phenix-model.json").read_text())
        mol = self.m["molecule"]
        f = mol["featurizer"]
        self.gen = rdFingerprintGenerator.GetMorganGenerator(
            radius=f["radius"], fpSize=f["n_bits"], includeChirality=f.get("chirality", False)
        )
        self.counts = f.get("counts", False)
        self.mol = ort.InferenceSession(str(bundle / mol["onnx"]), providers=["CPUExecutionProvider"])
        self.phen = ort.InferenceSession(str(bundle / self.m["phenomics"]["onnx"]), providers=["CPUExecutionProvider"])

    def embed_molecules(self, smiles: list[str], conc: float) -> np.ndarray:
        mol = self.m["molecule"]
        fps = []
        for s in smiles:
            m = Chem.MolFromSmiles(s)
            fp = self.gen.GetCountFingerprintAsNumPy(m) if self.counts else self.gen.GetFingerprintAsNumPy(m)
            fps.append(fp.astype(np.float32))
        feeds = {mol["input_fingerprint"]: np.stack(fps)}
        if mol.get("input_concentration"):
            e = encode_concentration(mol["concentration"], conc)
            feeds[mol["input_concentration"]] = np.tile(e, (len(smiles), 1))
        return self.mol.run([mol["output"]], feeds)[0]

    def embed_phenomics(self, x: np.ndarray) -> np.ndarray:
        p = self.m["phenomics"]
        n = p["normalization"]
        if n["kind"] == "standardize":
            x = ((x.astype(np.float64) - np.array(n["center"])) / np.array(n["scale"])).astype(np.float32)
        return self.phen.run([p["output"]], {p["input"]: x.astype(np.float32)})[0]


@pytest.fixture(scope="module")
def test_bundle(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bench-bundle")
    subprocess.run([sys.executable, str(ROOT / "tests/models/make_test_bundle.py"), "--bench", str(out)], check=True)
    found = [p.parent for p in out.rglob("phenix-model.json")]
    assert found, "make_test_bundle.py wrote no bundle"
    return found[0]


def f16(a) -> np.ndarray:
    return np.asarray(a, dtype=np.float32).astype(np.float16)


def assert_f16_equal(got: np.ndarray, want: np.ndarray, what: str):
    """Equal to f16 rounding: phenix stores f16; its f32 result and Python's may differ in the last f32
    bits, which can flip an f16 rounding by one ulp."""
    w = f16(want).astype(np.float32)
    ulp = np.abs(np.spacing(f16(want))).astype(np.float32)
    bad = np.abs(got - w) > ulp + 1e-7
    assert not bad.any(), f"{what}: {bad.sum()} elements differ by more than one f16 ulp"


def model_under_test(ext, test_bundle, which):
    """(Python reference, connection with phenix loaded, model name) for the default or random bundle."""
    bundle = ROOT / "models" / "default" if which == "default" else test_bundle
    c = connect(ext)
    if which == "default":
        return PyModel(bundle), c, "default"
    c.execute("SELECT phenix_model_load('rnd', ?)", (str(bundle),))
    return PyModel(bundle), c, "rnd"


@pytest.mark.parametrize("which", ["default", "random"])
def test_embed_molecule_equals_python_for_every_approved_drug(ext, test_bundle, which):
    py, c, name = model_under_test(ext, test_bundle, which)
    want = py.embed_molecules(DRUGS, 10.0)
    got = np.stack([
        np.frombuffer(c.execute("SELECT phenix_embed_molecule(?, ?, 10.0)", (name, s)).fetchone()[0], dtype="<f2")
        for s in DRUGS
    ]).astype(np.float32)
    assert got.shape == want.shape == (len(DRUGS), py.m["embedding"]["dim"])
    assert_f16_equal(got, want, f"{which}: phenix_embed_molecule vs RDKit+onnxruntime")
    # The batched table-valued path gives the same blobs as the per-row path.
    c.execute("CREATE TABLE src(id INTEGER PRIMARY KEY, smiles TEXT, conc REAL)")
    c.executemany("INSERT INTO src(smiles, conc) VALUES (?, 10.0)", [(s,) for s in DRUGS])
    rows = c.execute(
        "SELECT id, embedding FROM phenix_embed_molecules(?, 'SELECT id, smiles, conc FROM src') ORDER BY id",
        (name,),
    ).fetchall()
    batched = np.stack([np.frombuffer(b, dtype="<f2") for _, b in rows]).astype(np.float32)
    assert [r[0] for r in rows] == list(range(1, len(DRUGS) + 1))
    assert np.array_equal(batched, got)
    # One molecule at two doses embeds differently when the encoding is explicit.
    if py.m["molecule"].get("input_concentration"):
        a = c.execute("SELECT phenix_embed_molecule(?, ?, 0.1)", (name, DRUGS[0])).fetchone()[0]
        b = c.execute("SELECT phenix_embed_molecule(?, ?, 10.0)", (name, DRUGS[0])).fetchone()[0]
        assert a != b


@pytest.mark.parametrize("which", ["default", "random"])
def test_embed_phenomics_equals_python(ext, test_bundle, which):
    py, c, name = model_under_test(ext, test_bundle, which)
    d = py.m["phenomics"]["input_dim"]
    x = np.random.default_rng(5).normal(size=(64, d)).astype(np.float32)
    want = py.embed_phenomics(x)
    got = np.stack([
        np.frombuffer(c.execute("SELECT phenix_embed_phenomics(?, ?)", (name, row.tobytes())).fetchone()[0], dtype="<f2")
        for row in x
    ]).astype(np.float32)
    assert_f16_equal(got, want, f"{which}: phenix_embed_phenomics vs onnxruntime")


def test_fingerprint_matches_rdkit_and_models_table(ext):
    c = connect(ext)
    for radius, nbits in [(1, 1024), (2, 2048), (3, 1024)]:
        gen = rdFingerprintGenerator.GetMorganGenerator(radius=radius, fpSize=nbits)
        for s in DRUGS[:400]:
            want = list(gen.GetFingerprint(Chem.MolFromSmiles(s)).GetOnBits())
            got = json.loads(c.execute("SELECT phenix_fingerprint(?, ?, ?)", (s, radius, nbits)).fetchone()[0])
            assert got == want, (s, radius, nbits)
    rows = c.execute("SELECT name, dim, provider, featurizer FROM phenix_models").fetchall()
    assert rows[0][0] == "default" and rows[0][1] == 256 and rows[0][2] == "cpu"
    assert "radius=2" in rows[0][3]


def test_errors_are_clear_and_path_functions_are_direct_only(ext, tmp_path):
    c = connect(ext)
    for sql, args, want in [
        ("SELECT phenix_fingerprint('C1CC', 2, 2048)", (), "C1CC"),
        ("SELECT phenix_embed_molecule('nope', 'CC', 1.0)", (), "no model named 'nope'"),
        ("SELECT phenix_embed_molecule('default', 'CC', -1.0)", (), "concentration"),
        ("SELECT phenix_embed_phenomics('default', '[1, 2]')", (), "384"),
        ("SELECT phenix_model_load('x', ?)", (str(tmp_path / "missing"),), "missing"),
        ("SELECT phenix_model_load('default', ?)", (str(tmp_path),), "reserved"),
        ("SELECT phenix_model_load('x', ?, '{\"provider\": \"cuda\"}')", (str(ROOT / "models" / "default"),), "CUDA"),
    ]:
        with pytest.raises(sqlite3.OperationalError) as e:
            c.execute(sql, args).fetchall()
        assert want.lower() in str(e.value).lower(), (sql, str(e.value))
    # phenix_model_load reads a path: a view or trigger stored in a database cannot call it.
    c.execute(f"CREATE VIEW v AS SELECT phenix_model_load('x', '{ROOT / 'models' / 'default'}')")
    with pytest.raises(sqlite3.OperationalError) as e:
        c.execute("SELECT * FROM v").fetchall()
    assert "unsafe use" in str(e.value) or "prohibited" in str(e.value), str(e.value)
    # Embedding stays usable in a trigger: auto-embedding on insert.
    c.executescript(
        """
        CREATE VIRTUAL TABLE mols USING phenix(embedding float16[256], smiles TEXT);
        CREATE TABLE inbox(smiles TEXT);
        CREATE TRIGGER embed AFTER INSERT ON inbox BEGIN
          INSERT INTO mols(embedding, smiles) VALUES (phenix_embed_molecule('default', NEW.smiles, 1.0), NEW.smiles);
        END;
        INSERT INTO inbox VALUES ('CCO'), ('c1ccccc1');
        """
    )
    assert c.execute("SELECT count(*) FROM mols").fetchone()[0] == 2


def test_missing_runtime_library_is_a_clear_sql_error(ext, tmp_path):
    """ONNX Runtime is loaded on first use; a bad ORT_DYLIB_PATH must be an SQL error, not a crash
    (a fresh process, since the runtime is process-global)."""
    script = (
        "import sqlite3, sys\n"
        "c = sqlite3.connect(':memory:'); c.enable_load_extension(True); c.load_extension(sys.argv[1])\n"
        "print(c.execute(\"SELECT phenix_fingerprint('CCO', 2, 1024)\").fetchone()[0])\n"
        "try:\n"
        "    c.execute(\"SELECT phenix_embed_molecule('default', 'CCO', 1.0)\").fetchone()\n"
        "    print('NO ERROR')\n"
        "except sqlite3.OperationalError as e:\n"
        "    print('ERROR', e)\n"
    )
    env = dict(os.environ, ORT_DYLIB_PATH=str(tmp_path / "no-such-libonnxruntime.so"), XDG_CACHE_HOME=str(tmp_path))
    p = subprocess.run([sys.executable, "-c", script, str(ext)], capture_output=True, text=True, env=env)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.strip().splitlines()
    assert lines[0].startswith("[")  # the featurizer needs no runtime
    assert lines[1].startswith("ERROR phenix:"), p.stdout
    assert "no-such-libonnxruntime.so" in lines[1] and "ORT_DYLIB_PATH" in lines[1], lines[1]


def test_embed_molecules_runs_read_only_queries_only(ext):
    """A query that writes (DELETE/INSERT/UPDATE … RETURNING) is refused before it runs: the rows
    must still be there afterwards, even though the call fails."""
    c = connect(ext)
    c.executescript(
        """
        CREATE TABLE src(smiles TEXT, um REAL);
        INSERT INTO src VALUES ('CCO', 1.0), ('not a smiles', 1.0);
        CREATE TABLE log(x);
        """
    )
    for q in [
        "DELETE FROM src RETURNING smiles, um",
        "UPDATE src SET um = 2 RETURNING smiles, um",
        "INSERT INTO src VALUES ('CC', 3.0) RETURNING smiles, um",
    ]:
        with pytest.raises(sqlite3.OperationalError) as e:
            c.execute("SELECT * FROM phenix_embed_molecules('default', ?)", (q,)).fetchall()
        assert "must only read the database" in str(e.value), (q, str(e.value))
        assert c.execute("SELECT count(*), sum(um) FROM src").fetchone() == (2, 2.0), q
    # Reading queries still work (VALUES and a SELECT with a CTE are read-only).
    rows = c.execute(
        "SELECT id, smiles FROM phenix_embed_molecules('default', "
        "'WITH t AS (SELECT smiles, um FROM src WHERE smiles = ''CCO'') SELECT smiles, um FROM t')"
    ).fetchall()
    assert rows == [(1, "CCO")]
    assert len(c.execute("SELECT * FROM phenix_embed_molecules('default', 'VALUES (''CC'', 1.0)')").fetchall()) == 1


def test_model_load_refuses_a_fifo_manifest_without_blocking(ext, tmp_path):
    """phenix_model_load on a bundle whose manifest is a FIFO must fail at once (a fresh process
    with a timeout, so a regression fails instead of hanging the suite)."""
    bundle = tmp_path / "b"
    bundle.mkdir()
    for f in ["molecule.onnx", "phenomics.onnx"]:
        (bundle / f).symlink_to(ROOT / "models" / "default" / f)
    os.mkfifo(bundle / "phenix-model.json")
    script = (
        "import sqlite3, sys\n"
        "c = sqlite3.connect(':memory:'); c.enable_load_extension(True); c.load_extension(sys.argv[1])\n"
        "try:\n"
        "    c.execute('SELECT phenix_model_load(?, ?)', ('fifo', sys.argv[2])).fetchone()\n"
        "    print('NO ERROR')\n"
        "except sqlite3.OperationalError as e:\n"
        "    print('ERROR', e)\n"
    )
    p = subprocess.run([sys.executable, "-c", script, str(ext), str(bundle)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("ERROR phenix:") and "not a regular file" in p.stdout, p.stdout


def test_default_model_works_with_a_read_only_home_and_writes_nothing(ext, tmp_path):
    """The compiled-in model loads from memory: with HOME, TMPDIR and the working directory
    read-only and no XDG_CACHE_HOME it embeds, gives the same bytes as the bundle directory
    loaded from disk, and leaves every one of those directories empty."""
    home, tmp, cwd = tmp_path / "home", tmp_path / "tmp", tmp_path / "cwd"
    for d in (home, tmp, cwd):
        d.mkdir()
        d.chmod(0o555)
    script = (
        "import sqlite3, sys\n"
        "c = sqlite3.connect(':memory:'); c.enable_load_extension(True); c.load_extension(sys.argv[1])\n"
        "a = c.execute(\"SELECT phenix_embed_molecule('default', 'CC(=O)Oc1ccccc1C(=O)O', 10.0)\").fetchone()[0]\n"
        "c.execute('SELECT phenix_model_load(?, ?)', ('disk', sys.argv[2])).fetchone()\n"
        "b = c.execute(\"SELECT phenix_embed_molecule('disk', 'CC(=O)Oc1ccccc1C(=O)O', 10.0)\").fetchone()[0]\n"
        "print(len(a), a == b)\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("XDG_CACHE_HOME",)}
    env.update(HOME=str(home), TMPDIR=str(tmp))
    p = subprocess.run(
        [sys.executable, "-c", script, str(ext), str(ROOT / "models" / "default")],
        capture_output=True, text=True, env=env, cwd=cwd, timeout=300,
    )
    for d in (home, tmp, cwd):
        d.chmod(0o755)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["512", "True"], p.stdout
    for d in (home, tmp, cwd):
        assert list(d.rglob("*")) == [], (d, list(d.rglob("*")))
