"""A small simulated screen written as a pycytominer / CellProfiler-style per-well CSV.

Used by the worked example of docs/analysis.md (tests/sql/test_docs.py writes it before running that
section). Columns: ``Metadata_Plate, Metadata_Well, Metadata_role ('DMSO' | 'trt'),
Metadata_broad_sample, Metadata_smiles, Metadata_dose_um``, then the simulator's 384 profile features
named ``{Cells|Nuclei|Cytoplasm}_{AreaShape|Intensity|Texture}_Fnnn`` (compartment = index mod 3),
plus two position columns (``Nuclei_Location_Center_X``, ``Cells_Location_Center_Y``) that an analysis
leaves out. The simulator's profiles are already centred on each plate's DMSO wells; to give
normalisation something to undo, every plate gets its own feature offsets and scales (as raw
CellProfiler measurements would), and values are written with 7 significant digits.

    python models/training/plate_csv.py plate.csv
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "python"))

from phenix.training.molecules import load_molecules  # noqa: E402
from phenix.training.simulator import SimConfig, simulate  # noqa: E402

COMPARTMENTS = ("Cells", "Nuclei", "Cytoplasm")
KINDS = ("AreaShape", "Intensity", "Texture")


def feature_names(d: int) -> list[str]:
    return [f"{COMPARTMENTS[i % 3]}_{KINDS[(i // 3) % 3]}_F{i:03d}" for i in range(d)]


def write_plate_csv(path: str | Path, seed: int = 0, n_molecules: int = 10) -> None:
    cfg = SimConfig(seed=seed, n_molecules=n_molecules, doses_um=(1.0, 10.0), n_controls=24,
                    wells_per_plate=96, n_null=2000)
    scr = simulate(load_molecules(), cfg)
    ms_smiles = load_molecules().smiles
    rng = np.random.default_rng(seed + 1)
    n_pair, n_rep, d = scr.profiles.shape
    n_plates = int(scr.well_plate.max()) + 1
    offset = rng.normal(0, 5, (n_plates, d)) + 50.0
    scale = rng.uniform(0.5, 3.0, (n_plates, d))
    names = feature_names(d)
    header = ["Metadata_Plate", "Metadata_Well", "Metadata_role", "Metadata_broad_sample", "Metadata_smiles",
              "Metadata_dose_um"] + names + ["Nuclei_Location_Center_X", "Cells_Location_Center_Y"]
    rows = []
    n_ctrl_per = len(scr.controls) // n_plates
    for i, x in enumerate(scr.controls):
        p = min(i // n_ctrl_per, n_plates - 1)
        rows.append((p, "DMSO", "DMSO", "", "0", x))
    for k in range(n_pair):
        mol = int(scr.pair_mol[k])
        smi = str(ms_smiles[scr.mol_index[mol]])
        dose = cfg.doses_um[int(scr.pair_dose[k])]
        for r in range(n_rep):
            rows.append((int(scr.well_plate[k, r]), "trt", f"MOL{mol:03d}", smi, f"{dose:g}", scr.profiles[k, r]))
    rows.sort(key=lambda t: t[0])
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        count = {}
        for p, role, sample, smi, dose, x in rows:
            count[p] = count.get(p, 0) + 1
            well = f"{'ABCDEFGH'[(count[p] - 1) // 12]}{(count[p] - 1) % 12 + 1:02d}"
            raw = x.astype(np.float64) * scale[p] + offset[p]
            loc = rng.uniform(0, 1000, 2)
            w.writerow([f"plate{p + 1}", well, role, sample, smi, dose] + [f"{v:.7g}" for v in raw] +
                       [f"{v:.2f}" for v in loc])


if __name__ == "__main__":
    write_plate_csv(sys.argv[1] if len(sys.argv) > 1 else "plate.csv")
