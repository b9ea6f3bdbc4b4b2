"""The MolPhenix training recipe: splits, replicate averaging, training loop, evaluation.

One implementation for every data source: ``phenix train`` builds a :class:`Dataset` from a wells table
(``phenix.wells``), the tests and the ablation build one from the in-memory simulator
(``Screen`` has the same attributes). Used by ``phenix train`` (see docs/cli.md); the science,
parameters and measured numbers are in docs/science.md.

Splits (from one ``seed``):

* ``scaffold``: Murcko-scaffold groups are shuffled and assigned to test (10 % of molecules),
  validation (10 %) and train (rest); acyclic molecules (empty scaffold) always train.
* ``unseen_replicates``: 10 % of the *training* molecules lose their last replicate (all doses)
  from training; those single wells are the queries.

Evaluation: for every query profile, rank every (molecule, concentration) candidate of its split
by cosine similarity; top-x % recall = fraction of queries whose true pair ranks within the first
ceil(x/100 * n_candidates) (ties count half).  Reported on all queries and on the queries whose pair
was called active from replicates.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "2")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from tqdm import tqdm  # noqa: E402

from . import model as M  # noqa: E402
from .split import scaffold_split  # noqa: E402,F401  (re-exported)
from .recipe_config import TrainConfig  # noqa: E402,F401  (re-exported)

TOP_X = (0.01, 0.05)


# ---------------------------------------------------------------- data preparation

@dataclass
class Prepared:
    screen: Any  # a Dataset or a simulator Screen (same attributes)
    split: np.ndarray  # per molecule: 0 train, 1 val, 2 test
    rep_holdout_mol: np.ndarray  # bool per molecule: last replicate withheld from training
    avail: np.ndarray  # bool [n_pair, n_rep] wells usable for training
    train_pairs: np.ndarray
    center: np.ndarray
    scale: np.ndarray
    profiles: np.ndarray  # standardised [n_pair, n_rep, D]
    fp: np.ndarray  # float32 [n_mol, n_bits]


def prepare(screen: Any, cfg: TrainConfig) -> Prepared:
    n_mol = len(screen.scaffolds)
    split = scaffold_split(screen.scaffolds, cfg.seed, cfg.test_frac, cfg.val_frac)
    rng = np.random.default_rng(cfg.seed + 104729)
    train_mols = np.flatnonzero(split == 0)
    hold = np.zeros(n_mol, bool)
    hold[rng.choice(train_mols, int(cfg.heldout_rep_frac * len(train_mols)), replace=False)] = True
    present = screen.present
    avail = present.copy()
    # the last present replicate of every pair of a held-out molecule (replicates are left-packed)
    last = present.sum(1) - 1
    rows = np.flatnonzero(hold[screen.pair_mol] & (last >= 0))
    avail[rows, last[rows]] = False
    train_pairs = np.flatnonzero((split[screen.pair_mol] == 0) & avail.any(1))
    w = screen.profiles[train_pairs][avail[train_pairs]]
    center = w.mean(0).astype(np.float32)
    scale = (w.std(0) + 1e-6).astype(np.float32)
    profiles = ((screen.profiles - center) / scale).astype(np.float32)
    return Prepared(screen, split, hold, avail, train_pairs, center, scale, profiles,
                    screen.fingerprints.astype(np.float32))


def average_replicates(prof, avail, mode: str, rng) -> np.ndarray:
    """prof [B, R, D], avail [B, R] -> [B, D] according to the averaging mode."""
    B, R, _ = prof.shape
    if mode == "mean":
        m = avail
    else:
        if mode == "random_subset":
            m = avail & (rng.random((B, R)) < 0.5)
        elif mode == "none":
            m = np.zeros((B, R), bool)
        else:
            raise ValueError(mode)
        # guarantee one available replicate per row
        pick = np.argmax(avail * rng.random((B, R)), axis=1)
        m[np.arange(B), pick] = True
    m = m.astype(np.float32)
    return (prof * m[:, :, None]).sum(1) / m.sum(1, keepdims=True)


# ---------------------------------------------------------------- training

def train(prep: Prepared, cfg: TrainConfig, progress: bool = True, log_every: int = 250):
    """Trains both towers; returns (params, concentration spec, {"train_seconds", "history"})."""
    scr = prep.screen
    spec = M.concentration_spec(cfg.concentration, scr.doses_um)
    dose_feats = M.encode_concentration(spec, scr.doses_um)
    key = jax.random.PRNGKey(cfg.seed)
    key, k0 = jax.random.split(key)
    params = M.init_params(k0, prep.fp.shape[1], dose_feats.shape[1], prep.profiles.shape[2], cfg.hidden, cfg.dim,
                           cfg.loss)
    sched = optax.warmup_cosine_decay_schedule(0.0, cfg.lr, cfg.warmup, max(cfg.steps, cfg.warmup + 1), cfg.lr * 0.02)
    opt = optax.adamw(sched, weight_decay=cfg.weight_decay)
    opt_state = opt.init(params)

    def loss_fn(p, fp, cf, prof, prof_w, pos, k):
        k1, k2 = jax.random.split(k)
        zm = M.molecule_embed(p, fp, cf, k1, cfg.dropout)
        zp = M.phenomics_embed(p, prof, k2, cfg.dropout)
        return M.contrastive_loss(cfg.loss, p, zm, zp, pos, prof_w, cfg.tau)

    @jax.jit
    def step(p, s, fp, cf, prof, prof_w, pos, k):
        val, g = jax.value_and_grad(loss_fn)(p, fp, cf, prof, prof_w, pos, k)
        upd, s = opt.update(g, s, p)
        return optax.apply_updates(p, upd), s, val

    rng = np.random.default_rng(cfg.seed + 1)
    tp = prep.train_pairs
    history = []
    t0 = time.time()
    it = tqdm(range(cfg.steps), desc=f"{cfg.loss}/{cfg.concentration}/{cfg.averaging} s{cfg.seed}",
              disable=not progress, mininterval=2.0)
    run = 0.0
    for i in it:
        b = tp[rng.choice(len(tp), min(cfg.batch, len(tp)), replace=False)]
        mol = scr.pair_mol[b]
        prof = average_replicates(prep.profiles[b], prep.avail[b], cfg.averaging, rng)
        # S2L / CWCL soft targets use the pair's mean over all its training replicates (the
        # denoised phenotype), independent of the averaging mode of the input
        prof_w = average_replicates(prep.profiles[b], prep.avail[b], "mean", rng) if cfg.loss in ("s2l", "cwcl") \
            else prof
        cls = mol if cfg.concentration == "none" else b
        pos = (cls[:, None] == cls[None, :]).astype(np.float32)
        key, k = jax.random.split(key)
        params, opt_state, val = step(params, opt_state, prep.fp[mol], dose_feats[scr.pair_dose[b]], prof, prof_w, pos,
                                        k)
        if (i + 1) % 50 == 0 or i == cfg.steps - 1:
            run = float(val)
            it.set_postfix(loss=f"{run:.4f}")
        if (i + 1) % log_every == 0:
            history.append({"step": i + 1, "loss": float(val), "seconds": time.time() - t0})
    return params, spec, {"train_seconds": time.time() - t0, "history": history}


# ---------------------------------------------------------------- evaluation

_mol_fwd = jax.jit(M.molecule_embed)
_phen_fwd = jax.jit(M.phenomics_embed)


def embed_pairs(params, prep: Prepared, spec: dict, pairs: np.ndarray, chunk: int = 4096) -> np.ndarray:
    scr = prep.screen
    feats = M.encode_concentration(spec, scr.doses_um)
    out = []
    for s in range(0, len(pairs), chunk):
        b = pairs[s:s + chunk]
        out.append(np.asarray(_mol_fwd(params, prep.fp[scr.pair_mol[b]], feats[scr.pair_dose[b]])))
    return np.concatenate(out) if out else np.zeros((0, 1), np.float32)


def embed_profiles(params, x: np.ndarray, chunk: int = 4096) -> np.ndarray:
    return np.concatenate([np.asarray(_phen_fwd(params, x[s:s + chunk])) for s in range(0, len(x), chunk)])


def ranks(q: np.ndarray, c: np.ndarray, true_idx: np.ndarray, chunk: int = 1024) -> np.ndarray:
    """Rank (0 = best) of the true candidate for each query; ties with other candidates count half."""
    out = np.empty(len(q), np.float64)
    for s in range(0, len(q), chunk):
        S = q[s:s + chunk] @ c.T
        t = S[np.arange(len(S)), true_idx[s:s + chunk]][:, None]
        out[s:s + chunk] = (S > t).sum(1) + 0.5 * ((S == t).sum(1) - 1)
    return out


def recall_at(r: np.ndarray, n_cand: int, x: float) -> float:
    return float(np.mean(r < math.ceil(x * n_cand))) if len(r) else float("nan")


def replicate_mean(prof: np.ndarray, present: np.ndarray) -> np.ndarray:
    """[B, R, D] profiles, [B, R] mask -> [B, D] mean of the present replicates."""
    m = present.astype(np.float32)
    return ((prof * m[:, :, None]).sum(1) / np.maximum(m.sum(1, keepdims=True), 1)).astype(np.float32)


def split_queries(prep: Prepared, which: str):
    """(query profiles, candidate pairs, index of the true candidate, active flag) for a split."""
    scr = prep.screen
    present = scr.present
    if which in ("scaffold", "val"):
        mols = np.flatnonzero(prep.split == (2 if which == "scaffold" else 1))
        pairs = np.flatnonzero(np.isin(scr.pair_mol, mols) & present.any(1))
        q = replicate_mean(prep.profiles[pairs], present[pairs])
    elif which == "unseen_replicates":
        last = present.sum(1) - 1
        pairs = np.flatnonzero(prep.rep_holdout_mol[scr.pair_mol] & (last >= 1))
        q = prep.profiles[pairs, last[pairs]]
    else:
        raise ValueError(which)
    return q, pairs, np.arange(len(pairs)), scr.active[pairs]


def evaluate(params, prep: Prepared, spec: dict, splits=("scaffold", "unseen_replicates"), keep_ranks=False) -> dict:
    res = {}
    for sp in splits:
        q, pairs, true_idx, act = split_queries(prep, sp)
        c = embed_pairs(params, prep, spec, pairs)
        r = ranks(embed_profiles(params, q), c, true_idx)
        n = len(pairs)
        d = {"n_candidates": int(n), "n_queries": int(len(q)), "n_active_queries": int(act.sum())}
        for x in TOP_X:
            tag = f"top{int(round(x * 100))}"
            d[f"{tag}_all"] = recall_at(r, n, x)
            d[f"{tag}_active"] = recall_at(r[act], n, x)
        if keep_ranks:
            d["_ranks"] = r
            d["_active"] = act
        res[sp] = d
    return res
