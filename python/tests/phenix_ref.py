"""Independent float32 reference for retrieval: RDKit Morgan bits + onnxruntime on the bundle's ONNX files
with the manifest's concentration encoding and normalisation, numpy cosine ranks (ties count half)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def encode_concentration(spec: dict, um: np.ndarray) -> np.ndarray:
    k = spec["kind"]
    if k == "one_hot":
        edges = np.asarray(spec["edges_um"])
        idx = (edges[None, :] <= um[:, None]).sum(1)
        out = np.zeros((len(um), len(edges) + 1), np.float32)
        out[np.arange(len(um)), idx] = 1
        return out
    if k == "log":
        return ((np.log10(um) - spec["offset"]) / spec["scale"]).astype(np.float32)[:, None]
    raise NotImplementedError(k)


def reference_ranks(bundle: Path, smiles: list[str], um: np.ndarray, profiles: np.ndarray, ort) -> np.ndarray:
    """Rank (0 = best) of candidate i for query i, candidates = the (smiles, um) rows."""
    from rdkit import Chem
    from rdkit.Chem import rdFingerprintGenerator

    man = json.loads((Path(bundle) / "phenix-model.json").read_text())
    mol, ph = man["molecule"], man["phenomics"]
    gen = rdFingerprintGenerator.GetMorganGenerator(radius=2, fpSize=2048)
    fp = np.stack([gen.GetFingerprintAsNumPy(Chem.MolFromSmiles(s)) for s in smiles]).astype(np.float32)
    sm = ort.InferenceSession(str(Path(bundle) / mol["onnx"]), providers=["CPUExecutionProvider"])
    sp = ort.InferenceSession(str(Path(bundle) / ph["onnx"]), providers=["CPUExecutionProvider"])
    zm = sm.run([mol["output"]], {mol["input_fingerprint"]: fp,
                                  mol["input_concentration"]: encode_concentration(mol["concentration"], um)})[0]
    n = ph["normalization"]
    x = ((profiles - np.array(n["center"], np.float32)) / np.array(n["scale"], np.float32)).astype(np.float32)
    zp = sp.run([ph["output"]], {ph["input"]: x})[0]
    S = zp @ zm.T
    t = np.diag(S)[:, None]
    return (S > t).sum(1) + 0.5 * ((S == t).sum(1) - 1)
