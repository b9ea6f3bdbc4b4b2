"""Write a phenix model bundle: two ONNX encoders built with ``onnx.helper`` + phenix-model.json.

Graph of each tower (opset 17, IR version 9, batch dimension symbolic "batch")::

    [Concat(fingerprint, concentration)] -> MatMul W1 -> Add b1 -> Relu -> MatMul W2 -> Add b2
        -> x / max(sqrt(ReduceSum(x*x, axis 1)), 1e-12)            (output "embedding")

which is exactly ``model.mlp`` without dropout.  The profile normalisation (x - center) / scale is
*not* in the graph; the runtime applies it from the manifest.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from . import model as M

OPSET = 17
IR_VERSION = 9


def _mlp_graph(name: str, p: dict, inputs: list[tuple[str, int]], output: str) -> onnx.ModelProto:
    nodes, inits = [], []
    vi = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", d]) for n, d in inputs]
    x = inputs[0][0]
    if len(inputs) > 1:
        nodes.append(helper.make_node("Concat", [n for n, _ in inputs], ["x_in"], axis=1))
        x = "x_in"
    for i, layer in enumerate(("l1", "l2")):
        w = np.asarray(p[layer]["w"], np.float32)
        b = np.asarray(p[layer]["b"], np.float32)
        inits += [numpy_helper.from_array(w, f"{layer}_w"), numpy_helper.from_array(b, f"{layer}_b")]
        nodes.append(helper.make_node("MatMul", [x, f"{layer}_w"], [f"{layer}_mm"]))
        nodes.append(helper.make_node("Add", [f"{layer}_mm", f"{layer}_b"], [f"{layer}_out"]))
        x = f"{layer}_out"
        if i == 0:
            nodes.append(helper.make_node("Relu", [x], ["h"]))
            x = "h"
    inits += [numpy_helper.from_array(np.array([1], np.int64), "axis1"),
              numpy_helper.from_array(np.array(M.L2_EPS, np.float32), "eps")]
    nodes += [
        helper.make_node("Mul", [x, x], ["sq"]),
        helper.make_node("ReduceSum", ["sq", "axis1"], ["sumsq"], keepdims=1),
        helper.make_node("Sqrt", ["sumsq"], ["norm"]),
        helper.make_node("Max", ["norm", "eps"], ["norm_c"]),
        helper.make_node("Div", [x, "norm_c"], [output]),
    ]
    dim = int(np.asarray(p["l2"]["w"]).shape[1])
    out = helper.make_tensor_value_info(output, TensorProto.FLOAT, ["batch", dim])
    graph = helper.make_graph(nodes, name, vi, [out], initializer=inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="phenix-training")
    m.ir_version = IR_VERSION
    onnx.checker.check_model(m)
    return m


def build_models(params, n_fp: int, n_conc: int, profile_dim: int):
    mol_inputs = [("fingerprint", n_fp)] + ([("concentration", n_conc)] if n_conc else [])
    mol = _mlp_graph("phenix_molecule", params["mol"], mol_inputs, "embedding")
    phen = _mlp_graph("phenix_phenomics", params["phen"], [("profile", profile_dim)], "embedding")
    return mol, phen


def verify(mol_path: Path, phen_path: Path, params, spec: dict, fp: np.ndarray, conc_um: np.ndarray,
           prof: np.ndarray) -> dict:
    """Max |ONNX - JAX| on the given inputs (onnxruntime CPU, 2 threads)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    so.inter_op_num_threads = 1
    feats = M.encode_concentration(spec, conc_um)
    sm = ort.InferenceSession(str(mol_path), so, providers=["CPUExecutionProvider"])
    feed = {"fingerprint": fp.astype(np.float32)}
    if feats.shape[1]:
        feed["concentration"] = feats
    om = sm.run(["embedding"], feed)[0]
    jm = np.asarray(M.molecule_embed(params, fp.astype(np.float32), feats))
    sp = ort.InferenceSession(str(phen_path), so, providers=["CPUExecutionProvider"])
    op = sp.run(["embedding"], {"profile": prof.astype(np.float32)})[0]
    jp = np.asarray(M.phenomics_embed(params, prof.astype(np.float32)))
    return {"molecule": float(np.abs(om - jm).max()), "phenomics": float(np.abs(op - jp).max())}


def export_bundle(params, prep, spec: dict, cfg, out_dir: Path, command: str, metrics: dict, training_data: str,
                  provenance: dict | None = None, features: list[str] | None = None,
                  plate_normalization: dict | None = None, name: str = "default", version: str = "0.1.0") -> dict:
    """Writes ``molecule.onnx``, ``phenomics.onnx`` and ``phenix-model.json`` into ``out_dir``.

    ``features`` (the profile's feature names, in order) and ``plate_normalization`` (how wells were
    normalised per plate before training) go into the manifest's ``phenomics`` object, so the bundle
    knows its inputs. Returns the max |ONNX - JAX| per encoder on scaffold-test inputs.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    n_conc = M.n_concentration_features(spec)
    D = prep.profiles.shape[2]
    if features is not None and len(features) != D:
        raise ValueError(f"{len(features)} feature names for {D}-dimensional profiles")
    mol, phen = build_models(params, prep.fp.shape[1], n_conc, D)
    onnx.save(mol, out_dir / "molecule.onnx")
    onnx.save(phen, out_dir / "phenomics.onnx")

    # verification inputs: scaffold-test molecules at tested and off-grid concentrations, test profiles
    rng = np.random.default_rng(12345)
    test_mols = np.flatnonzero(prep.split == 2)
    if len(test_mols) == 0:
        test_mols = np.arange(len(prep.split))
    pick = rng.choice(test_mols, min(256, len(test_mols)), replace=False)
    conc = 10 ** rng.uniform(-2, 2, len(pick))
    test_pairs = np.flatnonzero(np.isin(prep.screen.pair_mol, test_mols) & prep.screen.present[:, 0])
    prof = prep.profiles[rng.choice(test_pairs, min(256, len(test_pairs)), replace=False), 0]
    diffs = verify(out_dir / "molecule.onnx", out_dir / "phenomics.onnx", params, spec, prep.fp[pick], conc, prof)

    public_metrics = {sp: {k: v for k, v in d.items() if not k.startswith("_")} for sp, d in metrics.items()}
    manifest = {
        "format_version": 1,
        "name": name,
        "version": version,
        "embedding": {"dim": int(np.asarray(params["mol"]["l2"]["w"]).shape[1]), "distance": "cosine"},
        "molecule": {
            "onnx": "molecule.onnx",
            "featurizer": {"kind": "morgan", "radius": 2, "n_bits": int(prep.fp.shape[1]), "counts": False,
                           "chirality": False},
            "concentration": spec,
            "input_fingerprint": "fingerprint",
            "input_concentration": "concentration" if n_conc else None,
            "output": "embedding",
        },
        "phenomics": {
            "onnx": "phenomics.onnx",
            "input_dim": int(D),
            "normalization": {"kind": "standardize", "center": [float(v) for v in prep.center],
                              "scale": [float(v) for v in prep.scale]},
            "input": "profile",
            "output": "embedding",
        },
        "provenance": {
            "training_data": training_data,
            "loss": cfg.loss,
            "command": command,
            "seed": cfg.seed,
            "split": (f"scaffold split (Murcko), seed {cfg.seed}: test {cfg.test_frac:.0%} / validation "
                      f"{cfg.val_frac:.0%} of molecules; unseen-replicates: last replicate of "
                      f"{cfg.heldout_rep_frac:.0%} of training molecules withheld"),
            "concentration_encoding": cfg.concentration,
            "averaging": cfg.averaging,
            "steps": cfg.steps,
            "batch": cfg.batch,
            "train_config": asdict(cfg),
            **(provenance or {}),
            "metrics": public_metrics,
            "onnx_max_abs_diff_vs_jax": diffs,
        },
    }
    if features is not None:
        manifest["phenomics"]["features"] = list(features)
    if plate_normalization is not None:
        manifest["phenomics"]["plate_normalization"] = plate_normalization
    (out_dir / "phenix-model.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return diffs
