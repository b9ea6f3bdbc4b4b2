"""Python doing phenix_embed_molecules' work, the way a Python user would: RDKit Morgan fingerprints +
the bundle's concentration encoding (numpy) + onnxruntime on batches of 256, over the 2,628 approved
drugs at 10 uM with the shipped default bundle. Prints molecules/s (best of 5 runs, like criterion's
lower bound). Run: .venv/bin/python benches/python/embed_baseline.py [--threads N]"""

import argparse
import csv
import json
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from rdkit import Chem, RDLogger
from rdkit.Chem import rdFingerprintGenerator

RDLogger.DisableLog("rdApp.*")
ROOT = Path(__file__).resolve().parents[2]


def encoding(enc, c):
    k = enc["kind"]
    if k == "one_hot":
        v = np.zeros(len(enc["edges_um"]) + 1, dtype=np.float32)
        v[sum(1 for e in enc["edges_um"] if e <= c)] = 1.0
        return v
    if k == "log":
        return np.array([(np.log10(c) - enc["offset"]) / enc["scale"]], dtype=np.float32)
    if k == "sigmoid":
        m = np.array(enc["centers_log10_um"])
        return (1 / (1 + np.exp(-enc["slope"] * (np.log10(c) - m)))).astype(np.float32)
    return np.zeros(0, dtype=np.float32)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--bundle", default=str(ROOT / "models" / "default"))
    a = ap.parse_args()
    bundle = Path(a.bundle)
    m = json.loads((bundle / "phenix-model.json").read_text())
    mol = m["molecule"]
    so = ort.SessionOptions()
    so.intra_op_num_threads = a.threads
    sess = ort.InferenceSession(str(bundle / mol["onnx"]), so, providers=["CPUExecutionProvider"])
    f = mol["featurizer"]
    gen = rdFingerprintGenerator.GetMorganGenerator(radius=f["radius"], fpSize=f["n_bits"])
    smiles = [r["smiles"] for r in csv.DictReader(open(ROOT / "data" / "molecules" / "approved_drugs.csv"))]
    conc = encoding(mol["concentration"], 10.0)

    def run():
        out = []
        for i in range(0, len(smiles), 256):
            batch = smiles[i : i + 256]
            fp = np.stack([gen.GetFingerprintAsNumPy(Chem.MolFromSmiles(s)).astype(np.float32) for s in batch])
            feeds = {mol["input_fingerprint"]: fp}
            if mol.get("input_concentration"):
                feeds[mol["input_concentration"]] = np.tile(conc, (len(batch), 1))
            out.append(sess.run([mol["output"]], feeds)[0])
        return np.concatenate(out)

    run()
    times = []
    for _ in range(5):
        t = time.perf_counter()
        run()
        times.append(time.perf_counter() - t)
    best = min(times)
    print(f"python rdkit+onnxruntime, {a.threads} intra-op threads: {len(smiles)} molecules, "
          f"best {best * 1e3:.1f} ms, median {sorted(times)[2] * 1e3:.1f} ms -> {len(smiles) / best:,.0f} molecules/s")


if __name__ == "__main__":
    main()
