"""The scaffold split (numpy only, so ``phenix evaluate --split test`` needs no JAX)."""

from __future__ import annotations

import numpy as np


def scaffold_split(scaffolds: np.ndarray, seed: int, test_frac: float, val_frac: float) -> np.ndarray:
    rng = np.random.default_rng(seed + 7919)
    uniq, inv = np.unique(scaffolds, return_inverse=True)
    n = len(scaffolds)
    split = np.zeros(n, dtype=np.int64)
    counts = np.bincount(inv)
    n_test = n_val = 0
    for g in rng.permutation(len(uniq)):
        if uniq[g] == "":
            continue
        if n_test + counts[g] <= test_frac * n:
            split[inv == g] = 2
            n_test += counts[g]
        elif n_val + counts[g] <= val_frac * n:
            split[inv == g] = 1
            n_val += counts[g]
        if n_test >= test_frac * n - 1 and n_val >= val_frac * n - 1:
            break
    return split
