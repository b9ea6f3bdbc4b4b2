#!/usr/bin/env python3
"""Make small phenix model bundles with random weights, and the outputs Python's onnxruntime
gives on fixed inputs, for the phenix-models tests.

Each bundle directory gets phenix-model.json, molecule.onnx, phenomics.onnx and cases.json.
The models are MLPs (MatMul + Add, Relu, MatMul + Add, then LpNormalization(p=2) unless
--no-l2), ONNX opset 17, IR version 9, float32, dynamic batch axis "batch".

cases.json holds inputs and the expected outputs, computed independently of phenix:
  {"molecules": [[smiles, conc_um], ...], "molecule_embeddings": [[...dim floats], ...],
   "profiles": [[...input_dim raw floats], ...], "phenomics_embeddings": [[...], ...]}
Fingerprints come from RDKit (GetMorganGenerator), concentration features and normalization
from numpy (float64, rounded to float32 once), embeddings from onnxruntime.InferenceSession.

Usage:
  make_test_bundle.py --suite DIR     the bundles models/tests/runtime.rs uses, one per subdirectory
  make_test_bundle.py --bench DIR     one bundle: 2048 bits + log concentration -> 1024 -> 256
"""
import argparse
import csv
import json
import os
import sys

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from rdkit import Chem, RDLogger
from rdkit.Chem import rdFingerprintGenerator

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OPSET = 17
IR_VERSION = 9


def mlp(path, inputs, hidden, out_dim, rng, *, input_names, output="embedding", l2=True,
        batch="batch", input_type=TensorProto.FLOAT, extra_input=None):
    """Write an MLP: concat(inputs) -> hidden (Relu) -> out_dim [-> L2 normalise].

    inputs: list of (name, width). batch: "batch" (dynamic) or an int (fixed)."""
    width = sum(w for _, w in inputs)
    w1 = (rng.standard_normal((width, hidden)) / np.sqrt(width)).astype(np.float32)
    b1 = (0.1 * rng.standard_normal(hidden)).astype(np.float32)
    w2 = (rng.standard_normal((hidden, out_dim)) / np.sqrt(hidden)).astype(np.float32)
    b2 = (0.1 * rng.standard_normal(out_dim)).astype(np.float32)
    nodes = []
    names = [n for n, _ in inputs]
    if input_type != TensorProto.FLOAT:
        nodes += [helper.make_node("Cast", [n], [n + "_f"], to=TensorProto.FLOAT) for n in names]
        names = [n + "_f" for n in names]
    if len(names) > 1:
        nodes.append(helper.make_node("Concat", names, ["x"], axis=1))
        x = "x"
    else:
        x = names[0]
    nodes += [
        helper.make_node("MatMul", [x, "w1"], ["h0"]),
        helper.make_node("Add", ["h0", "b1"], ["h1"]),
        helper.make_node("Relu", ["h1"], ["h"]),
        helper.make_node("MatMul", ["h", "w2"], ["y0"]),
        helper.make_node("Add", ["y0", "b2"], ["y" if l2 else output]),
    ]
    if l2:
        nodes.append(helper.make_node("LpNormalization", ["y"], [output], axis=1, p=2))
    graph_inputs = [helper.make_tensor_value_info(n, input_type, [batch, w]) for n, w in inputs]
    if extra_input:
        graph_inputs.append(helper.make_tensor_value_info(extra_input, TensorProto.FLOAT, [batch, 1]))
    graph = helper.make_graph(
        nodes,
        "phenix_test_mlp",
        graph_inputs,
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, [batch, out_dim])],
        initializer=[numpy_helper.from_array(a, n) for a, n in [(w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2")]],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="phenix-tests")
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    onnx.save(model, path)


def encode_concentration(enc, c):
    kind = enc["kind"]
    if kind in ("none", "implicit"):
        return np.zeros(0)
    if kind == "one_hot":
        edges = enc["edges_um"]
        v = np.zeros(len(edges) + 1)
        v[sum(1 for e in edges if e <= c)] = 1.0
        return v
    if kind == "log":
        return np.array([(np.log10(c) - enc["offset"]) / enc["scale"]])
    if kind == "sigmoid":
        m = np.array(enc["centers_log10_um"], dtype=np.float64)
        return 1.0 / (1.0 + np.exp(-enc["slope"] * (np.log10(c) - m)))
    raise ValueError(kind)


def fingerprint(smiles, feat):
    mol = Chem.MolFromSmiles(smiles)
    gen = rdFingerprintGenerator.GetMorganGenerator(
        radius=feat["radius"], fpSize=feat["n_bits"], includeChirality=feat["chirality"])
    if feat["counts"]:
        return gen.GetCountFingerprintAsNumPy(mol).astype(np.float32)
    return gen.GetFingerprintAsNumPy(mol).astype(np.float32)


def test_molecules(n, rng):
    with open(os.path.join(ROOT, "data", "molecules", "approved_drugs.csv"), newline="", encoding="utf-8") as f:
        smiles = [r["smiles"] for r in csv.DictReader(f)]
    picks = rng.choice(len(smiles), size=n, replace=False)
    return [(smiles[i], float(10 ** rng.uniform(-3, 2))) for i in picks]


def make_bundle(out, *, name, rng, n_bits=2048, radius=2, counts=False, chirality=False,
                concentration=None, dim=32, hidden=64, input_dim=48, normalization="standardize",
                distance="cosine", l2=True, fixed_batch=None, extra_input=None, input_type=TensorProto.FLOAT,
                n_cases=24):
    os.makedirs(out, exist_ok=True)
    concentration = concentration or {"kind": "log", "offset": 0.0, "scale": 1.0}
    n_conc = len(encode_concentration(concentration, 1.0))
    feat = {"kind": "morgan", "radius": radius, "n_bits": n_bits, "counts": counts, "chirality": chirality}
    batch = fixed_batch if fixed_batch is not None else "batch"
    mol_inputs = [("fingerprint", n_bits)] + ([("concentration", n_conc)] if n_conc else [])
    mlp(os.path.join(out, "molecule.onnx"), mol_inputs, hidden, dim, rng, input_names=None, l2=l2,
        batch=batch, input_type=input_type, extra_input=extra_input)
    mlp(os.path.join(out, "phenomics.onnx"), [("profile", input_dim)], hidden, dim, rng,
        input_names=None, l2=l2)
    if normalization == "standardize":
        center = rng.standard_normal(input_dim).astype(np.float32)
        scale = (0.5 + rng.random(input_dim)).astype(np.float32)
        norm = {"kind": "standardize", "center": center.tolist(), "scale": scale.tolist()}
    else:
        norm = {"kind": "none"}
    manifest = {
        "format_version": 1,
        "name": name,
        "version": "0.0.1-test",
        "embedding": {"dim": dim, "distance": distance},
        "molecule": {
            "onnx": "molecule.onnx",
            "featurizer": feat,
            "concentration": concentration,
            "input_fingerprint": "fingerprint",
            "input_concentration": "concentration" if n_conc else None,
            "output": "embedding",
        },
        "phenomics": {
            "onnx": "phenomics.onnx",
            "input_dim": input_dim,
            "normalization": norm,
            "input": "profile",
            "output": "embedding",
        },
        "provenance": {
            "training_data": "none: random weights for tests",
            "loss": "none",
            "command": "tests/models/make_test_bundle.py " + " ".join(sys.argv[1:]),
            "seed": 0,
            "split": "none",
            "metrics": {},
        },
    }
    with open(os.path.join(out, "phenix-model.json"), "w") as f:
        json.dump(manifest, f, indent=2)

    # Expected outputs, independent of phenix.
    if fixed_batch is not None or extra_input or input_type != TensorProto.FLOAT:
        return  # broken on purpose: phenix must refuse to load it
    mols = test_molecules(n_cases, rng)
    fps = np.stack([fingerprint(s, feat) for s, _ in mols])
    sess = ort.InferenceSession(os.path.join(out, "molecule.onnx"), providers=["CPUExecutionProvider"])
    feeds = {"fingerprint": fps}
    if n_conc:
        feeds["concentration"] = np.stack([encode_concentration(concentration, c) for _, c in mols]).astype(np.float32)
    mol_emb = sess.run(["embedding"], feeds)[0]
    profiles = (rng.standard_normal((9, input_dim)) * 2.0).astype(np.float32)
    x = profiles.astype(np.float64)
    if norm["kind"] == "standardize":
        x = (profiles - np.array(norm["center"], dtype=np.float32)) / np.array(norm["scale"], dtype=np.float32)
    sess = ort.InferenceSession(os.path.join(out, "phenomics.onnx"), providers=["CPUExecutionProvider"])
    phen_emb = sess.run(["embedding"], {"profile": x.astype(np.float32)})[0]
    cases = {
        "molecules": [[s, c] for s, c in mols],
        "molecule_embeddings": mol_emb.tolist(),
        "profiles": profiles.tolist(),
        "phenomics_embeddings": phen_emb.tolist(),
    }
    with open(os.path.join(out, "cases.json"), "w") as f:
        json.dump(cases, f)


def suite(out):
    rng = np.random.default_rng(20261126)
    b = lambda name, **kw: make_bundle(os.path.join(out, name), name=name, rng=rng, **kw)
    b("log")
    b("none", n_bits=1024, radius=1, concentration={"kind": "none"}, normalization="none", distance="dot")
    b("implicit", n_bits=1024, radius=3, chirality=True, concentration={"kind": "implicit"}, distance="l2")
    b("one_hot", n_bits=512, concentration={"kind": "one_hot", "edges_um": [0.01, 0.1, 1.0, 10.0]})
    b("sigmoid", counts=True, concentration={"kind": "sigmoid", "centers_log10_um": [-2.0, -1.0, 0.0, 1.0], "slope": 2.5})
    # Broken on purpose.
    b("unnormalized", l2=False)
    b("unnormalized_dot", l2=False, distance="dot")
    b("fixed_batch", fixed_batch=4)
    b("extra_input", concentration={"kind": "none"}, extra_input="dose")
    b("int_input", input_type=TensorProto.INT64)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--suite", metavar="DIR")
    g.add_argument("--bench", metavar="DIR")
    args = ap.parse_args()
    RDLogger.DisableLog("rdApp.*")
    if args.suite:
        suite(args.suite)
    else:
        make_bundle(args.bench, name="bench", rng=np.random.default_rng(1), n_bits=2048, hidden=1024, dim=256,
                    input_dim=1024, n_cases=8)


if __name__ == "__main__":
    main()
