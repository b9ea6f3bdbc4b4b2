"""Ablation (one factor at a time around the default) + baselines, 3 seeds, resumable.

    nice -n 10 .venv/bin/python models/training/ablation.py            # run what is missing
    nice -n 10 .venv/bin/python models/training/ablation.py --report   # table only

(``models/training/ablation.py`` is a shim for ``python -m phenix.training.ablation``.) The ablation runs
on the in-memory simulated screen (the recipe's ``Screen`` path), like the numbers in docs/science.md.

Every finished (config, seed) is stored immediately in ``models/training/results/ablation.json``
(keyed by config name, seed and the step count), so an interrupted run resumes where it stopped.
Runs are ordered seed-major (all configs for seed 0, then seed 1, ...).  Every run uses the full
simulated screen (data seed 0) and ``--steps`` training steps (default 1000; the shipped model uses
3000), and the seed drives the split, the initialisation and the batches.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np  # noqa: E402

from . import recipe as T  # noqa: E402

RESULTS = Path(__file__).resolve().parents[3] / "models" / "training" / "results" / "ablation.json"
CURVE_X = [0.001, 0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2]
DEFAULT = T.TrainConfig()

# name -> overrides of the default TrainConfig
CONFIGS = {
    "default": {},
    "loss=siglip": {"loss": "siglip"},
    "loss=cwcl": {"loss": "cwcl"},
    "loss=s2l": {"loss": "s2l"},
    "loss=s2l,tau=0.5": {"loss": "s2l", "tau": 0.5},
    "conc=log": {"concentration": "log"},
    "conc=sigmoid": {"concentration": "sigmoid"},
    "conc=implicit": {"concentration": "implicit"},
    "avg=none": {"averaging": "none"},
    "avg=mean": {"averaging": "mean"},
    "baseline=cloome": {"loss": "infonce", "concentration": "none", "averaging": "none"},
    "baseline=random": {"steps": 0},
}
SPLITS = ("scaffold", "unseen_replicates")


def run_one(prep_cache: dict, screen, name: str, seed: int, steps: int) -> dict:
    over = dict(CONFIGS[name])
    cfg = replace(DEFAULT, seed=seed, steps=over.pop("steps", steps), **over)
    if seed not in prep_cache:
        prep_cache.clear()
        prep_cache[seed] = T.prepare(screen, replace(DEFAULT, seed=seed))
    prep = prep_cache[seed]
    params, spec, info = T.train(prep, cfg, progress=True)
    t = time.time()
    m = T.evaluate(params, prep, spec, splits=SPLITS, keep_ranks=True)
    out = {"config": asdict(cfg), "train_seconds": info["train_seconds"], "eval_seconds": time.time() - t,
           "metrics": {}, "curves": {}}
    for sp, d in m.items():
        r, act, n = d.pop("_ranks"), d.pop("_active"), d["n_candidates"]
        out["metrics"][sp] = d
        out["curves"][sp] = {"x": CURVE_X, "all": [T.recall_at(r, n, x) for x in CURVE_X],
                             "active": [T.recall_at(r[act], n, x) for x in CURVE_X]}
    return out


def load() -> dict:
    return json.loads(RESULTS.read_text()) if RESULTS.exists() else {}


def save(res: dict):
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    tmp = RESULTS.with_suffix(".tmp")
    tmp.write_text(json.dumps(res, indent=1))
    os.replace(tmp, RESULTS)


def key(name, seed, steps):
    return f"{name}|seed={seed}|steps={0 if name == 'baseline=random' else steps}"


def report(res: dict, steps: int) -> str:
    cols = [(sp, m) for sp in SPLITS for m in ("top1_active", "top5_active", "top1_all", "top5_all")]
    lines = ["| config | seeds | " + " | ".join(f"{sp} {m}" for sp, m in cols) + " |",
             "|---" * (len(cols) + 2) + "|"]
    for name in CONFIGS:
        runs = [v for s in range(10) if (v := res.get(key(name, s, steps)))]
        if not runs:
            continue
        cells = []
        for sp, m in cols:
            v = np.array([r["metrics"][sp][m] for r in runs])
            cells.append(f"{v.mean():.3f} ± {v.std(ddof=1):.3f}" if len(v) > 1 else f"{v[0]:.3f}")
        lines.append(f"| {name} | {len(runs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS))
    ap.add_argument("--report", action="store_true")
    a = ap.parse_args()
    res = load()
    if not a.report:
        from .molecules import load_molecules
        from .simulator import SimConfig, simulate

        screen = None
        prep_cache: dict = {}
        for seed in a.seeds:
            for name in a.configs:
                k = key(name, seed, a.steps)
                if k in res:
                    continue
                if screen is None:
                    screen = simulate(load_molecules(), SimConfig(seed=0))
                t = time.time()
                res[k] = run_one(prep_cache, screen, name, seed, a.steps)
                save(res)
                sc = res[k]["metrics"]["scaffold"]
                print(f"{k}: scaffold top1 active {sc['top1_active']:.3f} all {sc['top1_all']:.3f} "
                      f"({time.time() - t:.0f}s)", flush=True)
    print(report(res, a.steps))


if __name__ == "__main__":
    main()
