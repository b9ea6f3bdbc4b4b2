"""The recipe's hyperparameters (no JAX import, so ``phenix train --help`` is fast)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TrainConfig:
    loss: str = "infonce"
    concentration: str = "one_hot"
    averaging: str = "random_subset"  # none | mean | random_subset
    seed: int = 0  # split + init + batches
    steps: int = 3000
    batch: int = 512
    lr: float = 1e-3
    warmup: int = 200
    weight_decay: float = 0.05
    dropout: float = 0.5  # on the hidden layer of both towers
    hidden: int = 1024
    dim: int = 256
    tau: float = 0.6  # S2L / CWCL weight threshold
    test_frac: float = 0.1
    val_frac: float = 0.1
    heldout_rep_frac: float = 0.1
