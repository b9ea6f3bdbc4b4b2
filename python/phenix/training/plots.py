"""Figures for docs/science.md (PNG under docs/img/).

    nice -n 10 .venv/bin/python models/training/plots.py

* ``science-recall.png``: recall@top-x % curves (scaffold split; actives and all queries) for the
  ablation configs, mean over the seeds present in ``results/ablation.json``.
* ``science-pca.png``: 2-D PCA of the joint embedding space of the shipped bundle
  (``models/default``, run through onnxruntime with the manifest's normalisation), scaffold-test
  pairs called active, coloured by the simulator's ground-truth mechanism.
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from . import model as M  # noqa: E402
from . import recipe as T  # noqa: E402
from .ablation import CONFIGS, RESULTS  # noqa: E402

ROOT = Path(__file__).resolve().parents[3]
HERE = ROOT / "models" / "training"
IMG = ROOT / "docs" / "img"
BUNDLE = ROOT / "models" / "default"


def recall_curves(steps: int = 1000):
    res = json.loads(RESULTS.read_text())
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, which in zip(axes, ("active", "all")):
        for name in CONFIGS:
            runs = [v for k, v in res.items() if k.startswith(name + "|") and
                    (name == "baseline=random" or k.endswith(f"steps={steps}"))]
            if not runs:
                continue
            x = np.array(runs[0]["curves"]["scaffold"]["x"]) * 100
            y = np.mean([r["curves"]["scaffold"][which] for r in runs], axis=0)
            style = "--" if name.startswith("baseline") else "-"
            ax.plot(x, y, style, marker=".", label=f"{name} (n={len(runs)})",
                    lw=2.5 if name == "default" else 1.2)
        ax.set_xscale("log")
        ax.set_xlabel("top x % of (molecule, concentration) candidates")
        ax.set_ylabel("recall")
        ax.set_title(f"scaffold split, {which} queries ({steps} steps)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(IMG / "science-recall.png", dpi=110)
    plt.close(fig)


def s2l_weight_stats(prep, n_batches: int = 20, batch: int = 512) -> dict:
    """How the S2L/CWCL soft weights w_ij (before thresholding) distribute over training batches,
    split by pair type (ground-truth mechanism, called activity).  Written to results/."""
    import jax.numpy as jnp

    scr = prep.screen
    rng = np.random.default_rng(0)
    acc: dict = {}
    for _ in range(n_batches):
        b = prep.train_pairs[rng.choice(len(prep.train_pairs), batch, replace=False)]
        prof = T.average_replicates(prep.profiles[b], prep.avail[b], "mean", rng)
        w = np.asarray(M.s2l_weights(jnp.asarray(prof), 0.0))
        off = ~np.eye(batch, dtype=bool)
        act = scr.active[b]
        mech = scr.mechanism[scr.pair_mol[b]]
        same = (mech[:, None] == mech[None, :]) & (mech[:, None] > 0)
        kinds = {"all": off, "active-active same mechanism": off & same & act[:, None] & act[None, :],
                 "active-active different mechanism": off & ~same & act[:, None] & act[None, :],
                 "inactive-inactive": off & ~act[:, None] & ~act[None, :]}
        for k, m in kinds.items():
            acc.setdefault(k, []).append(w[m])
    out = {}
    for k, v in acc.items():
        v = np.concatenate(v)
        out[k] = {"n": int(len(v)), "mean": float(v.mean()), "q10": float(np.quantile(v, 0.1)),
                  "q90": float(np.quantile(v, 0.9)), "frac_ge_0.6": float((v >= 0.6).mean()),
                  "frac_ge_0.5": float((v >= 0.5).mean())}
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "s2l_weights.json").write_text(json.dumps(out, indent=1))
    return out


def pca_plot():
    import onnxruntime as ort

    from .molecules import load_molecules
    from .simulator import SimConfig, simulate

    man = json.loads((BUNDLE / "phenix-model.json").read_text())
    prov = man["provenance"]
    scr = simulate(load_molecules(), SimConfig(seed=prov.get("data_seed", 0)))
    prep = T.prepare(scr, replace(T.TrainConfig(), seed=prov["seed"]))
    print("S2L weights:", json.dumps(s2l_weight_stats(prep), indent=1))
    pairs = np.flatnonzero((prep.split[scr.pair_mol] == 2) & scr.active)
    norm = man["phenomics"]["normalization"]
    prof = (scr.profiles[pairs].mean(1) - np.array(norm["center"], np.float32)) / np.array(norm["scale"], np.float32)
    sp = ort.InferenceSession(str(BUNDLE / man["phenomics"]["onnx"]), providers=["CPUExecutionProvider"])
    sm = ort.InferenceSession(str(BUNDLE / man["molecule"]["onnx"]), providers=["CPUExecutionProvider"])
    zp = sp.run(["embedding"], {"profile": prof.astype(np.float32)})[0]
    feed = {"fingerprint": prep.fp[scr.pair_mol[pairs]]}
    if man["molecule"]["input_concentration"]:
        feed["concentration"] = M.encode_concentration(man["molecule"]["concentration"],
                                                       scr.doses_um[scr.pair_dose[pairs]])
    zm = sm.run(["embedding"], feed)[0]
    both = np.concatenate([zp, zm])
    mu = both.mean(0)
    _, _, vt = np.linalg.svd(both - mu, full_matrices=False)
    pp, pm = (zp - mu) @ vt[:2].T, (zm - mu) @ vt[:2].T
    mech = scr.mechanism[scr.pair_mol[pairs]]
    top = [m for m, _ in sorted(zip(*np.unique(mech, return_counts=True)), key=lambda t: -t[1])][:10]
    fig, axes = plt.subplots(1, 2, figsize=(11, 5), sharex=True, sharey=True)
    cmap = plt.get_cmap("tab10")
    for ax, pts, title in ((axes[0], pp, "phenomics encoder (test wells, replicate mean)"),
                           (axes[1], pm, "molecule encoder (test molecule at its dose)")):
        other = ~np.isin(mech, top)
        ax.scatter(pts[other, 0], pts[other, 1], s=3, c="lightgrey", label="other mechanisms")
        for i, m in enumerate(top):
            sel = mech == m
            ax.scatter(pts[sel, 0], pts[sel, 1], s=5, color=cmap(i), label=f"mechanism {m}" + (" (null)" if m == 0
                                                                                              else ""))
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("PC1")
    axes[0].set_ylabel("PC2")
    axes[1].legend(fontsize=7, markerscale=3)
    fig.suptitle(f"joint space of models/default, scaffold-test pairs called active (n={len(pairs)}), "
                 "shared PCA basis", fontsize=10)
    fig.tight_layout()
    fig.savefig(IMG / "science-pca.png", dpi=110)
    plt.close(fig)


def main():
    IMG.mkdir(parents=True, exist_ok=True)
    pca_plot()
    if RESULTS.exists():
        recall_curves(int(sys.argv[1]) if len(sys.argv) > 1 else 1000)
    print("wrote", sorted(p.name for p in IMG.glob("science-*.png")))


if __name__ == "__main__":
    main()
