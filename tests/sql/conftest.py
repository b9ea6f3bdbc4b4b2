"""Fixtures for the SQL tests: the built libphenix.so and three hosts that load it.

Hosts (each a fresh database in its own temporary directory):
- ``sqlite3``: the venv's Python ``sqlite3`` module (Debian's, SQLite 3.40.1);
- ``apsw``: apsw with its bundled current SQLite (3.54.x), in a child process per call (one process can
  use libphenix.so with one SQLite library only);
- ``cli``: the ``/usr/bin/sqlite3`` command-line shell (3.40.1), one process per call, ``.load``.

The extension is built once per session with ``cargo build --release -p phenix-extension`` unless
``PHENIX_SKIP_BUILD=1`` (``tools/test-sql`` builds it first and sets that). ``PHENIX_EXT`` overrides the
library path.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SQLITE3_CLI = os.environ.get("PHENIX_SQLITE3_CLI", "/usr/bin/sqlite3")


def _lib_path() -> Path:
    return Path(os.environ.get("PHENIX_EXT", ROOT / "target" / "release" / "libphenix.so"))


@pytest.fixture(scope="session")
def ext() -> Path:
    """Path of libphenix.so (built here unless PHENIX_SKIP_BUILD=1)."""
    if os.environ.get("PHENIX_SKIP_BUILD") != "1":
        subprocess.run(
            ["nice", "-n", "10", "cargo", "build", "--release", "-p", "phenix-extension"],
            cwd=ROOT,
            check=True,
        )
    lib = _lib_path()
    if not lib.exists():
        pytest.fail(f"{lib} does not exist; run `cargo build --release -p phenix-extension`")
    return lib


class HostError(Exception):
    """An SQL error reported by a host; ``str()`` is SQLite's message."""


class Host:
    """A database with phenix loaded. ``run(sql)`` executes a script and returns the rows of its last
    statement as tuples of Python values (bytes, str, int, float, None)."""

    name: str

    def run(self, sql: str) -> list[tuple]:
        raise NotImplementedError

    def one(self, sql: str):
        rows = self.run(sql)
        assert len(rows) == 1 and len(rows[0]) == 1, rows
        return rows[0][0]

    def error(self, sql: str) -> str:
        try:
            rows = self.run(sql)
        except HostError as e:
            return str(e)
        raise AssertionError(f"{self.name}: expected an error from {sql!r}, got {rows!r}")


def _split(sql: str) -> list[str]:
    stmts, cur = [], ""
    for piece in sql.split(";"):
        cur += piece
        if sqlite3.complete_statement(cur + ";"):
            if cur.strip():
                stmts.append(cur.strip())
            cur = ""
        else:
            cur += ";"
    if cur.strip():
        stmts.append(cur.strip())
    return stmts


class PySqlite3Host(Host):
    name = "sqlite3"

    def __init__(self, ext: Path, db: Path):
        self.conn = sqlite3.connect(db, isolation_level=None)
        self.conn.enable_load_extension(True)
        self.conn.load_extension(str(ext))
        self.conn.enable_load_extension(False)
        self.version = sqlite3.sqlite_version

    def run(self, sql):
        rows = []
        try:
            for st in _split(sql):
                rows = [tuple(r) for r in self.conn.execute(st).fetchall()]
        except sqlite3.Error as e:
            raise HostError(str(e)) from None
        return rows


_APSW_RUNNER = r"""
import json, sys
import apsw
db, ext = sys.argv[1], sys.argv[2]
conn = apsw.Connection(db)
conn.enable_load_extension(True)
conn.load_extension(ext)
def enc(v):
    return {"b": v.hex()} if isinstance(v, bytes) else v
rows = []
try:
    for st in json.loads(sys.stdin.read()):
        rows = [[enc(v) for v in r] for r in conn.execute(st).fetchall()]
    out = {"rows": rows}
except apsw.Error as e:
    out = {"error": str(e)}
conn.close()
print(json.dumps({"version": apsw.sqlite_lib_version(), **out}))
"""


class ApswHost(Host):
    """apsw (its own bundled SQLite) in a child process per call.

    Not in the pytest process: libphenix.so serves one SQLite library per process (rusqlite's loadable
    bindings keep the host's API table in process-wide statics), and the pytest process already loaded
    it into Python's sqlite3 module. The extension refuses a second library; see
    test_a_second_sqlite_library_in_one_process_is_refused."""

    name = "apsw"

    def __init__(self, ext: Path, db: Path):
        self.ext = ext
        self.db = db
        self.version = self._call([])["version"]

    def _call(self, statements: list[str]) -> dict:
        p = subprocess.run(
            [sys.executable, "-c", _APSW_RUNNER, str(self.db), str(self.ext)],
            input=json.dumps(statements),
            capture_output=True,
            text=True,
            cwd=self.db.parent,
            timeout=120,
        )
        if p.returncode != 0:
            raise AssertionError(f"apsw child process failed ({p.returncode}): {p.stderr}")
        return json.loads(p.stdout)

    def run(self, sql):
        out = self._call(_split(sql))
        if "error" in out:
            raise HostError(out["error"])
        return [
            tuple(bytes.fromhex(v["b"]) if isinstance(v, dict) else v for v in r) for r in out["rows"]
        ]


_QUOTE_TOKEN = re.compile(r"X'([0-9A-Fa-f]*)'|'((?:[^']|'')*)'|(NULL)|([-+0-9.eE]+|Inf|-Inf)")
_CLI_ERROR = re.compile(r"^(?:Runtime|Parse) error near line \d+: (.*)$|^Error: (?:near line \d+: )?(.*)$")


class CliHost(Host):
    """``/usr/bin/sqlite3`` in ``.mode quote`` (exact: reals printed with 20 significant digits)."""

    name = "cli"

    def __init__(self, ext: Path, db: Path):
        self.ext = ext
        self.db = db
        out = subprocess.run([SQLITE3_CLI, "--version"], capture_output=True, text=True, check=True)
        self.version = out.stdout.split()[0]

    def raw(self, sql: str, mode: str = "quote") -> subprocess.CompletedProcess:
        script = f".mode {mode}\n{sql}\n"
        return subprocess.run(
            [SQLITE3_CLI, "-bail", "-cmd", f".load {self.ext.with_suffix('')}", str(self.db)],
            input=script.encode(),
            capture_output=True,
            cwd=self.db.parent,
            timeout=60,
        )

    def run(self, sql):
        p = self.raw(sql)
        err = p.stderr.decode()
        if p.returncode != 0 or err:
            first = err.strip().splitlines()[0] if err.strip() else f"exit {p.returncode}"
            m = _CLI_ERROR.match(first)
            raise HostError((m.group(1) or m.group(2)) if m else first)
        rows = []
        for line in p.stdout.decode().splitlines():
            row, pos = [], 0
            while pos < len(line):
                m = _QUOTE_TOKEN.match(line, pos)
                assert m, f"cannot parse CLI output {line!r} at {pos}"
                if m.group(1) is not None:
                    row.append(bytes.fromhex(m.group(1)))
                elif m.group(2) is not None:
                    row.append(m.group(2).replace("''", "'"))
                elif m.group(3):
                    row.append(None)
                else:
                    t = m.group(4)
                    row.append(float(t) if any(c in t for c in ".eEI") else int(t))
                pos = m.end()
                if pos < len(line):
                    assert line[pos] == ",", line
                    pos += 1
            rows.append(tuple(row))
        return rows


HOSTS = {"sqlite3": PySqlite3Host, "apsw": ApswHost, "cli": CliHost}


@pytest.fixture(params=list(HOSTS))
def host(request, ext, tmp_path) -> Host:
    """Each test runs once per host, in its own temporary directory."""
    return HOSTS[request.param](ext, tmp_path / "test.db")


@pytest.fixture
def py_host(ext, tmp_path) -> PySqlite3Host:
    return PySqlite3Host(ext, tmp_path / "test.db")
