"""phenix: contrastive molecule <-> cell-phenotype retrieval inside SQLite.

The package carries the loadable SQLite extension ``libphenix`` and puts it into a connection the way
``sqlite_vec.load`` does::

    import sqlite3, phenix
    conn = sqlite3.connect("screen.db")
    phenix.load(conn)                      # Python's sqlite3 or an apsw.Connection
    conn.execute("SELECT phenix_version()").fetchone()

Progress of long phenix statements, and stopping them from the callback, is ``phenix.progress``.
The command line (``phenix import | train | evaluate | screen | simulate``) is ``phenix.cli``; the
training recipe (``pip install phenix[train]``: JAX, optax, ONNX, RDKit) is ``phenix.training``. Importing
``phenix`` itself needs neither.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Any, Optional

__all__ = ["load", "loadable_path", "ort_library_path", "__version__", "PhenixError"]

__version__ = "0.1.0"

_HERE = Path(__file__).resolve().parent


class PhenixError(Exception):
    """A user-facing error: bad input, a missing column, a bundle that does not fit the data.

    The command line prints ``phenix <command>: <message>`` (one line) and exits with status 2.
    """


def loadable_path() -> str:
    """Path of the loadable extension without its file suffix, as ``conn.load_extension`` takes it.

    The wheel carries ``libphenix*.so`` next to this file. In a source checkout without an installed
    build, ``<checkout>/target/release/libphenix.so`` (from ``cargo build --release -p
    phenix-extension``) is used. ``PHENIX_EXT`` (a path to the ``.so``) overrides both.
    """
    env = os.environ.get("PHENIX_EXT")
    if env:
        return _strip_suffix(env)
    found = sorted(glob.glob(str(_HERE / "libphenix*.so")) + glob.glob(str(_HERE / "libphenix*.dylib")))
    if found:
        return _strip_suffix(found[0])
    dev = _HERE.parents[1] / "target" / "release" / "libphenix.so"
    if dev.exists():
        return _strip_suffix(str(dev))
    raise PhenixError(
        f"libphenix is not in {_HERE}: install the package with pip (`pip install ./python`), or build it "
        "with `cargo build --release -p phenix-extension`, or set PHENIX_EXT to the .so"
    )


def _strip_suffix(path: str) -> str:
    # SQLite appends the platform suffix itself, and derives the entry point sqlite3_phenix_init from
    # the file name up to its first '.', so `libphenix.cpython-311-x86_64-linux-gnu.so` works too.
    for suffix in (".so", ".dylib", ".dll"):
        if path.endswith(suffix):
            return path[: -len(suffix)]
    return path


def ort_library_path() -> Optional[str]:
    """The ONNX Runtime shared library of the installed ``onnxruntime`` wheel, if there is one.

    phenix opens ONNX Runtime at run time (docs/models.md, "Where the ONNX Runtime library is found");
    :func:`load` points ``ORT_DYLIB_PATH`` here when the variable is unset.
    """
    try:
        import importlib.util

        spec = importlib.util.find_spec("onnxruntime")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        libs = sorted(glob.glob(os.path.join(loc, "capi", "libonnxruntime.so*")))
        libs += sorted(glob.glob(os.path.join(loc, "capi", "libonnxruntime*.dylib")))
        if libs:
            return libs[0]
    return None


def _set_ort_env() -> None:
    if not os.environ.get("ORT_DYLIB_PATH") and not os.environ.get("PHENIX_ROOT"):
        lib = ort_library_path()
        if lib:
            os.environ["ORT_DYLIB_PATH"] = lib


def load(conn: Any) -> None:
    """Loads phenix into ``conn``: a ``sqlite3.Connection`` or an ``apsw.Connection``.

    Extension loading is enabled for the call and disabled again afterwards (as ``sqlite_vec.load``
    leaves it to the caller, this function restores the off state for ``sqlite3``). One process can use
    libphenix with one SQLite library only (docs/sql.md, "Loading"): load it into ``sqlite3`` or into
    ``apsw`` connections, not both.
    """
    _set_ort_env()
    path = loadable_path()
    mod = type(conn).__module__
    if mod.startswith("apsw"):
        conn.enable_load_extension(True)
        try:
            conn.load_extension(path + ".so" if os.path.exists(path + ".so") else path)
        finally:
            conn.enable_load_extension(False)
        return
    if not hasattr(conn, "enable_load_extension"):
        raise PhenixError(
            "this Python's sqlite3 module cannot load extensions (built without "
            "SQLITE_ENABLE_LOAD_EXTENSION); use Debian's /usr/bin/python3 or apsw"
        )
    conn.enable_load_extension(True)
    try:
        conn.load_extension(path)
    finally:
        conn.enable_load_extension(False)


def connect(database: str, **kwargs: Any):
    """``sqlite3.connect(database, **kwargs)`` with phenix loaded (a convenience for the command line)."""
    import sqlite3

    conn = sqlite3.connect(database, **kwargs)
    load(conn)
    return conn
