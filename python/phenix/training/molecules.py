"""Real molecules for the simulated screen: loading, de-duplication, fingerprints, scaffolds.

Reads the three CSV files under ``data/molecules/`` (provenance in ``data/molecules/README.md``),
keeps every SMILES that RDKit parses, de-duplicates by canonical SMILES (first occurrence wins,
files in the order approved drugs, NCI, WEHI) and computes for each molecule

* the Morgan fingerprint exactly as phenix's Rust featurizer does it:
  ``rdFingerprintGenerator.GetMorganGenerator(radius=2, fpSize=2048)`` bits, chirality off,
  computed on ``Chem.MolFromSmiles(smiles)`` of the *source* SMILES string;
* the Bemis-Murcko scaffold (canonical SMILES of ``MurckoScaffold.GetScaffoldForMol``; acyclic
  molecules get the empty scaffold ``""``), used by the scaffold split.

The result is cached as a compressed ``.npz`` under ``~/.cache/phenix`` (``PHENIX_CACHE``) keyed by the
size and mtime of the CSV files, so repeated runs skip RDKit (≈10 s).
"""

from __future__ import annotations

import csv
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[3]


def _data_dir() -> Path:
    """PHENIX_MOLECULES, else data/molecules of the current directory, else of this source checkout."""
    if os.environ.get("PHENIX_MOLECULES"):
        return Path(os.environ["PHENIX_MOLECULES"])
    cwd = Path.cwd() / "data" / "molecules"
    return cwd if (cwd / CSV_FILES[0]).exists() else REPO_ROOT / "data" / "molecules"


CSV_FILES = ("approved_drugs.csv", "nci_5k.csv", "wehi_pains_test.csv")
DATA_DIR = _data_dir()
CACHE_DIR = Path(os.environ.get("PHENIX_CACHE", Path.home() / ".cache" / "phenix"))
RADIUS = 2
N_BITS = 2048


@dataclass
class MoleculeSet:
    """De-duplicated molecules with fingerprints and scaffolds (row i describes molecule i)."""

    ids: np.ndarray  # str, "<file stem>:<source id>"
    smiles: np.ndarray  # str, source SMILES
    fingerprints: np.ndarray  # uint8 [n, 2048], 0/1
    scaffolds: np.ndarray  # str, canonical Murcko scaffold SMILES ("" if acyclic)

    def __len__(self) -> int:
        return len(self.ids)


def morgan_fingerprints(smiles: list[str]) -> np.ndarray:
    """Morgan bits (radius 2, 2048 bits, no chirality) as uint8 [n, 2048]; the phenix featurizer."""
    from rdkit import Chem
    from rdkit.Chem import rdFingerprintGenerator

    gen = rdFingerprintGenerator.GetMorganGenerator(radius=RADIUS, fpSize=N_BITS)
    out = np.zeros((len(smiles), N_BITS), dtype=np.uint8)
    for i, s in enumerate(smiles):
        mol = Chem.MolFromSmiles(s)
        if mol is None:
            raise ValueError(f"RDKit cannot parse {s!r}")
        out[i] = gen.GetFingerprintAsNumPy(mol)
    return out


def _check_data() -> None:
    missing = [n for n in CSV_FILES if not (DATA_DIR / n).exists()]
    if missing:
        from phenix import PhenixError

        raise PhenixError(f"the simulator's molecules are missing: {', '.join(str(DATA_DIR / n) for n in missing)} "
                          "(run from a phenix checkout, or set PHENIX_MOLECULES to a directory with "
                          f"{', '.join(CSV_FILES)})")


def _cache_key() -> str:
    h = hashlib.sha256(f"v1 r{RADIUS} b{N_BITS}".encode())
    for name in CSV_FILES:
        st = (DATA_DIR / name).stat()
        h.update(f"{name}:{st.st_size}".encode())
        h.update((DATA_DIR / name).read_bytes()[:4096])
    return h.hexdigest()[:16]


def _read_csvs() -> tuple[list[str], list[str]]:
    ids, smiles = [], []
    for name in CSV_FILES:
        stem = name.removesuffix(".csv")
        with open(DATA_DIR / name, newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                ids.append(f"{stem}:{row['id']}")
                smiles.append(row["smiles"])
    return ids, smiles


def load_molecules(use_cache: bool = True) -> MoleculeSet:
    """All unique, parseable molecules of ``data/molecules`` (about 17.5k)."""
    _check_data()
    cache = CACHE_DIR / f"molecules-{_cache_key()}.npz"
    if use_cache and cache.exists():
        z = np.load(cache, allow_pickle=False)
        return MoleculeSet(z["ids"], z["smiles"], np.unpackbits(z["fp_packed"], axis=1), z["scaffolds"])

    from rdkit import Chem, RDLogger
    from rdkit.Chem import rdFingerprintGenerator
    from rdkit.Chem.Scaffolds import MurckoScaffold

    RDLogger.DisableLog("rdApp.*")
    gen = rdFingerprintGenerator.GetMorganGenerator(radius=RADIUS, fpSize=N_BITS)
    raw_ids, raw_smiles = _read_csvs()
    seen: set[str] = set()
    ids, smiles, fps, scaffolds = [], [], [], []
    for mid, smi in zip(raw_ids, raw_smiles):
        mol = Chem.MolFromSmiles(smi)
        if mol is None:
            continue
        canon = Chem.MolToSmiles(mol)
        if canon in seen:
            continue
        seen.add(canon)
        try:
            scaf = Chem.MolToSmiles(MurckoScaffold.GetScaffoldForMol(mol))
        except Exception:  # pragma: no cover - RDKit edge cases
            scaf = ""
        ids.append(mid)
        smiles.append(smi)
        fps.append(gen.GetFingerprintAsNumPy(mol).astype(np.uint8))
        scaffolds.append(scaf)
    ms = MoleculeSet(np.array(ids), np.array(smiles), np.stack(fps), np.array(scaffolds))
    if use_cache:
        CACHE_DIR.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp.npz")
        np.savez_compressed(tmp, ids=ms.ids, smiles=ms.smiles, fp_packed=np.packbits(ms.fingerprints, axis=1),
                            scaffolds=ms.scaffolds)
        os.replace(tmp, cache)
    return ms


if __name__ == "__main__":
    ms = load_molecules()
    n_scaf = len(set(ms.scaffolds.tolist()))
    print(f"{len(ms)} molecules, {n_scaf} scaffolds, mean bits {ms.fingerprints.sum(1).mean():.1f}")
