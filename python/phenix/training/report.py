"""The training report: metrics JSON and a Markdown page with recall curves, the training curve and a
joint-space projection (PCA of scaffold-test phenomic and molecule embeddings)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

CURVE_X = [0.001, 0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2]


def curves(metrics: dict) -> dict:
    out = {}
    for sp, d in metrics.items():
        r, act, n = d.get("_ranks"), d.get("_active"), d["n_candidates"]
        if r is None:
            continue
        out[sp] = {"x": CURVE_X,
                   "all": [float(np.mean(r < math.ceil(x * n))) if len(r) else None for x in CURVE_X],
                   "active": [float(np.mean(r[act] < math.ceil(x * n))) if act.any() else None for x in CURVE_X]}
    return out


def write_report(out_dir: Path, record: dict, metrics: dict, history: list, joint: dict | None) -> Path:
    """Writes metrics.json, recall.png, training.png, joint.png and report.md into ``out_dir``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cv = curves(metrics)
    public = {sp: {k: v for k, v in d.items() if not k.startswith("_")} for sp, d in metrics.items()}
    record = dict(record, metrics=public, curves=cv, history=history)
    (out_dir / "metrics.json").write_text(json.dumps(record, indent=1) + "\n")

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, which in zip(axes, ("active", "all")):
        for sp, c in cv.items():
            y = [np.nan if v is None else v for v in c[which]]
            ax.plot(np.array(c["x"]) * 100, y, marker=".", label=sp)
        ax.plot(np.array(CURVE_X) * 100, CURVE_X, "--", color="grey", label="random")
        ax.set_xscale("log")
        ax.set_xlabel("top x % of (molecule, concentration) candidates")
        ax.set_ylabel("recall")
        ax.set_title(f"{which} queries")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / "recall.png", dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 3.6))
    if history:
        ax.plot([h["step"] for h in history], [h["loss"] for h in history], marker=".")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (batch)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_dir / "training.png", dpi=100)
    plt.close(fig)

    if joint is not None:
        zp, zm, dose = joint["phenomics"], joint["molecule"], joint["dose_index"]
        both = np.concatenate([zp, zm])
        mu = both.mean(0)
        _, _, vt = np.linalg.svd(both - mu, full_matrices=False)
        fig, axes = plt.subplots(1, 2, figsize=(11, 5), sharex=True, sharey=True)
        for ax, z, title in ((axes[0], zp, "phenomics encoder (replicate means)"),
                             (axes[1], zm, "molecule encoder (molecule at its dose)")):
            pts = (z - mu) @ vt[:2].T
            sc = ax.scatter(pts[:, 0], pts[:, 1], s=4, c=dose, cmap="viridis")
            ax.set_title(title, fontsize=10)
            ax.set_xlabel("PC1")
        axes[0].set_ylabel("PC2")
        fig.colorbar(sc, ax=axes, label="dose index")
        fig.suptitle(f"joint space, scaffold-test pairs called active (n={len(zp)}), shared PCA basis", fontsize=10)
        fig.savefig(out_dir / "joint.png", dpi=100)
        plt.close(fig)

    lines = [f"# phenix training report: {record.get('name', '')}", "",
             f"Command: `{record.get('command', '')}`", "",
             "## Data", "", "```json", json.dumps(record.get("dataset", {}), indent=1), "```", "",
             "## Retrieval (top-x % recall of the true (molecule, dose); ties count half)", "",
             "| split | queries | candidates | top-1 % actives | top-5 % actives | top-1 % all | top-5 % all |",
             "|---|---|---|---|---|---|---|"]
    for sp, d in public.items():
        lines.append(f"| {sp} | {d['n_queries']} | {d['n_candidates']} | {d['top1_active']:.3f} | "
                     f"{d['top5_active']:.3f} | {d['top1_all']:.3f} | {d['top5_all']:.3f} |")
    lines += ["| random | | | 0.010 | 0.050 | 0.010 | 0.050 |", "",
              "![recall curves](recall.png)", "", "## Training", "",
              f"{record.get('timing_seconds', {})}", "", "![training curve](training.png)", ""]
    if joint is not None:
        lines += ["## Joint space", "", "![joint space](joint.png)", ""]
    (out_dir / "report.md").write_text("\n".join(lines))
    return out_dir / "report.md"
