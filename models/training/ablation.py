"""Shim: the recipe lives in the phenix package (python/phenix/training/ablation.py). Same as
`python -m phenix.training.ablation`."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "python"))

from phenix.training.ablation import main  # noqa: E402

if __name__ == "__main__":
    main()
