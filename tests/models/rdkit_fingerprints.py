#!/usr/bin/env python3
"""Write RDKit's Morgan fingerprints of every molecule in data/molecules/ for the settings the
phenix featurizer must match, one TSV row per (molecule, setting).

Used by models/tests/fingerprints.rs, which compares each row with phenix_models::MorganFeaturizer.

Columns (tab-separated, no header):
  file  row  smiles  radius  n_bits  counts  chirality  features
`row` is the 1-based data row in the CSV; `features` is space-separated ascending bit indices
(counts=0) or `bit:count` pairs (counts=1). Reference: RDKit Chem.MolFromSmiles (default
sanitization) + rdFingerprintGenerator.GetMorganGenerator(radius, fpSize, includeChirality),
GetFingerprint(mol).GetOnBits() or GetCountFingerprint(mol).GetNonzeroElements().

With --mutants FILE it also writes N (default 3000) SMILES made by small random edits of the
data SMILES (seeded), one per line as `verdict<TAB>smiles<TAB>bits`, verdict 1 if RDKit's
MolFromSmiles accepts it, else 0, and bits the radius-2 / 2048-bit on-bits when accepted:
phenix must accept and reject the same ones, and give the same bits.

With --cases IN OUT it only reads IN, a JSON list of SMILES strings (any characters, including
whitespace and control characters), and writes OUT, a JSON list of [accepted, bits] per SMILES:
whether RDKit's MolFromSmiles returns a molecule with at least one atom, and the radius-2 /
2048-bit on-bits then (models/tests/fingerprints.rs, edge cases of the SMILES grammar).

Usage: rdkit_fingerprints.py --out FILE [--data DIR] [--files a.csv,b.csv] [--mutants FILE [--n-mutants N]]
       rdkit_fingerprints.py --cases IN OUT
"""
import argparse
import csv
import json
import os
import random
import sys

from rdkit import Chem, RDLogger
from rdkit.Chem import rdFingerprintGenerator

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FILES = ["approved_drugs.csv", "nci_5k.csv", "wehi_pains_test.csv"]
# (radius, n_bits, counts, chirality): the six required bit settings, then counts and chirality.
SETTINGS = [(r, n, False, False) for r in (1, 2, 3) for n in (1024, 2048)] + [
    (2, 2048, True, False),
    (2, 2048, False, True),
]


def cases(src, dst):
    gen = rdFingerprintGenerator.GetMorganGenerator(radius=2, fpSize=2048)
    out = []
    for smiles in json.load(open(src, encoding="utf-8")):
        mol = Chem.MolFromSmiles(smiles)
        # An empty SMILES gives an empty molecule, not None; phenix refuses it (no atoms).
        ok = mol is not None and mol.GetNumAtoms() > 0
        out.append([ok, list(gen.GetFingerprint(mol).GetOnBits()) if ok else []])
    json.dump(out, open(dst, "w", encoding="utf-8"))


def main():
    if len(sys.argv) == 4 and sys.argv[1] == "--cases":
        RDLogger.DisableLog("rdApp.*")
        return cases(sys.argv[2], sys.argv[3])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--data", default=os.path.join(ROOT, "data", "molecules"))
    ap.add_argument("--files", default=",".join(FILES))
    ap.add_argument("--mutants")
    ap.add_argument("--n-mutants", type=int, default=3000)
    args = ap.parse_args()
    RDLogger.DisableLog("rdApp.*")
    gens = {
        s: rdFingerprintGenerator.GetMorganGenerator(radius=s[0], fpSize=s[1], includeChirality=s[3])
        for s in SETTINGS
    }
    n_rows = 0
    all_smiles = []
    with open(args.out, "w", encoding="utf-8") as out:
        for name in args.files.split(","):
            path = os.path.join(args.data, name)
            with open(path, newline="", encoding="utf-8") as f:
                for i, rec in enumerate(csv.DictReader(f), start=1):
                    smiles = rec["smiles"]
                    all_smiles.append(smiles)
                    mol = Chem.MolFromSmiles(smiles)
                    if mol is None:
                        sys.exit(f"{path} row {i}: RDKit rejects {smiles!r}; the data files must hold valid SMILES")
                    for s, gen in gens.items():
                        if s[2]:
                            fp = gen.GetCountFingerprint(mol).GetNonzeroElements()
                            feats = " ".join(f"{b}:{c}" for b, c in sorted(fp.items()))
                        else:
                            feats = " ".join(map(str, gen.GetFingerprint(mol).GetOnBits()))
                        out.write(f"{name}\t{i}\t{smiles}\t{s[0]}\t{s[1]}\t{int(s[2])}\t{int(s[3])}\t{feats}\n")
                        n_rows += 1
    print(f"wrote {n_rows} rows to {args.out}", file=sys.stderr)
    if args.mutants:
        write_mutants(args.mutants, all_smiles, args.n_mutants)


EDITS = [
    lambda s, i: s[:i] + "N" + s[i + 1:] if s[i] == "C" else None,        # C -> N
    lambda s, i: s[:i] + "O" + s[i + 1:] if s[i] in "CN" else None,       # C/N -> O
    lambda s, i: s[:i] + "F" + s[i + 1:] if s[i] in "CNO" else None,      # -> F
    lambda s, i: s[:i] + "c" + s[i + 1:] if s[i] == "C" else None,        # aliphatic -> aromatic
    lambda s, i: s[:i] + "C" + s[i + 1:] if s[i] == "c" else None,        # aromatic -> aliphatic
    lambda s, i: s[:i] + "n" + s[i + 1:] if s[i] == "c" else None,        # c -> n
    lambda s, i: s[:i + 1] + "=" + s[i + 1:] if s[i].isalpha() else None,  # add a double bond
    lambda s, i: s[:i + 1] + "(C)" + s[i + 1:] if s[i].isalpha() else None,  # add a branch
    lambda s, i: s[:i] + s[i + 1:] if s[i] in "()=#123456789" else None,  # drop a bond/branch/ring char
]


def write_mutants(path, smiles, n):
    rng = random.Random(20261126)
    gen = rdFingerprintGenerator.GetMorganGenerator(radius=2, fpSize=2048)
    seen = set()
    ok = 0
    with open(path, "w", encoding="utf-8") as out:
        while len(seen) < n:
            s = rng.choice(smiles)
            i = rng.randrange(len(s))
            m = rng.choice(EDITS)(s, i)
            if not m or m in seen:
                continue
            seen.add(m)
            mol = Chem.MolFromSmiles(m)
            verdict = mol is not None
            ok += verdict
            bits = " ".join(map(str, gen.GetFingerprint(mol).GetOnBits())) if verdict else ""
            out.write(f"{int(verdict)}\t{m}\t{bits}\n")
    print(f"wrote {n} mutants ({ok} accepted by RDKit) to {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
