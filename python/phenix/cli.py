"""The ``phenix`` command line: simulate, import, train, evaluate, screen.

Every subcommand has ``--help``; bad input ends with ``phenix <command>: <reason>`` on one line and
exit status 2; tables are written in one transaction and bundles under a temporary name, so nothing is
left half-written.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sqlite3
import sys
from dataclasses import asdict, fields
from pathlib import Path
from typing import Optional

from . import PhenixError, __version__
from .wells import NORMALIZATIONS, Columns

EPILOG = "Documentation: docs/cli.md in the phenix repository."


def _add_columns(p: argparse.ArgumentParser) -> None:
    d = Columns()
    g = p.add_argument_group("columns of the wells table (defaults: pycytominer / phenix simulate names)")
    g.add_argument("--table", default=d.table, help="wells table (default %(default)s)")
    g.add_argument("--smiles", default=d.smiles, help="structure column, SMILES (default %(default)s)")
    g.add_argument("--dose", default=d.dose, help="dose column (default %(default)s)")
    g.add_argument("--dose-unit", default=d.dose_unit, help="unit of the dose column: M, mM, uM, nM, pM "
                   "(default %(default)s)")
    g.add_argument("--plate", default=d.plate, help="plate column (default %(default)s)")
    g.add_argument("--well", default=d.well, help="well column, '' for none (default %(default)s)")
    g.add_argument("--batch", default=d.batch, help="batch column, '' for none (default %(default)s)")
    g.add_argument("--compound", default=d.compound, help="compound id column, '' to use the SMILES "
                   "(default %(default)s)")
    g.add_argument("--control", default=d.control, help="COLUMN=VALUE marking negative-control wells "
                   "(default %(default)s)")
    g.add_argument("--profile", default=d.profile, help="profile blob column (default %(default)s)")
    g.add_argument("--config", type=Path, help="JSON file with any of these keys (e.g. {\"smiles\": \"smiles\"}); "
                   "flags given explicitly win")


def _columns(a: argparse.Namespace, parser: argparse.ArgumentParser) -> Columns:
    cfg = {}
    if a.config:
        try:
            cfg = json.loads(Path(a.config).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise PhenixError(f"--config {a.config}: {e}") from e
        known = {f.name for f in fields(Columns)} | {"normalize", "active_p", "n_null"} | set(
            _train_fields())
        unknown = sorted(set(cfg) - known)
        if unknown:
            raise PhenixError(f"--config {a.config}: unknown key {unknown[0]!r}; known: {', '.join(sorted(known))}")
    out = {}
    for f in fields(Columns):
        v = getattr(a, f.name)
        if f.name in cfg and v == parser.get_default(f.name):
            v = cfg[f.name]
        out[f.name] = None if v == "" else v
    for k in ("normalize", "active_p", "n_null", *_train_fields()):
        dest = k if k in ("normalize", "active_p", "n_null") else "train_" + k
        if k in cfg and hasattr(a, dest) and getattr(a, dest) == parser.get_default(dest):
            setattr(a, dest, cfg[k])
    return Columns(**out)


def _train_fields() -> list[str]:
    from dataclasses import fields as f

    from .training.recipe_config import TrainConfig

    return [x.name for x in f(TrainConfig)]


def cmd_simulate(a: argparse.Namespace) -> dict:
    from . import simulate as S
    from .training.molecules import load_molecules
    from .training.simulator import SimConfig, simulate

    ms = load_molecules()
    cfg = SimConfig(seed=a.seed, n_molecules=a.n_molecules)
    scr = simulate(ms, cfg)
    return S.write(scr, ms, a.out, table=a.table, progress=not a.quiet)


def cmd_import(a: argparse.Namespace) -> dict:
    from .importer import DEFAULT_FEATURES, import_profiles
    from .pipeline import load_manifest

    model_features = None
    if a.model:
        man = load_manifest(a.model)
        model_features = man["phenomics"].get("features")
        if model_features is None:
            raise PhenixError(f"{a.model}: the bundle records no feature names; it cannot check the import")
    conn = sqlite3.connect(a.database)
    try:
        return import_profiles(conn, a.table, a.files, include=a.features or DEFAULT_FEATURES, exclude=a.exclude,
                               chunk=a.chunk_size, append=a.append, model_features=model_features,
                               cellprofiler=a.cellprofiler, progress=not a.quiet)
    finally:
        conn.close()


def cmd_train(a: argparse.Namespace, parser: argparse.ArgumentParser) -> dict:
    cols = _columns(a, parser)
    from .pipeline import run_train
    from .training.recipe_config import TrainConfig

    cfg = TrainConfig(**{f: getattr(a, "train_" + f) for f in _train_fields()})
    cmd = "phenix " + " ".join(shlex.quote(x) for x in sys.argv[1:]) if a.command_line is None else a.command_line
    res = run_train(a.database, cols, a.out, cfg, report_dir=a.report, normalize=a.normalize, active_p=a.active_p,
                    n_null=a.n_null, skip_bad_smiles=a.skip_bad_smiles, name=a.name, force=a.force,
                    progress=not a.quiet, command=cmd, log=lambda m: print(m, file=sys.stderr),
                    training_data=a.training_data)
    if a.metrics_json:
        Path(a.metrics_json).write_text(json.dumps(res, indent=1) + "\n")
    return res


def cmd_evaluate(a: argparse.Namespace, parser: argparse.ArgumentParser) -> dict:
    cols = _columns(a, parser)
    from .pipeline import run_evaluate

    res = run_evaluate(a.database, a.model, cols, split=a.split, normalize=a.normalize, save_queries=a.save_queries,
                       progress=not a.quiet)
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1) + "\n")
    rows = [("queries", res["n_queries"]), ("active queries", res["n_active_queries"]),
            ("top-1 % recall, all", res["top1_all"]), ("top-5 % recall, all", res["top5_all"]),
            ("top-1 % recall, active", res["top1_active"]), ("top-5 % recall, active", res["top5_active"]),
            ("mAP (same molecule)", res["map_same_molecule"])]
    print("| metric | value |\n|---|---|")
    for k, v in rows:
        print(f"| {k} | {v if not isinstance(v, float) else f'{v:.4f}'} |")
    return res


def cmd_screen(a: argparse.Namespace) -> dict:
    from .pipeline import run_screen

    try:
        doses = [float(x) for x in a.doses.split(",") if x.strip()]
    except ValueError as e:
        raise PhenixError(f"--doses {a.doses!r}: expected comma-separated numbers in µM") from e
    if not a.library and not a.queries:
        raise PhenixError("nothing to do: give --library (embed molecules) and/or --queries (retrieve)")
    if a.cluster:
        from .distributed import run_screen_cluster

        return run_screen_cluster(a.database, a.cluster, a.shards, a.n_shards, a.model, a.library, doses,
                                  table=a.table, smiles_col=a.smiles_column, id_col=a.id_column or None,
                                  batch=a.batch_size, queries=a.queries, query_profile=a.query_profile,
                                  query_id=a.query_id, k=a.k, out=a.out, csv=a.csv,
                                  skip_bad_smiles=a.skip_bad_smiles, progress=not a.quiet)
    return run_screen(a.database, a.model, a.library, doses, table=a.table, smiles_col=a.smiles_column,
                      id_col=a.id_column or None, batch=a.batch_size, queries=a.queries, query_profile=a.query_profile,
                      query_id=a.query_id, k=a.k, out=a.out, csv=a.csv, skip_bad_smiles=a.skip_bad_smiles,
                      progress=not a.quiet, commit_seconds=a.commit_seconds)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="phenix", description=__doc__, epilog=EPILOG,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--version", action="version", version=f"phenix {__version__}")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("simulate", help="write the simulated screen as pycytominer CSV/Parquet or a SQLite wells table",
                       description="Writes phenix's simulated phenomic screen (docs/science.md) as a user's data "
                       "would look: raw per-well CellProfiler-style features with pycytominer Metadata_ columns. "
                       "Output type by extension: .csv, .csv.gz, .parquet, or .db/.sqlite (a wells table).",
                       epilog=EPILOG)
    p.add_argument("out", type=Path, help="output file (.csv, .csv.gz, .parquet, .db, .sqlite)")
    p.add_argument("--seed", type=int, default=0, help="simulator data seed (default 0, the default model's)")
    p.add_argument("--n-molecules", type=int, default=0, help="subsample this many molecules (0 = all 17,480)")
    p.add_argument("--table", default="wells", help="table name for .db output (default wells)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")

    p = sub.add_parser("import", help="per-well profiles (CSV, CSV.gz, Parquet, CellProfiler export) -> a wells table",
                       description="Streams per-well profiles into a new table of DATABASE: Metadata_ (and other "
                       "non-feature) columns kept as columns, the features packed into a float32 'profile' blob, "
                       "the feature names recorded in phenix_feature_lists. One transaction: the table appears "
                       "complete or not at all.", epilog=EPILOG)
    p.add_argument("database", help="SQLite database (created if missing)")
    p.add_argument("files", nargs="+", type=Path, help="input files (same layout), or CellProfiler export "
                   "directories with --cellprofiler")
    p.add_argument("--table", default="wells", help="table to create (default wells)")
    p.add_argument("--features", default=None, help="comma-separated glob patterns of feature columns "
                   "(default Cells_*,Cytoplasm_*,Nuclei_*)")
    p.add_argument("--exclude", default="", help="comma-separated glob patterns of columns that are not features")
    p.add_argument("--cellprofiler", action="store_true", help="inputs are CellProfiler export directories "
                   "(Image.csv + per-object CSVs), aggregated per well by the median")
    p.add_argument("--append", action="store_true", help="add to an existing table with the same features")
    p.add_argument("--model", type=Path, help="refuse files whose features differ from this bundle's")
    p.add_argument("--chunk-size", type=int, default=5000, help="rows per chunk; memory grows with it (default 5000)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")

    from .training.recipe_config import TrainConfig

    p = sub.add_parser("train", help="train a bundle on a wells table (needs phenix[train])",
                       description="Normalises wells per plate against the controls, calls activity from "
                       "replicates, splits molecules by Murcko scaffold, trains the MolPhenix recipe (JAX; a GPU "
                       "if JAX sees one) and writes a model bundle plus a report (metrics.json, report.md and "
                       "plots).", epilog=EPILOG)
    p.add_argument("database", help="SQLite database with the wells table")
    p.add_argument("--out", type=Path, required=True, help="bundle directory to write")
    p.add_argument("--report", type=Path, help="report directory (default <out>-report)")
    p.add_argument("--name", default="model", help="model name in the manifest (default model)")
    p.add_argument("--force", action="store_true", help="replace an existing bundle")
    _add_columns(p)
    p.add_argument("--normalize", default="center", choices=NORMALIZATIONS,
                   help="per-plate normalisation against controls (default center)")
    p.add_argument("--active-p", type=float, default=0.01, help="activity call threshold (default 0.01)")
    p.add_argument("--n-null", type=int, default=20000, help="null tuples for activity calls (default 20000)")
    p.add_argument("--skip-bad-smiles", action="store_true", help="drop wells whose SMILES RDKit cannot parse")
    g = p.add_argument_group("training recipe (docs/science.md)")
    for f in fields(TrainConfig):
        # the recipe's `batch` (pairs per step) is --batch-size: --batch is the batch column
        flag = "--batch-size" if f.name == "batch" else "--" + f.name.replace("_", "-")
        g.add_argument(flag, dest="train_" + f.name, type=type(f.default), default=f.default,
                       help=f"(default {f.default})")
    p.add_argument("--metrics-json", type=Path, help="also write the summary here")
    p.add_argument("--training-data", default=None, help="describe the data in the manifest's provenance "
                   "(default: the table and database names)")
    p.add_argument("--command-line", default=None, help=argparse.SUPPRESS)
    p.add_argument("--quiet", action="store_true", help="no progress bars")

    p = sub.add_parser("evaluate", help="recall and mAP of a bundle on a wells table",
                       description="Top-1 %% / 5 %% recall of the true (molecule, dose) among all (molecule, dose) "
                       "candidates of the table (all and active queries) and mAP (positives: the same molecule at "
                       "any dose), computed through phenix in SQL. Written as a table and, with --json, as JSON.",
                       epilog=EPILOG)
    p.add_argument("database")
    p.add_argument("--model", type=Path, required=True, help="bundle directory")
    _add_columns(p)
    p.add_argument("--split", default="all", choices=("all", "test", "val"),
                   help="all pairs, or the bundle's scaffold test / validation molecules (default all)")
    p.add_argument("--normalize", default=None, choices=NORMALIZATIONS,
                   help="per-plate normalisation (default: the bundle's)")
    p.add_argument("--json", type=Path, help="write the metrics as JSON")
    p.add_argument("--save-queries", metavar="TABLE", help="write the query profiles (plate-normalised replicate "
                   "means) with their molecule, dose and activity call into TABLE")
    p.add_argument("--quiet", action="store_true")

    p = sub.add_parser("screen", help="virtual screen: embed a library at doses, retrieve for query profiles",
                       description="Embeds a molecule library (CSV/Parquet with a SMILES column, a .smi file, or a "
                       "table) at the given doses into a phenix table, in batches with progress; an interrupted "
                       "run resumes where it stopped. With --queries, retrieves the k nearest (molecule, dose) "
                       "candidates of every query profile into an output table (and --csv).", epilog=EPILOG)
    p.add_argument("database")
    p.add_argument("--model", default="default", help="bundle directory, or 'default' (the shipped model)")
    p.add_argument("--library", help="file or table of molecules")
    p.add_argument("--smiles-column", default="smiles")
    p.add_argument("--id-column", default="id", help="compound id column ('' for row numbers)")
    p.add_argument("--doses", default="1", help="comma-separated doses in µM (default 1)")
    p.add_argument("--table", default="screen", help="phenix table of candidates (default screen)")
    p.add_argument("--batch-size", type=int, default=4096, help="molecules per embedding statement and "
                   "progress step (default 4096)")
    p.add_argument("--commit-seconds", type=float, default=3.0, help="commit the embedded batches about this "
                   "often; an interrupted run resumes after the last commit (default 3; 0 commits every batch)")
    p.add_argument("--queries", help="table with query profiles (float32 blobs)")
    p.add_argument("--query-profile", default="profile")
    p.add_argument("--query-id", default="rowid")
    p.add_argument("-k", type=int, default=10, help="candidates per query (default 10)")
    p.add_argument("--out", default="screen_hits", help="output table (default screen_hits)")
    p.add_argument("--csv", help="also write the hits as CSV")
    p.add_argument("--skip-bad-smiles", action="store_true")
    g = p.add_argument_group("sharded screen on a Dask cluster (docs/scale-out.md)")
    g.add_argument("--cluster", metavar="ADDRESS|local:N", help="run on a Dask cluster: a scheduler address "
                   "(tcp://host:8786) or local:N (N worker processes on this machine); the library is split into "
                   "--n-shards phenix databases under --shards, and queries are answered over all of them")
    g.add_argument("--shards", metavar="DIR", help="directory of the shard databases (with --cluster)")
    g.add_argument("--n-shards", type=int, default=8, help="shards to build from --library (default 8)")
    p.add_argument("--quiet", action="store_true")
    return ap


def _close_bars() -> None:
    """Ends open progress bars, so the error message starts on its own line."""
    if "tqdm" in sys.modules:
        from tqdm import tqdm

        for bar in list(getattr(tqdm, "_instances", [])):
            bar.close()


def main(argv: Optional[list[str]] = None) -> int:
    ap = build_parser()
    a = ap.parse_args(argv)
    sub = ap._subparsers._group_actions[0].choices[a.command]  # type: ignore[union-attr]
    try:
        if a.command == "simulate":
            res = cmd_simulate(a)
        elif a.command == "import":
            res = cmd_import(a)
        elif a.command == "train":
            res = cmd_train(a, sub)
        elif a.command == "evaluate":
            res = cmd_evaluate(a, sub)
        else:
            res = cmd_screen(a)
    except PhenixError as e:
        _close_bars()
        print(f"phenix {a.command}: {e}", file=sys.stderr)
        return 2
    except sqlite3.Error as e:
        _close_bars()
        print(f"phenix {a.command}: SQLite: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        _close_bars()
        print(f"phenix {a.command}: interrupted (nothing half-written; screen resumes on re-run)", file=sys.stderr)
        return 130
    if a.command != "evaluate":
        print(json.dumps(res, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
