"""``phenix simulate``: the simulated screen (phenix.training.simulator) written as a user's data would be.

Wells are written *before* plate normalisation (raw "CellProfiler" features; ``phenix train``
normalises them per plate against the DMSO wells, as the simulator itself did), in pycytominer's
layout: ``Metadata_Plate``, ``Metadata_Well`` (384-well plate: DMSO in columns 01 and 24, compounds in
02-23), ``Metadata_Batch``, ``Metadata_broad_sample`` (``PHX-<molecule index>`` or ``DMSO``),
``Metadata_SMILES``, ``Metadata_mmoles_per_liter`` (the dose in mM; 0 for DMSO),
``Metadata_control_type`` (``negcon`` or ``trt``), then the features ``Cells_AreaShape_Area``, …
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Iterator

import numpy as np

from . import PhenixError

ROWS = "ABCDEFGHIJKLMNOP"
_GROUPS = [
    ("AreaShape", ["Area", "Perimeter", "FormFactor", "Eccentricity", "Solidity", "Extent", "Compactness",
                   "MajorAxisLength", "MinorAxisLength", "Orientation", "MaxFeretDiameter", "MinFeretDiameter",
                   "MeanRadius", "MedianRadius", "MaximumRadius", "EulerNumber"] +
     [f"Zernike_{n}_{m}" for n in range(0, 8) for m in range(n % 2, n + 1, 2)]),
    ("Intensity", [f"{s}_{ch}" for s in ("MeanIntensity", "MedianIntensity", "StdIntensity", "IntegratedIntensity",
                                          "MaxIntensity", "MinIntensity", "LowerQuartileIntensity",
                                          "UpperQuartileIntensity", "MADIntensity", "MeanIntensityEdge")
                   for ch in ("DNA", "ER", "RNA", "AGP", "Mito")]),
    ("Texture", [f"{s}_{ch}_3_00_256" for s in ("AngularSecondMoment", "Contrast", "Correlation", "Entropy",
                                                 "InverseDifferenceMoment", "SumAverage", "SumEntropy", "Variance")
                 for ch in ("DNA", "ER", "RNA", "AGP", "Mito")]),
    ("Granularity", [f"{k}_{ch}" for k in range(1, 6) for ch in ("DNA", "ER", "RNA", "AGP", "Mito")]),
    ("RadialDistribution", [f"{s}_{ch}_{b}of4" for s in ("FracAtD", "MeanFrac", "RadialCV")
                            for ch in ("DNA", "ER", "RNA", "AGP", "Mito") for b in range(1, 5)]),
    ("Correlation", [f"Correlation_{a}_{b}" for i, a in enumerate(("DNA", "ER", "RNA", "AGP", "Mito"))
                     for b in ("DNA", "ER", "RNA", "AGP", "Mito")[i + 1:]]),
]


def feature_names(n: int) -> list[str]:
    """``n`` distinct CellProfiler-style names, interleaving the three compartments."""
    per = [f"{g}_{m}" for g, ms in _GROUPS for m in ms]
    out = []
    for m in per:
        for comp in ("Cells", "Cytoplasm", "Nuclei"):
            out.append(f"{comp}_{m}")
    if n > len(out):
        raise PhenixError(f"at most {len(out)} simulated feature names")
    return out[:n]


def well_names() -> tuple[list[str], list[str]]:
    """(32 control wells: columns 01 and 24, 352 compound wells: columns 02-23), row-major."""
    ctrl = [f"{r}{c:02d}" for r in ROWS for c in (1, 24)]
    cmpd = [f"{r}{c:02d}" for r in ROWS for c in range(2, 24)]
    return ctrl, cmpd


def wells_frames(scr, ms, chunk_plates: int = 16) -> Iterator:
    """pandas DataFrames of raw wells, ``chunk_plates`` plates at a time, sorted by plate and well."""
    import pandas as pd

    cfg = scr.config
    if cfg.wells_per_plate != 384 or cfg.n_controls != 32:
        raise PhenixError("the pycytominer layout is written for 384-well plates with 32 controls")
    feats = feature_names(scr.profiles.shape[2])
    raw = scr.raw_profiles()
    raw_ctrl = scr.raw_controls()
    n_pair, R = scr.well_plate.shape
    n_plates = len(scr.plate_ctrl_mean)
    ctrl_w, cmpd_w = well_names()
    # compound wells of each plate, in pair order (the simulator's random layout decides the plate)
    flat_plate = scr.well_plate.reshape(-1)
    order = np.argsort(flat_plate, kind="stable")
    bounds = np.searchsorted(flat_plate[order], np.arange(n_plates + 1))
    ctrl_bounds = np.searchsorted(scr.control_plate, np.arange(n_plates + 1))
    ids = np.array([f"PHX-{i:05d}" for i in scr.mol_index])
    smiles = ms.smiles[scr.mol_index]
    doses_mm = scr.doses_um / 1000.0
    for p0 in range(0, n_plates, chunk_plates):
        frames = []
        for p in range(p0, min(p0 + chunk_plates, n_plates)):
            cells = order[bounds[p]:bounds[p + 1]]
            pair, rep = cells // R, cells % R
            nc = ctrl_bounds[p + 1] - ctrl_bounds[p]
            x = np.concatenate([raw_ctrl[ctrl_bounds[p]:ctrl_bounds[p + 1]], raw[pair, rep]])
            m = pair_mol = scr.pair_mol[pair]
            df = pd.DataFrame({
                "Metadata_Plate": f"SIM{p + 1:04d}",
                "Metadata_Well": ctrl_w[:nc] + cmpd_w[:len(pair)],
                "Metadata_Batch": f"batch{scr.plate_batch[p] + 1:02d}",
                "Metadata_broad_sample": np.concatenate([np.full(nc, "DMSO"), ids[m]]),
                "Metadata_SMILES": np.concatenate([np.full(nc, ""), smiles[pair_mol]]),
                "Metadata_mmoles_per_liter": np.concatenate([np.zeros(nc), doses_mm[scr.pair_dose[pair]]]),
                "Metadata_control_type": np.concatenate([np.full(nc, "negcon"), np.full(len(pair), "trt")]),
            })
            fdf = pd.DataFrame(x, columns=feats)
            df = pd.concat([df, fdf], axis=1).sort_values("Metadata_Well", kind="stable")
            frames.append(df)
        yield pd.concat(frames, ignore_index=True)


def write(scr, ms, out: Path, table: str = "wells", progress: bool = True) -> dict:
    """Writes the raw wells to ``out``: ``.csv`` / ``.csv.gz`` / ``.parquet`` (pycytominer layout) or
    ``.db`` / ``.sqlite`` (a wells table as ``phenix import`` writes it). Written to a temporary name
    and renamed, so an interrupted run leaves no partial file."""
    import os

    from tqdm import tqdm

    out = Path(out)
    name = out.name.lower()
    kinds = {".csv": "csv", ".csv.gz": "csv", ".parquet": "parquet", ".db": "sqlite", ".sqlite": "sqlite"}
    kind = next((k for s, k in kinds.items() if name.endswith(s)), None)
    if kind is None:
        raise PhenixError(f"{out}: unknown output type; expected .csv, .csv.gz, .parquet, .db or .sqlite")
    if out.exists():
        raise PhenixError(f"{out} exists; remove it or choose another path")
    tmp = out.with_name(out.name + ".partial")
    if tmp.exists():
        tmp.unlink()
    n_plates = len(scr.plate_ctrl_mean)
    bar = tqdm(total=n_plates, desc=f"writing {out.name}", unit="plate", disable=not progress)
    n = 0
    try:
        if kind == "csv":
            first = True
            compression = "gzip" if name.endswith(".gz") else None
            mode = "w"
            for df in wells_frames(scr, ms):
                df.to_csv(tmp, mode=mode, header=first, index=False, float_format="%.7g", compression=compression)
                first, mode = False, "a"
                n += len(df)
                bar.update(df["Metadata_Plate"].nunique())
        elif kind == "parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            writer = None
            for df in wells_frames(scr, ms):
                t = pa.Table.from_pandas(df, preserve_index=False)
                if writer is None:
                    writer = pq.ParquetWriter(tmp, t.schema)
                writer.write_table(t)
                n += len(df)
                bar.update(df["Metadata_Plate"].nunique())
            writer.close()
        else:
            from .importer import import_frames

            bar.close()
            conn = sqlite3.connect(tmp)
            try:
                n = import_frames(conn, table, wells_frames(scr, ms), source="phenix simulate",
                                  total=int(scr.present.sum() + len(scr.controls)), progress=progress)
            finally:
                conn.close()
        os.replace(tmp, out)
    except BaseException:
        if tmp.exists():
            tmp.unlink()
        raise
    finally:
        bar.close()
    return {"path": str(out), "rows": n, "plates": n_plates, "features": int(scr.profiles.shape[2]),
            "screen": scr.summary()}


def truth_json(scr) -> str:
    return json.dumps({"config": scr.config.to_dict(), "summary": scr.summary()}, indent=1)


def wells_in_memory(scr, ms):
    """The :class:`phenix.wells.Wells` that ``phenix simulate`` + ``phenix import`` would produce for this
    screen (same rows in the same order, same float32 values), without writing files: for tests and the
    demo, which must see exactly the dataset the shipped model was trained on."""
    from .wells import Wells

    frames = list(wells_frames(scr, ms))
    import pandas as pd

    df = pd.concat(frames, ignore_index=True)
    feats = feature_names(scr.profiles.shape[2])
    ctrl = (df["Metadata_broad_sample"] == "DMSO").to_numpy()
    dose = np.where(ctrl, np.nan, df["Metadata_mmoles_per_liter"].to_numpy() * 1e3)
    return Wells(np.arange(1, len(df) + 1), df["Metadata_Plate"].to_numpy().astype(str),
                 df["Metadata_Well"].to_numpy().astype(str), df["Metadata_Batch"].to_numpy().astype(str),
                 np.where(ctrl, "", df["Metadata_SMILES"].to_numpy()).astype(object),
                 np.where(ctrl, "", df["Metadata_broad_sample"].to_numpy()).astype(object), dose, ctrl,
                 np.ascontiguousarray(df[feats].to_numpy(np.float32)), feats)
