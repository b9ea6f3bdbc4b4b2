"""Writes data/demo/profiles.csv: simulated phenomic profiles (replicate means of 384-d well profiles)
for a few approved drugs that the default model never saw (its scaffold-held-out test split), each
called active from its replicates, with the true molecule and dose. The demo retrieves their
(molecule, dose) from SQL. Deterministic: simulator data seed and split seed from the default bundle's
manifest. Run: .venv/bin/python tools/demo.d/make_profiles.py"""

import csv
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "models" / "training"))

import train as T  # noqa: E402
from molecules import load_molecules  # noqa: E402
from simulator import SimConfig, simulate  # noqa: E402

N = 8


def main():
    prov = json.loads((ROOT / "models" / "default" / "phenix-model.json").read_text())["provenance"]
    ms = load_molecules()
    scr = simulate(ms, SimConfig(seed=prov["data_seed"]))
    prep = T.prepare(scr, T.TrainConfig(seed=prov["seed"]))
    _, pairs, _, active = T.split_queries(prep, "scaffold")
    names = {r["id"]: r["name"] for r in csv.DictReader(open(ROOT / "data" / "molecules" / "approved_drugs.csv"))}
    rng = np.random.default_rng(2026)
    chosen = []
    for p in rng.permutation(pairs[active]):
        mid = str(ms.ids[scr.mol_index[scr.pair_mol[p]]])
        stem, _, src = mid.partition(":")
        if stem != "approved_drugs" or src not in names:
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
            prof = scr.profiles[p].mean(0)
            w.writerow([f"W{i + 1}", src, names[src], float(scr.doses_um[scr.pair_dose[p]]),
                        json.dumps([round(float(x), 5) for x in prof])])
    print(f"wrote {out} ({len(chosen)} profiles)")


if __name__ == "__main__":
    main()
