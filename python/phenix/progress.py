"""Progress (and stopping) of long phenix SQL statements, from libphenix's progress callback.

libphenix reports its long operations (KNN scans, ``phenix_retrieve_all``, ``phenix_embed_molecules``,
``'optimize'``, ``phenix_backup``) to one process-wide callback, on the thread running the statement
(docs/embedding.md, "Cancellation and progress")::

    import sqlite3, phenix, phenix.progress
    conn = sqlite3.connect("screen.db"); phenix.load(conn)
    def show(op, done, total):
        print(f"{op}: {done}/{total}")
        return False                     # True stops the statement: it fails with "interrupted"
    phenix.progress.set_progress(show, interval_ms=200)
    ...
    phenix.progress.set_progress(None)

It is reached with ctypes on the library :func:`phenix.load` loaded (the same file, so the same library
instance). ``conn.interrupt()`` (``sqlite3``, apsw) stops long phenix work within a chunk of rows on
SQLite >= 3.41 (apsw); Debian's Python ``sqlite3`` (3.40) cannot tell phenix, so there the callback
returning ``True`` is the way to stop early.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import threading
from typing import Callable, Iterator, Optional

__all__ = ["set_progress", "bar"]

_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_char_p, ctypes.c_uint64, ctypes.c_uint64
)
_lock = threading.Lock()
_lib: Optional[ctypes.CDLL] = None
# The installed ctypes callback: kept alive here while libphenix holds it.
_installed = None


def _library() -> ctypes.CDLL:
    global _lib
    if _lib is None:
        from . import loadable_path

        path = loadable_path()
        if not os.path.splitext(path)[1] and os.path.exists(path + ".so"):
            path += ".so"
        lib = ctypes.CDLL(path)
        lib.phenix_set_progress.argtypes = [_CALLBACK, ctypes.c_void_p, ctypes.c_uint]
        lib.phenix_set_progress.restype = ctypes.c_int
        _lib = lib
    return _lib


def set_progress(callback: Optional[Callable[[str, int, int], object]], interval_ms: int = 100) -> None:
    """Installs ``callback(op, done, total)`` for every connection of this process (``None`` removes it).

    It is called at most once per ``interval_ms`` while an operation runs, and once more with
    ``done == total`` when an operation it was called for finishes. A truthy return, or an exception
    (printed), stops the statement, which then fails with ``interrupted``. Call it after
    :func:`phenix.load` (or with ``PHENIX_EXT`` set): it opens the same library.
    """
    global _installed
    with _lock:
        lib = _library()
        if callback is None:
            lib.phenix_set_progress(_CALLBACK(), None, 0)
            _installed = None
            return

        def trampoline(_ctx, _db, op, done, total):
            try:
                return 1 if callback(op.decode(), int(done), int(total)) else 0
            except BaseException:  # noqa: BLE001 - reported, and the statement stops
                import traceback

                traceback.print_exc()
                return 1

        cb = _CALLBACK(trampoline)
        lib.phenix_set_progress(cb, None, int(interval_ms))
        # The previous callback may still be running on another thread; keep both alive until the
        # process ends rather than free one that libphenix might call.
        _installed = (cb, _installed)


@contextlib.contextmanager
def bar(desc: str, disable: bool = False, interval_ms: int = 200) -> Iterator[None]:
    """A tqdm progress bar fed by the phenix operations of the statements run inside the block (one
    bar, restarted for each operation; its label says which). Nothing is shown when ``disable``."""
    if disable:
        yield
        return
    from tqdm import tqdm

    state = {"bar": None, "key": None}

    def show(op: str, done: int, total: int) -> bool:
        b = state["bar"]
        if b is None or state["key"] != (op, total) or done < b.n:
            if b is not None:
                b.close()
            b = tqdm(total=total, desc=f"{desc} ({op})", unit="", unit_scale=True, leave=False)
            state["bar"], state["key"] = b, (op, total)
        b.update(done - b.n)
        return False

    set_progress(show, interval_ms)
    try:
        yield
    finally:
        set_progress(None)
        if state["bar"] is not None:
            state["bar"].close()
