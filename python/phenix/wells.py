"""A wells table of the user's database -> plate-normalised profiles -> the training/evaluation dataset.

A wells table is what ``phenix import`` writes: one row per well, the metadata columns as they were in
the file and a ``profile`` column of float32 blobs, with the feature names recorded in
``phenix_feature_lists``. Which columns hold the structure, the dose, the plate and the control flag is
given by a :class:`Columns` (flags of ``phenix train`` / ``phenix evaluate``, or a JSON config file).
"""

from __future__ import annotations

import difflib
import json
import sqlite3
from dataclasses import asdict, dataclass, field
from typing import Optional

import numpy as np

from . import PhenixError

FEATURE_LISTS = "phenix_feature_lists"

# factor to µM
DOSE_UNITS = {"M": 1e6, "mM": 1e3, "uM": 1.0, "µM": 1.0, "μM": 1.0, "nM": 1e-3, "pM": 1e-6}

NORMALIZATIONS = ("center", "standardize", "robust", "none")


@dataclass
class Columns:
    """Which columns of the wells table mean what (defaults: ``phenix simulate``'s pycytominer names)."""

    table: str = "wells"
    smiles: str = "Metadata_SMILES"
    dose: str = "Metadata_mmoles_per_liter"
    dose_unit: str = "mM"
    plate: str = "Metadata_Plate"
    well: Optional[str] = "Metadata_Well"
    batch: Optional[str] = "Metadata_Batch"
    compound: Optional[str] = "Metadata_broad_sample"
    control: str = "Metadata_broad_sample=DMSO"  # COLUMN=VALUE marks the negative-control wells
    profile: str = "profile"

    def control_column_value(self) -> tuple[str, str]:
        col, sep, val = self.control.partition("=")
        if not sep or not col:
            raise PhenixError(f"--control {self.control!r}: expected COLUMN=VALUE, e.g. Metadata_broad_sample=DMSO")
        return col, val

    def to_dict(self) -> dict:
        return asdict(self)


def quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def dose_factor(unit: str) -> float:
    if unit not in DOSE_UNITS:
        raise PhenixError(f"unknown dose unit {unit!r}: expected one of {', '.join(k for k in DOSE_UNITS if k != 'μM')}")
    return DOSE_UNITS[unit]


def table_columns(conn: sqlite3.Connection, table: str) -> list[str]:
    rows = conn.execute(f"PRAGMA table_info({quote(table)})").fetchall()
    if not rows:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type IN ('table','view')")]
        close = difflib.get_close_matches(table, tables, n=3, cutoff=0.5)
        hint = f"; close matches: {', '.join(close)}" if close else (f"; tables: {', '.join(tables[:10])}" if tables
                                                                      else "; the database has no tables")
        raise PhenixError(f"no table {table!r} in the database{hint}")
    return [r[1] for r in rows]


def close_matches(name: str, candidates: list[str], n: int = 3) -> list[str]:
    """Up to ``n`` candidates most similar to ``name``, ignoring case (a misspelt or mis-cased column)."""
    low: dict[str, str] = {}
    for c in candidates:
        low.setdefault(c.lower(), c)
    return [low[m] for m in difflib.get_close_matches(name.lower(), list(low), n=n, cutoff=0.5)]


def require_columns(have: list[str], wanted: dict[str, Optional[str]], table: str) -> None:
    """Every non-None wanted column exists; otherwise one error listing each missing one with close matches."""
    problems = []
    for role, col in wanted.items():
        if col is None or col in have:
            continue
        close = close_matches(col, have)
        problems.append(f"{role} column {col!r} not found" + (f" (close matches: {', '.join(close)})" if close else ""))
    if problems:
        raise PhenixError(f"table {table!r}: " + "; ".join(problems) + " — set the column with its flag or in --config")


def feature_list(conn: sqlite3.Connection, table: str) -> Optional[list[str]]:
    """The feature names ``phenix import`` recorded for ``table`` (None if none were recorded)."""
    try:
        row = conn.execute(f"SELECT features FROM {FEATURE_LISTS} WHERE table_name = ?", (table,)).fetchone()
    except sqlite3.OperationalError:
        return None
    return json.loads(row[0]) if row else None


def first_mismatch(want: list[str], got: list[str]) -> Optional[str]:
    """A one-line description of the first difference between two feature lists, or None if equal."""
    for i, (a, b) in enumerate(zip(want, got)):
        if a != b:
            return f"feature {i + 1} is {b!r} but the model expects {a!r}"
    if len(want) != len(got):
        if len(got) < len(want):
            return f"{len(got)} features but the model expects {len(want)}; the first missing one is {want[len(got)]!r}"
        return f"{len(got)} features but the model expects {len(want)}; the first extra one is {got[len(want)]!r}"
    return None


@dataclass
class Wells:
    """The wells of a table, in rowid order."""

    rowid: np.ndarray
    plate: np.ndarray  # str
    well: np.ndarray  # str ("" if no well column)
    batch: np.ndarray  # str ("" if none)
    smiles: np.ndarray  # str ("" for controls)
    compound: np.ndarray  # str (the SMILES if no compound column)
    dose_um: np.ndarray  # float64 (nan for controls)
    control: np.ndarray  # bool
    profiles: np.ndarray  # float32 [n, D]
    features: Optional[list[str]]


def read_wells(conn: sqlite3.Connection, cols: Columns, progress: bool = False) -> Wells:
    have = table_columns(conn, cols.table)
    ccol, cval = cols.control_column_value()
    require_columns(have, {"SMILES": cols.smiles, "dose": cols.dose, "plate": cols.plate, "well": cols.well,
                           "batch": cols.batch, "compound": cols.compound, "control": ccol, "profile": cols.profile},
                    cols.table)
    factor = dose_factor(cols.dose_unit)
    sel = [cols.smiles, cols.dose, cols.plate, cols.well or None, cols.batch or None, cols.compound or None, ccol,
           cols.profile]
    expr = ", ".join("''" if c is None else quote(c) for c in sel)
    n = conn.execute(f"SELECT count(*) FROM {quote(cols.table)}").fetchone()[0]
    if n == 0:
        raise PhenixError(f"table {cols.table!r} has no rows")
    rowid = np.empty(n, np.int64)
    smiles, plate, well, batch, comp = [], [], [], [], []
    dose = np.full(n, np.nan)
    control = np.zeros(n, bool)
    profiles = None
    from tqdm import tqdm

    cur = conn.execute(f"SELECT rowid, {expr} FROM {quote(cols.table)} ORDER BY rowid")
    bad_dose = []
    for i, r in enumerate(tqdm(cur, total=n, desc="reading wells", unit="well", disable=not progress,
                               mininterval=1.0)):
        rowid[i] = r[0]
        is_ctrl = r[7] is not None and str(r[7]) == cval
        control[i] = is_ctrl
        blob = r[8]
        if not isinstance(blob, bytes) or len(blob) == 0 or len(blob) % 4:
            raise PhenixError(f"row {r[0]}: column {cols.profile!r} is not a float32 profile blob "
                              f"(got {type(blob).__name__}); import the table with `phenix import`")
        if profiles is None:
            d = len(blob) // 4
            profiles = np.empty((n, d), np.float32)
        if len(blob) != profiles.shape[1] * 4:
            raise PhenixError(f"row {r[0]}: the profile has {len(blob) // 4} features, the first row "
                              f"{profiles.shape[1]}; every profile of a table must have the same features")
        profiles[i] = np.frombuffer(blob, "<f4")
        plate.append("" if r[3] is None else str(r[3]))
        well.append("" if r[4] is None else str(r[4]))
        batch.append("" if r[5] is None else str(r[5]))
        if is_ctrl:
            smiles.append("")
            comp.append("")
            continue
        s = "" if r[1] is None else str(r[1]).strip()
        smiles.append(s)
        comp.append(s if (r[6] is None or cols.compound is None) else str(r[6]))
        try:
            dv = float(r[2])
        except (TypeError, ValueError):
            dv = float("nan")
        if not np.isfinite(dv) or dv <= 0:
            bad_dose.append((r[0], r[2]))
        dose[i] = dv * factor
    if bad_dose:
        first = ", ".join(f"row {a}: {b!r}" for a, b in bad_dose[:3])
        raise PhenixError(f"{len(bad_dose)} treatment wells have no positive dose in {cols.dose!r} ({first}); "
                          f"control wells are those with {ccol} = {cval!r}")
    fin = np.isfinite(profiles)
    if not fin.all():
        bad = np.flatnonzero(~fin.all(1))
        j = int(np.flatnonzero(~fin[bad[0]])[0])
        raise PhenixError(f"{len(bad)} wells have NaN or infinite features (first: row {rowid[bad[0]]}, feature {j + 1})")
    feats = feature_list(conn, cols.table)
    if feats is not None and len(feats) != profiles.shape[1]:
        raise PhenixError(f"table {cols.table!r}: {len(feats)} recorded feature names but {profiles.shape[1]}-wide profiles")
    if not control.any():
        raise PhenixError(f"no control wells: no row has {ccol} = {cval!r} (set --control COLUMN=VALUE)")
    return Wells(rowid, np.array(plate), np.array(well), np.array(batch), np.array(smiles, dtype=object),
                 np.array(comp, dtype=object), dose, control, profiles, feats)


# ------------------------------------------------------------------------------- plate normalisation

def _check_controls(w: Wells, method: str) -> None:
    plates, inv = np.unique(w.plate, return_inverse=True)
    n_ctrl = np.bincount(inv, weights=w.control, minlength=len(plates)).astype(int)
    need = 0 if method == "none" else (1 if method == "center" else 2)
    short = [str(p) for p, c in zip(plates, n_ctrl) if c < need]
    if short:
        raise PhenixError(f"{len(short)} plate(s) have {'no' if need == 1 else 'fewer than 2'} control wells for the "
                          f"per-plate {method} normalisation (first: {short[0]!r}); add controls, drop the plate, or "
                          "use --normalize none")


def normalize_plates(w: Wells, method: str, conn: Optional[sqlite3.Connection] = None,
                     cols: Optional[Columns] = None) -> dict:
    """Normalises ``w.profiles`` per plate against that plate's control wells, with phenix's SQL
    analysis functions on the wells table (``conn`` has phenix loaded, ``cols`` names the columns):

    * ``center``: subtract the controls' mean, ``phenix_mean(profile) ... GROUP BY plate`` (what the
      simulator and many pipelines do);
    * ``standardize``: ``phenix_norm_fit('standardize', ...)`` / ``phenix_norm_apply`` (ddof 0);
    * ``robust``: ``phenix_norm_fit('robust', ...)`` / ``phenix_norm_apply`` (pycytominer's
      mad_robustize: median, 1.4826 x MAD);
    * ``none``: leave the profiles as they are (already normalised, e.g. pycytominer output).

    Without ``conn`` (wells built in memory from the simulator, for tests and the demo) only ``center``
    is available; it rounds each plate's mean to float32 as ``phenix_mean`` returns it, so both paths give
    the same profiles. Returns the description recorded in the bundle.
    """
    if method not in NORMALIZATIONS:
        raise PhenixError(f"unknown normalisation {method!r}: expected one of {', '.join(NORMALIZATIONS)}")
    _check_controls(w, method)
    desc = {"method": method, "per": "plate", "against": "control wells",
            "sql": {"center": "phenix_mean over the plate's controls, subtracted",
                    "standardize": "phenix_norm_fit('standardize') + phenix_norm_apply",
                    "robust": "phenix_norm_fit('robust') + phenix_norm_apply",
                    "none": "none"}[method]}
    if method == "none":
        return desc
    plates, inv = np.unique(w.plate, return_inverse=True)
    if conn is None:
        if method != "center":
            raise PhenixError(f"the {method} normalisation runs in SQL: pass the wells' database connection")
        means = np.zeros((len(plates), w.profiles.shape[1]), np.float32)
        for k in range(len(plates)):
            c = w.profiles[(inv == k) & w.control].astype(np.float64)
            means[k] = c.mean(0).astype(np.float32)
        w.profiles[:] = (w.profiles.astype(np.float64) - means[inv].astype(np.float64)).astype(np.float32)
        return desc
    assert cols is not None
    ccol, cval = cols.control_column_value()
    t, pc, pr = quote(cols.table), quote(cols.plate), quote(cols.profile)
    ctrl = f"CAST({quote(ccol)} AS TEXT) = ?"
    if method == "center":
        fit = {str(p): np.frombuffer(m, "<f4") for p, m in conn.execute(
            f"SELECT CAST({pc} AS TEXT), phenix_mean({pr}) FROM {t} WHERE {ctrl} GROUP BY 1", (cval,))}
        means = np.stack([fit[str(p)] for p in plates])
        w.profiles[:] = (w.profiles.astype(np.float64) - means[inv].astype(np.float64)).astype(np.float32)
        return desc
    feats = json.dumps(w.features) if w.features is not None else None
    opts = json.dumps({"features": w.features}) if w.features is not None else "{}"
    try:
        conn.execute("DROP TABLE IF EXISTS temp.phenix_plate_fits")
        conn.execute(f"CREATE TEMP TABLE phenix_plate_fits AS SELECT CAST({pc} AS TEXT) AS plate, "
                     f"phenix_norm_fit(?, {pr}, ?) AS fit FROM {t} WHERE {ctrl} GROUP BY 1", (method, opts, cval))
        rows = conn.execute(f"SELECT w.rowid, phenix_norm_apply(f.fit, w.{pr}" + (", ?" if feats else "") +
                            f") FROM {t} w LEFT JOIN temp.phenix_plate_fits f ON f.plate = CAST(w.{pc} AS TEXT) "
                            "ORDER BY w.rowid", ((feats,) if feats else ())).fetchall()
    except sqlite3.Error as e:
        raise PhenixError(f"per-plate {method} normalisation: {e}") from e
    if len(rows) != len(w.rowid) or any(r[0] != i for r, i in zip(rows, w.rowid)):
        raise PhenixError(f"table {cols.table!r} changed while it was read")
    w.profiles[:] = np.stack([np.frombuffer(r[1], "<f4") for r in rows])
    return desc


# ------------------------------------------------------------------------------- the dataset

@dataclass
class Dataset:
    """Treatment wells grouped into (molecule, dose) pairs with their replicate wells.

    The same attributes as the simulator's ``Screen``, so the recipe runs on either.
    """

    mol_smiles: np.ndarray  # str [n_mol]
    mol_compound: np.ndarray  # str [n_mol]
    fingerprints: Optional[np.ndarray]  # uint8 [n_mol, 2048]
    scaffolds: Optional[np.ndarray]  # str [n_mol]
    doses_um: np.ndarray  # float64 [n_dose], ascending
    pair_mol: np.ndarray
    pair_dose: np.ndarray
    profiles: np.ndarray  # float32 [n_pair, R, D], zeros where absent
    present: np.ndarray  # bool [n_pair, R]
    pair_rows: np.ndarray  # int64 [n_pair, R] rowid of each replicate well (-1 absent)
    replicate_similarity: np.ndarray = field(default=None)
    p_value: np.ndarray = field(default=None)
    active: np.ndarray = field(default=None)
    n_controls: int = 0
    n_plates: int = 0

    @property
    def mol_index(self) -> np.ndarray:
        return np.arange(len(self.mol_smiles))

    def summary(self) -> dict:
        act = self.active
        mol_active = np.zeros(len(self.mol_smiles), bool)
        np.logical_or.at(mol_active, self.pair_mol, act)
        return {
            "n_molecules": int(len(self.mol_smiles)),
            "n_pairs": int(len(self.pair_mol)),
            "n_wells": int(self.present.sum() + self.n_controls),
            "n_plates": int(self.n_plates),
            "doses_um": [float(d) for d in self.doses_um],
            "replicates_per_pair": {str(k): int(v) for k, v in zip(*np.unique(self.present.sum(1), return_counts=True))},
            "active_fraction_pairs": float(act.mean()),
            "active_fraction_molecules": float(mol_active.mean()),
            "active_fraction_by_dose": [float(act[self.pair_dose == d].mean()) for d in range(len(self.doses_um))],
            "replicate_cosine_active_mean": float(np.nanmean(self.replicate_similarity[act])) if act.any() else None,
            "replicate_cosine_inactive_mean": float(np.nanmean(self.replicate_similarity[~act])) if (~act).any() else None,
        }


def chem_info(smiles: list[str], rows: list[list[int]], skip_bad: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Morgan bits (phenix's featurizer: radius 2, 2048 bits, no chirality) and Murcko scaffolds with RDKit.

    Returns (ok mask, fingerprints of the ok ones, scaffolds of the ok ones). Unparsable SMILES are an
    error naming how many and the first rows, unless ``skip_bad``.
    """
    try:
        from rdkit import Chem, RDLogger
        from rdkit.Chem import rdFingerprintGenerator
        from rdkit.Chem.Scaffolds import MurckoScaffold
    except ImportError as e:  # pragma: no cover - depends on the install
        raise PhenixError("RDKit is needed for fingerprints and scaffolds: pip install 'phenix[train]'") from e
    RDLogger.DisableLog("rdApp.*")
    gen = rdFingerprintGenerator.GetMorganGenerator(radius=2, fpSize=2048)
    ok = np.zeros(len(smiles), bool)
    fps, scafs, bad = [], [], []
    for i, s in enumerate(smiles):
        mol = Chem.MolFromSmiles(s) if s else None
        if mol is None:
            bad.append(i)
            continue
        ok[i] = True
        fps.append(gen.GetFingerprintAsNumPy(mol).astype(np.uint8))
        try:
            scafs.append(Chem.MolToSmiles(MurckoScaffold.GetScaffoldForMol(mol)))
        except Exception:  # pragma: no cover - RDKit edge cases
            scafs.append("")
    if bad and not skip_bad:
        first = "; ".join(f"{smiles[i]!r} (rows {', '.join(map(str, rows[i][:3]))})" for i in bad[:3])
        raise PhenixError(f"{len(bad)} SMILES cannot be parsed by RDKit, first: {first}; fix them or pass "
                          "--skip-bad-smiles to drop their wells")
    fp = np.stack(fps) if fps else np.zeros((0, 2048), np.uint8)
    return ok, fp, np.array(scafs)


def build_dataset(w: Wells, chem: bool = True, skip_bad_smiles: bool = False) -> tuple[Dataset, dict]:
    """Groups treatment wells into (molecule, dose) pairs; molecules are ordered by compound id, then
    SMILES, and replicate wells by (plate, well, rowid), so the dataset does not depend on row order.

    Returns the dataset and a dict of notes (e.g. how many wells were dropped for bad SMILES).
    """
    notes: dict = {}
    trt = np.flatnonzero(~w.control)
    if len(trt) == 0:
        raise PhenixError("no treatment wells: every well is a control")
    keys = sorted({(w.compound[i], w.smiles[i]) for i in trt})
    mol_of = {k: j for j, k in enumerate(keys)}
    mol = np.array([mol_of[(w.compound[i], w.smiles[i])] for i in trt])
    smiles = [k[1] for k in keys]
    if chem:
        rows_of: list[list[int]] = [[] for _ in keys]
        for i, m in zip(trt, mol):
            if len(rows_of[m]) < 3:
                rows_of[m].append(int(w.rowid[i]))
        ok, fp, scaf = chem_info(smiles, rows_of, skip_bad_smiles)
        if not ok.all():
            keep = ok[mol]
            notes["dropped_wells_bad_smiles"] = int((~keep).sum())
            notes["dropped_molecules_bad_smiles"] = int((~ok).sum())
            remap = np.cumsum(ok) - 1
            trt, mol = trt[keep], remap[mol[keep]]
            keys = [k for k, o in zip(keys, ok) if o]
            smiles = [k[1] for k in keys]
    else:
        fp, scaf = None, None
    doses = np.unique(w.dose_um[trt])
    dose_idx = np.searchsorted(doses, w.dose_um[trt])
    pair_key = mol * len(doses) + dose_idx
    upairs, pinv = np.unique(pair_key, return_inverse=True)
    # replicate order inside a pair: plate, well, rowid
    order = np.lexsort((w.rowid[trt], w.well[trt], w.plate[trt], pinv))
    counts = np.bincount(pinv, minlength=len(upairs))
    R = int(counts.max())
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    slot = np.empty(len(trt), np.int64)
    slot[order] = np.arange(len(trt)) - starts[pinv[order]]
    D = w.profiles.shape[1]
    profiles = np.zeros((len(upairs), R, D), np.float32)
    present = np.zeros((len(upairs), R), bool)
    pair_rows = np.full((len(upairs), R), -1, np.int64)
    profiles[pinv, slot] = w.profiles[trt]
    present[pinv, slot] = True
    pair_rows[pinv, slot] = w.rowid[trt]
    ds = Dataset(np.array(smiles), np.array([k[0] for k in keys]), fp, scaf, doses,
                 (upairs // len(doses)).astype(np.int64), (upairs % len(doses)).astype(np.int64), profiles, present,
                 pair_rows, n_controls=int(w.control.sum()), n_plates=len(np.unique(w.plate)))
    return ds, notes


def _mean_pairwise_cos(x: np.ndarray, m: np.ndarray) -> np.ndarray:
    """x [n, R, D], m [n, R] -> mean cosine over the present replicate pairs (nan if fewer than 2)."""
    u = x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
    gram = np.einsum("nrd,nsd->nrs", u, u)
    iu = np.triu_indices(x.shape[1], 1)
    pm = (m[:, iu[0]] & m[:, iu[1]]).astype(np.float64)
    s = (gram[:, iu[0], iu[1]] * pm).sum(1)
    c = pm.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(c > 0, s / c, np.nan)


def call_activity(ds: Dataset, active_p: float = 0.01, n_null: int = 20000, seed: int = 0) -> None:
    """Replicate-consistency activity calls (the paper's way; the simulator's ``call_activity`` on
    ragged replicates): for each pair the mean pairwise cosine of its replicate wells, against a null of
    ``n_null`` random tuples of wells from distinct molecules (tuple size = the most common replicate
    count); p = (1 + #null >= observed) / (1 + n_null); active if p < ``active_p``. Pairs with fewer than
    2 replicates get p = 1."""
    rng = np.random.default_rng(seed + 31337)
    n_pair, R, _ = ds.profiles.shape
    obs = np.empty(n_pair)
    for s in range(0, n_pair, 8192):
        obs[s:s + 8192] = _mean_pairwise_cos(ds.profiles[s:s + 8192], ds.present[s:s + 8192])
    k = int(np.bincount(ds.present.sum(1)).argmax())
    if k < 2 or R < 2:
        raise PhenixError("activity calls need replicates: most (molecule, dose) pairs have fewer than 2 wells")
    flat = np.argwhere(ds.present)  # (pair, rep)
    pk = rng.integers(0, len(flat), (n_null, k))
    mols = ds.pair_mol[flat[pk, 0]]
    distinct = np.array([len(set(r.tolist())) == k for r in mols])
    pk = pk[distinct]
    null = []
    for s in range(0, len(pk), 8192):
        b = flat[pk[s:s + 8192]]
        null.append(_mean_pairwise_cos(ds.profiles[b[..., 0], b[..., 1]], np.ones(b.shape[:2], bool)))
    null = np.sort(np.concatenate(null)) if null else np.zeros(0)
    n_ge = len(null) - np.searchsorted(null, np.nan_to_num(obs, nan=np.inf), side="left")
    p = (1.0 + n_ge) / (1.0 + len(null))
    p[np.isnan(obs)] = 1.0
    ds.replicate_similarity = obs.astype(np.float32)
    ds.p_value = p
    ds.active = p < active_p


def check_split_feasible(ds: Dataset, test_frac: float, val_frac: float) -> None:
    n = len(ds.mol_smiles)
    n_scaf = len({s for s in ds.scaffolds.tolist() if s})
    if n < 20 or n_scaf < 3 or n * test_frac < 1 or n * val_frac < 1:
        raise PhenixError(f"too few molecules for the scaffold split: {n} molecules with {n_scaf} ring scaffolds; "
                          f"need at least 20 molecules and 3 scaffolds (test {test_frac:.0%}, validation "
                          f"{val_frac:.0%} of molecules)")
