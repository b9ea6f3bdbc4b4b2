"""Writes data/demo/profiles.csv: simulated phenomic profiles (replicate means of plate-normalised 384-d
well profiles) for a few approved drugs that the default model never saw (its scaffold-held-out test
split), each called active from its replicates, with the true molecule and dose. The demo retrieves their
(molecule, dose) from SQL. The wells are rebuilt exactly as `phenix simulate` -> `phenix import` ->
`phenix train` built the default model's dataset (tests/sql/test_science.py, shipped_dataset).
Run: .venv/bin/python tools/demo.d/make_profiles.py"""

import csv
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "sql"))
sys.path.insert(0, str(ROOT / "python"))

from test_science import shipped_dataset  # noqa: E402

from phenix.training import recipe as T  # noqa: E402

N = 8


def main():
    _, ds, prep = shipped_dataset()
    _, pairs, _, active = T.split_queries(prep, "scaffold")
    rows = list(csv.DictReader(open(ROOT / "data" / "molecules" / "approved_drugs.csv")))
    names = {r["id"]: r["name"] for r in rows}
    smiles_to_id: dict = {}
    for r in rows:  # first occurrence wins, as in the simulator's de-duplication
        smiles_to_id.setdefault(r["smiles"], r["id"])
    rng = np.random.default_rng(2026)
    chosen = []
    for p in rng.permutation(pairs[active]):
        src = smiles_to_id.get(str(ds.mol_smiles[ds.pair_mol[p]]))
        if src is None:
            continue
        # One salt form per parent drug (names share their first word).
        if any(names[c[1]].split()[0] == names[src].split()[0] for c in chosen):
            continue
        chosen.append((p, src))
        if len(chosen) == N:
            break
    out = ROOT / "data" / "demo" / "profiles.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["well", "chembl_id", "name", "um", "profile"])
        for i, (p, src) in enumerate(chosen):
            prof = T.replicate_mean(ds.profiles[p:p + 1], ds.present[p:p + 1])[0]
            w.writerow([f"W{i + 1}", src, names[src], float(ds.doses_um[ds.pair_dose[p]]),
                        json.dumps([round(float(x), 5) for x in prof])])
    print(f"wrote {out} ({len(chosen)} profiles)")


if __name__ == "__main__":
    main()
