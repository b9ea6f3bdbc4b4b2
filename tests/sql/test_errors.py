"""The SQLite result code of each class of phenix error, as a host sees it (Python's ``sqlite3``,
``e.sqlite_errorcode``): a damaged vector file is SQLITE_CORRUPT (extended SQLITE_CORRUPT_VTAB), a
missing one SQLITE_CANTOPEN, a read snapshot that names a file a later compaction replaced SQLITE_BUSY,
a bad argument SQLITE_ERROR. Each message keeps the ``phenix: `` prefix."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

SQLITE_CORRUPT_VTAB = sqlite3.SQLITE_CORRUPT | (1 << 8)


def connect(ext: Path, db: Path) -> sqlite3.Connection:
    c = sqlite3.connect(db, isolation_level=None)
    c.enable_load_extension(True)
    c.load_extension(str(ext))
    c.enable_load_extension(False)
    return c


def make_table(ext: Path, db: Path) -> Path:
    """A table of 4 vectors in ``db``; returns its vector file."""
    c = connect(ext, db)
    c.executescript(
        "CREATE VIRTUAL TABLE t USING phenix(v float32[4] distance=l2, n INTEGER);"
        "INSERT INTO t(rowid, v, n) VALUES (1, '[1,0,0,0]', 1), (2, '[0,1,0,0]', 2),"
        " (3, '[0,0,1,0]', 3), (4, '[0,0,0,1]', 4);"
    )
    c.close()
    (phx,) = sorted(Path(f"{db}-phenix").glob("*.phx"))
    return phx


def error_of(ext: Path, db: Path, sql: str) -> sqlite3.Error:
    c = connect(ext, db)
    try:
        with pytest.raises(sqlite3.Error) as e:
            c.execute(sql).fetchall()
        return e.value
    finally:
        c.close()


QUERY = "SELECT rowid FROM t WHERE v MATCH '[1,0,0,0]' AND k = 2"


def test_a_damaged_header_is_sqlite_corrupt(ext, tmp_path):
    db = tmp_path / "c.db"
    phx = make_table(ext, db)
    b = bytearray(phx.read_bytes())
    b[40] ^= 0xFF  # inside the table id: the header checksum no longer matches
    phx.write_bytes(bytes(b))
    e = error_of(ext, db, QUERY)
    assert e.sqlite_errorcode == SQLITE_CORRUPT_VTAB, (e.sqlite_errorcode, str(e))
    assert e.sqlite_errorcode & 0xFF == sqlite3.SQLITE_CORRUPT
    assert "phenix: " in str(e) and "header is corrupt" in str(e), str(e)


def test_a_truncated_file_is_sqlite_corrupt(ext, tmp_path):
    db = tmp_path / "t.db"
    phx = make_table(ext, db)
    size = phx.stat().st_size
    with open(phx, "r+b") as f:
        f.truncate(size - 1)  # the last committed row is no longer complete
    e = error_of(ext, db, QUERY)
    assert e.sqlite_errorcode == SQLITE_CORRUPT_VTAB, (e.sqlite_errorcode, str(e))
    assert "truncated" in str(e), str(e)


def test_a_missing_file_is_sqlite_cantopen(ext, tmp_path):
    db = tmp_path / "m.db"
    phx = make_table(ext, db)
    phx.unlink()
    e = error_of(ext, db, QUERY)
    assert e.sqlite_errorcode == sqlite3.SQLITE_CANTOPEN, (e.sqlite_errorcode, str(e))
    assert "phenix: " in str(e), str(e)


def test_a_snapshot_older_than_a_compaction_is_sqlite_busy(ext, tmp_path):
    # What a WAL reader sees when its snapshot names generation 0 but a committed compaction replaced
    # that file with generation 1 and the next writer removed it: the file named is gone and a newer one
    # exists. Renaming the file makes that state directly.
    db = tmp_path / "b.db"
    phx = make_table(ext, db)
    phx.rename(phx.with_name(phx.name.replace(".g0.", ".g1.")))
    e = error_of(ext, db, QUERY)
    assert e.sqlite_errorcode == sqlite3.SQLITE_BUSY, (e.sqlite_errorcode, str(e))
    assert "retry the transaction" in str(e), str(e)


@pytest.mark.parametrize(
    "sql, words",
    [
        ("SELECT rowid FROM t WHERE v MATCH '[1,0,0,0]' AND k = 0", "must be a positive integer"),
        ("SELECT rowid FROM t WHERE v MATCH '[1,0]' AND k = 2", "expects"),
        ("INSERT INTO t(t) VALUES ('defragment')", "unknown command"),
        ("SELECT phenix_distance_l2('[1]', 'x')", "malformed JSON"),
    ],
)
def test_bad_arguments_are_sqlite_error(ext, tmp_path, sql, words):
    db = tmp_path / "e.db"
    make_table(ext, db)
    e = error_of(ext, db, sql)
    assert e.sqlite_errorcode == sqlite3.SQLITE_ERROR, (e.sqlite_errorcode, str(e))
    assert str(e).startswith("phenix: ") and words in str(e), str(e)


def test_a_damaged_shadow_table_is_sqlite_corrupt(ext, tmp_path):
    db = tmp_path / "s.db"
    make_table(ext, db)
    c = sqlite3.connect(db, isolation_level=None)
    c.execute("UPDATE t_rows SET slot = 99 WHERE rowid = 2")  # a row pointing past the file
    c.close()
    e = error_of(ext, db, QUERY)
    assert e.sqlite_errorcode == SQLITE_CORRUPT_VTAB, (e.sqlite_errorcode, str(e))
    assert "run phenix_check" in str(e), str(e)
