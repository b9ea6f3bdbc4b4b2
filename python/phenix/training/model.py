"""Encoders, concentration encodings and contrastive losses (JAX).

Both towers are ``Linear -> ReLU -> Linear -> L2-normalise`` MLPs, exactly the graph that
``export_onnx.py`` writes (ReLU rather than GELU because opset 17 has no Gelu operator):

* molecule: ``[fingerprint (2048) | concentration features (c)] -> hidden -> dim``
* phenomics: ``standardised profile (384) -> hidden -> dim``

Concentration encodings follow the bundle contract (phenix-model.json, ``molecule.concentration``).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

L2_EPS = 1e-12


# ---------------------------------------------------------------- concentration encodings

def concentration_spec(kind: str, doses_um) -> dict:
    """The bundle's ``molecule.concentration`` object for the tested doses."""
    logd = np.log10(np.asarray(doses_um, dtype=np.float64))
    mids = (logd[1:] + logd[:-1]) / 2
    if kind in ("none", "implicit"):
        return {"kind": kind}
    if kind == "one_hot":
        return {"kind": "one_hot", "edges_um": [float(10 ** m) for m in mids]}
    if kind == "log":
        return {"kind": "log", "offset": float(logd.mean()), "scale": float(max(logd.std(), 1e-6))}
    if kind == "sigmoid":
        step = float(np.median(np.diff(logd))) if len(logd) > 1 else 1.0
        return {"kind": "sigmoid", "centers_log10_um": [float(m) for m in mids], "slope": float(4.0 / step)}
    raise ValueError(f"unknown concentration encoding {kind!r}")


def n_concentration_features(spec: dict) -> int:
    k = spec["kind"]
    if k in ("none", "implicit"):
        return 0
    if k == "log":
        return 1
    return len(spec["edges_um"]) + 1 if k == "one_hot" else len(spec["centers_log10_um"])


def encode_concentration(spec: dict, conc_um) -> np.ndarray:
    """Feature matrix [n, n_features] float32 for concentrations in µM (contract semantics)."""
    c = np.asarray(conc_um, dtype=np.float64).reshape(-1)
    if np.any(c <= 0):
        raise ValueError("concentrations must be > 0 µM")
    k = spec["kind"]
    if k in ("none", "implicit"):
        return np.zeros((len(c), 0), np.float32)
    if k == "one_hot":
        edges = np.asarray(spec["edges_um"], dtype=np.float64)
        idx = (edges[None, :] <= c[:, None]).sum(1)
        out = np.zeros((len(c), len(edges) + 1), np.float32)
        out[np.arange(len(c)), idx] = 1.0
        return out
    if k == "log":
        return ((np.log10(c) - spec["offset"]) / spec["scale"]).astype(np.float32)[:, None]
    if k == "sigmoid":
        m = np.asarray(spec["centers_log10_um"], dtype=np.float64)
        return (1.0 / (1.0 + np.exp(-spec["slope"] * (np.log10(c)[:, None] - m[None, :])))).astype(np.float32)
    raise ValueError(k)


# ---------------------------------------------------------------- towers

def _dense_init(key, n_in, n_out):
    w = jax.random.normal(key, (n_in, n_out), jnp.float32) * math.sqrt(2.0 / n_in)
    return {"w": w, "b": jnp.zeros((n_out,), jnp.float32)}


def init_params(key, n_fp: int, n_conc: int, profile_dim: int, hidden: int, dim: int, loss: str) -> dict:
    k = jax.random.split(key, 4)
    sigmoid_like = loss in ("siglip", "s2l")
    return {
        "mol": {"l1": _dense_init(k[0], n_fp + n_conc, hidden), "l2": _dense_init(k[1], hidden, dim)},
        "phen": {"l1": _dense_init(k[2], profile_dim, hidden), "l2": _dense_init(k[3], hidden, dim)},
        # SigLIP init: t = 10, b = -10; CLIP init: t = 1/0.07
        "log_t": jnp.asarray(math.log(10.0) if sigmoid_like else math.log(1 / 0.07), jnp.float32),
        "bias": jnp.asarray(-10.0 if sigmoid_like else 0.0, jnp.float32),
    }


def l2_normalize(x):
    return x / jnp.maximum(jnp.sqrt(jnp.sum(x * x, axis=-1, keepdims=True)), L2_EPS)


def mlp(p, x, dropout_key=None, dropout=0.0):
    h = jax.nn.relu(x @ p["l1"]["w"] + p["l1"]["b"])
    if dropout_key is not None and dropout > 0:
        keep = jax.random.bernoulli(dropout_key, 1 - dropout, h.shape)
        h = jnp.where(keep, h / (1 - dropout), 0.0)
    return l2_normalize(h @ p["l2"]["w"] + p["l2"]["b"])


def molecule_embed(params, fp, conc_feats, dropout_key=None, dropout=0.0):
    x = fp if conc_feats.shape[1] == 0 else jnp.concatenate([fp, conc_feats], axis=1)
    return mlp(params["mol"], x, dropout_key, dropout)


def phenomics_embed(params, prof, dropout_key=None, dropout=0.0):
    return mlp(params["phen"], prof, dropout_key, dropout)


# ---------------------------------------------------------------- losses

def s2l_weights(prof, tau: float):
    """MolPhenix soft targets from phenomic distances: 1 - (2/pi) arctan(d_ij / median d), thresholded.

    ``median d`` is the median distance of the (random) off-diagonal pairs of the batch.  Weights
    below ``tau`` are set to 0 (so unrelated pairs remain negatives).
    """
    sq = jnp.sum(prof * prof, 1)
    d = jnp.sqrt(jnp.maximum(sq[:, None] + sq[None, :] - 2 * prof @ prof.T, 0.0))
    n = prof.shape[0]
    off = ~jnp.eye(n, dtype=bool)
    med = jnp.nanmedian(jnp.where(off, d, jnp.nan))
    w = 1.0 - (2.0 / jnp.pi) * jnp.arctan(d / jnp.maximum(med, 1e-6))
    return jax.lax.stop_gradient(jnp.where(w >= tau, w, 0.0))


def contrastive_loss(loss: str, params, zm, zp, pos, prof, tau: float):
    """Loss for a batch: zm/zp molecule/phenomic embeddings [B, dim], ``pos`` [B, B] 0/1 same class.

    * ``infonce``: CLIP's symmetric softmax cross-entropy (targets = ``pos`` rows, normalised).
    * ``siglip``:  sigmoid loss, labels +1 for ``pos``, -1 otherwise.
    * ``cwcl``:    softmax cross-entropy against continuous targets w_ij = max(pos, S2L weight).
    * ``s2l``:     sigmoid loss against the same soft targets y_ij = max(pos, S2L weight).
    """
    t = jnp.exp(jnp.minimum(params["log_t"], math.log(100.0)))
    logits = t * (zp @ zm.T)  # rows: phenomic queries, cols: molecules
    B = zm.shape[0]
    if loss in ("infonce", "cwcl"):
        target = pos if loss == "infonce" else jnp.maximum(pos, s2l_weights(prof, tau))
        tr = target / target.sum(1, keepdims=True)
        tc = target.T / target.T.sum(1, keepdims=True)
        l_pm = -(tr * jax.nn.log_softmax(logits, axis=1)).sum(1).mean()
        l_mp = -(tc * jax.nn.log_softmax(logits.T, axis=1)).sum(1).mean()
        return 0.5 * (l_pm + l_mp)
    z = logits + params["bias"]
    y = pos if loss == "siglip" else jnp.maximum(pos, s2l_weights(prof, tau))
    # binary cross-entropy with (soft) targets, summed over candidates, averaged over queries
    return -(y * jax.nn.log_sigmoid(z) + (1 - y) * jax.nn.log_sigmoid(-z)).sum() / B


LOSSES = ("infonce", "siglip", "cwcl", "s2l")
ENCODINGS = ("one_hot", "log", "sigmoid", "implicit", "none")
