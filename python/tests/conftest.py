"""Fixtures for the package tests: the phenix package installed with pip into a fresh venv, a small
simulated screen written as pycytominer CSV, imported and trained through the installed command line.

The fresh venv reuses the test interpreter's site-packages for numpy, pandas, JAX, RDKit, ... through a
``.pth`` file (an offline stand-in for ``pip install phenix[train]``; the shared .venv has them pinned),
and the wheel is built with ``pip install --no-build-isolation`` with CARGO_TARGET_DIR set to the
checkout's target/, so only the final cdylib is relinked.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# in-process tests (the recipe) import the checkout's package; the CLI tests run the installed copy
sys.path.insert(0, str(ROOT / "python"))
SQLITE3_CLI = os.environ.get("PHENIX_SQLITE3_CLI", "/usr/bin/sqlite3")
# the reduced CI screen and training run
N_MOLECULES = 300
STEPS = 300


class Venv:
    def __init__(self, path: Path):
        self.path = path
        self.python = path / "bin" / "python"
        self.phenix = path / "bin" / "phenix"
        self.env = dict(os.environ)
        self.env.pop("PYTHONPATH", None)
        self.env.pop("PHENIX_EXT", None)
        self.env["PHENIX_MOLECULES"] = str(ROOT / "data" / "molecules")

    def run(self, *args, check: bool = True, cwd=None) -> subprocess.CompletedProcess:
        p = subprocess.run([str(self.phenix), *map(str, args)], capture_output=True, text=True, env=self.env,
                           cwd=cwd or self.path)
        if check and p.returncode != 0:
            raise AssertionError(f"phenix {' '.join(map(str, args))} exited {p.returncode}:\n{p.stderr[-3000:]}")
        return p

    def fails(self, *args, cwd=None) -> str:
        """Runs a command that must fail: exit status 2, one line on stderr, no traceback."""
        p = self.run(*args, check=False, cwd=cwd)
        assert p.returncode == 2, (p.returncode, p.stderr[-2000:])
        # progress bars (tqdm writes "...: 100%|####| n/N [...]") are not messages
        lines = [ln for ln in p.stderr.replace("\r", "\n").splitlines() if ln.strip() and "%|" not in ln]
        assert len(lines) == 1, p.stderr
        assert "Traceback" not in p.stderr
        return lines[0]

    def py(self, code: str) -> str:
        p = subprocess.run([str(self.python), "-c", code], capture_output=True, text=True, env=self.env,
                           cwd=self.path)
        assert p.returncode == 0, p.stderr[-3000:]
        return p.stdout


@pytest.fixture(scope="session")
def venv(tmp_path_factory) -> Venv:
    """``python -m venv`` + ``pip install ./python`` (the wheel with libphenix)."""
    d = tmp_path_factory.mktemp("venv") / "v"
    subprocess.run(["/usr/bin/python3", "-m", "venv", str(d)], check=True)
    site = subprocess.run([str(d / "bin" / "python"), "-c", "import site; print(site.getsitepackages()[0])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    shared = [p for p in sys.path if p.endswith("site-packages") and Path(p).is_dir()]
    Path(site, "phenix-test-shared.pth").write_text("\n".join(shared) + "\n")
    # pip builds the wheel with this interpreter's setuptools: below 70.1 it needs the `wheel` package
    import importlib.util

    import setuptools

    if importlib.util.find_spec("wheel") is None and tuple(map(int, setuptools.__version__.split(".")[:2])) < (70, 1):
        pytest.fail(f"building the phenix wheel offline needs the `wheel` package (setuptools {setuptools.__version__} "
                    "has no bdist_wheel): add wheel (or setuptools>=70.1) to tools/requirements.txt")
    env = dict(os.environ, CARGO_TARGET_DIR=str(ROOT / "target"))
    env.pop("PYTHONPATH", None)
    p = subprocess.run([str(d / "bin" / "python"), "-m", "pip", "install", "-q", "--no-build-isolation", "--no-deps",
                        str(ROOT / "python")], capture_output=True, text=True, env=env)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    v = Venv(d)
    # the installed copy is used, not the checkout
    where = v.py("import phenix; print(phenix.__file__); print(phenix.loadable_path())").split()
    assert where[0].startswith(str(d)) and where[1].startswith(str(d)), where
    return v


@pytest.fixture(scope="session")
def screen(venv, tmp_path_factory) -> dict:
    """simulate (pycytominer CSV) -> import -> train (reduced) with the installed command line."""
    d = tmp_path_factory.mktemp("screen")
    csv = d / "screen.csv.gz"
    venv.run("simulate", csv, "--n-molecules", N_MOLECULES, "--seed", 3, "--quiet")
    db = d / "screen.db"
    imp = json.loads(venv.run("import", db, csv, "--quiet").stdout)
    bundle = d / "bundle"
    tr = venv.run("train", db, "--out", bundle, "--steps", STEPS, "--batch-size", 128, "--n-null", 5000, "--quiet")
    return {"dir": d, "csv": csv, "db": db, "bundle": bundle, "import": imp, "train": json.loads(tr.stdout)}


def sqlite3_cli(db: Path, script: str, env: dict) -> str:
    p = subprocess.run([SQLITE3_CLI, str(db)], input=script, capture_output=True, text=True, env=env)
    assert p.returncode == 0 and "Error" not in p.stderr, p.stderr
    return p.stdout


def connect_plain(db: Path) -> sqlite3.Connection:
    return sqlite3.connect(db)
