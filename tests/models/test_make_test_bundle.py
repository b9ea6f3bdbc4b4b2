"""The test-bundle helper makes what models/tests/runtime.rs assumes: valid ONNX (opset 17,
IR 9), dynamic batch, unit-norm outputs where promised, cases.json consistent with the manifest.

Run: .venv/bin/python -m pytest tests/models
"""
import json
import os
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort

HERE = os.path.dirname(os.path.abspath(__file__))


def test_suite(tmp_path):
    subprocess.run([sys.executable, os.path.join(HERE, "make_test_bundle.py"), "--suite", str(tmp_path)], check=True)
    good = ["log", "none", "implicit", "one_hot", "sigmoid"]
    for name in good + ["unnormalized", "fixed_batch", "extra_input", "int_input"]:
        d = tmp_path / name
        manifest = json.loads((d / "phenix-model.json").read_text())
        assert manifest["format_version"] == 1
        for f in ("molecule.onnx", "phenomics.onnx"):
            m = onnx.load(str(d / f))
            onnx.checker.check_model(m)
            assert m.ir_version == 9 and m.opset_import[0].version == 17
        if name not in good:
            continue
        cases = json.loads((d / "cases.json").read_text())
        dim = manifest["embedding"]["dim"]
        mol = np.array(cases["molecule_embeddings"])
        phen = np.array(cases["phenomics_embeddings"])
        assert mol.shape == (len(cases["molecules"]), dim)
        assert phen.shape == (len(cases["profiles"]), dim)
        np.testing.assert_allclose(np.linalg.norm(mol, axis=1), 1.0, atol=1e-5)
        np.testing.assert_allclose(np.linalg.norm(phen, axis=1), 1.0, atol=1e-5)
        # Dynamic batch axis: a batch of 1 runs too.
        s = ort.InferenceSession(str(d / "phenomics.onnx"), providers=["CPUExecutionProvider"])
        assert s.run(None, {"profile": np.zeros((1, manifest["phenomics"]["input_dim"]), np.float32)})[0].shape == (1, dim)


def test_rdkit_fingerprints_small(tmp_path):
    out = tmp_path / "fp.tsv"
    subprocess.run([sys.executable, os.path.join(HERE, "rdkit_fingerprints.py"), "--out", str(out),
                    "--files", "morgan_reference.csv"], check=True)
    rows = [l.split("\t") for l in out.read_text().splitlines()]
    assert len(rows) == 300 * 8
    # The radius-2 / 2048-bit rows reproduce the committed reference file.
    ref = [l.rsplit(",", 3) for l in open(os.path.join(HERE, "..", "..", "data", "molecules", "morgan_reference.csv")).read().splitlines()[1:]]
    mine = [r for r in rows if r[3:7] == ["2", "2048", "0", "0"]]
    assert [(r[2], r[7]) for r in mine] == [(s, bits) for s, _, _, bits in ref]
