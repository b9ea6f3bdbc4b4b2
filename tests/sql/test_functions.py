"""The vector functions of libphenix.so in three hosts (Python sqlite3 3.40.1, apsw 3.54, the 3.40.1
CLI), checked against numpy. Every test runs once per host (see conftest.py)."""

from __future__ import annotations

import re
import tomllib

import numpy as np
import pytest

from conftest import ROOT


def lit(v) -> str:
    """An SQL literal: bytes -> X'..', str -> '..'."""
    if isinstance(v, bytes):
        return "X'" + v.hex() + "'"
    return "'" + v.replace("'", "''") + "'"


def as_json(a: np.ndarray) -> str:
    # repr of a Python float of an f32 value reads back as the same f32.
    return "[" + ", ".join(repr(float(x)) for x in a) + "]"


def f32b(a) -> bytes:
    return np.asarray(a, dtype="<f4").tobytes()


def f16b(a) -> bytes:
    return np.asarray(a, dtype="<f2").tobytes()


def rand(seed: int, dim: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-2, 2, dim).astype(np.float32)


DIMS = [1, 3, 8, 17, 256, 1000]


def test_loads_and_reports_the_workspace_version(host):
    want = tomllib.loads((ROOT / "Cargo.toml").read_text())["workspace"]["package"]["version"]
    assert host.one("SELECT phenix_version()") == want


def test_encodings_match_numpy(host):
    v = np.array([1, 2.5, -3, 65504, 0.1, 1e-3], dtype=np.float32)
    j = as_json(v)
    assert host.one(f"SELECT phenix_f32({lit(j)})") == f32b(v)
    assert host.one(f"SELECT phenix_f16({lit(j)})") == f16b(v)
    assert host.one(f"SELECT phenix_f16({lit(f32b(v))})") == f16b(v)
    assert host.one(f"SELECT phenix_f32({lit(f16b(v))}, 'float16')") == f32b(np.frombuffer(f16b(v), "<f2"))
    assert host.one(f"SELECT phenix_dims({lit(f16b(v))}, 'float16')") == 6
    assert host.one(f"SELECT phenix_dims({lit(f32b(v))})") == 6
    back = host.one(f"SELECT phenix_to_json({lit(f32b(v))})")
    assert np.array_equal(np.array(eval(back), dtype=np.float32), v), back
    back16 = host.one(f"SELECT phenix_to_json({lit(f16b(v))}, 'float16')")
    assert np.array_equal(np.array(eval(back16), dtype=np.float16), v.astype(np.float16)), back16


@pytest.mark.parametrize("dim", DIMS)
def test_distances_match_numpy(host, dim):
    a, b = rand(dim, dim), rand(dim + 1000, dim)
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    dot = float(a64 @ b64)
    cos = 1 - dot / (np.linalg.norm(a64) * np.linalg.norm(b64))
    l2 = float(np.linalg.norm(a64 - b64))
    for x, y in [(f32b(a), f32b(b)), (as_json(a), as_json(b)), (as_json(a), f32b(b))]:
        got = host.run(
            f"SELECT phenix_distance_cosine({lit(x)}, {lit(y)}), phenix_distance_l2({lit(x)}, {lit(y)}),"
            f" phenix_dot({lit(x)}, {lit(y)})"
        )[0]
        np.testing.assert_allclose(got, [cos, l2, dot], rtol=1e-5, atol=1e-5)
    # float16 blobs: the reference is computed from the f16-rounded values.
    a16, b16 = a.astype(np.float16).astype(np.float64), b.astype(np.float16).astype(np.float64)
    got = host.run(
        f"SELECT phenix_distance_l2({lit(f16b(a))}, {lit(f16b(b))}, 'float16'),"
        f" phenix_dot({lit(f16b(a))}, {lit(f16b(b))}, 'float16')"
    )[0]
    np.testing.assert_allclose(got, [np.linalg.norm(a16 - b16), a16 @ b16], rtol=1e-5, atol=1e-5)


def test_normalize_matches_numpy_and_keeps_the_encoding(host):
    v = rand(7, 33)
    want = (v.astype(np.float64) / np.linalg.norm(v.astype(np.float64))).astype(np.float32)
    got = np.frombuffer(host.one(f"SELECT phenix_normalize({lit(f32b(v))})"), "<f4")
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    got16 = host.one(f"SELECT phenix_normalize({lit(f16b(v))}, 'float16')")
    assert isinstance(got16, bytes) and len(got16) == 2 * 33
    v16 = v.astype(np.float16).astype(np.float64)
    np.testing.assert_allclose(np.frombuffer(got16, "<f2"), v16 / np.linalg.norm(v16), atol=1e-3)
    assert host.one("SELECT phenix_normalize('[3, 4]')") == "[0.6,0.8]"


def test_mean_by_group_matches_numpy(host):
    rng = np.random.default_rng(3)
    groups = {f"c{g}": rng.normal(size=(n, 12)).astype(np.float32) for g, n in enumerate([1, 2, 5, 9])}
    rows = ",".join(f"({lit(g)}, {lit(f32b(v))})" for g, m in groups.items() for v in m)
    got = host.run(
        f"CREATE TABLE r(compound TEXT, v BLOB); INSERT INTO r VALUES {rows}, ('c1', NULL);"
        " SELECT compound, phenix_mean(v) FROM r GROUP BY compound ORDER BY compound"
    )
    assert [g for g, _ in got] == sorted(groups)
    for g, blob in got:
        want = groups[g].astype(np.float64).mean(axis=0)
        np.testing.assert_allclose(np.frombuffer(blob, "<f4"), want, rtol=1e-6, atol=1e-6)


def test_sql_nulls(host):
    assert host.run("SELECT phenix_dims(NULL), phenix_dot(NULL, '[1]'), phenix_f16(NULL)") == [
        (None, None, None)
    ]
    assert host.one("SELECT phenix_mean(NULL)") is None


ERRORS = [
    (
        "SELECT phenix_distance_l2('[1, 2, 3]', '[1, 2]')",
        "phenix: phenix_distance_l2(): the vectors differ in dimension (argument 1 has 3 elements, argument 2 has 2)",
    ),
    (
        "SELECT phenix_dims('[1, 2')",
        "phenix: phenix_dims() argument 1: malformed JSON vector at character 6: expected ',' or ']', found the end"
        " of the text (a vector is JSON text like '[1, 2.5, -3]')",
    ),
    (
        "SELECT phenix_f16('[1, 70000]')",
        "phenix: phenix_f16() argument 1: element 1 is 70000: outside float16's range (|x| <= 65504); store it as"
        " float32 or scale the vector",
    ),
    (
        "SELECT phenix_dims(x'0000c07f')",
        "phenix: phenix_dims() argument 1: element 0 is NaN: vectors hold finite numbers only (no NaN or infinity)",
    ),
    (
        "SELECT phenix_dims(x'000000')",
        "phenix: phenix_dims() argument 1 expects a float32 blob: got a 3-byte blob (a float32 blob has 4 bytes per"
        " element; for a float16 blob pass 'float16' as the last argument)",
    ),
    (
        "SELECT phenix_mean(v) FROM (SELECT '[1]' AS v UNION ALL SELECT '[1, 2]')",
        "phenix: phenix_mean(): vector 2 of the group has 2 elements, the ones before it have 1",
    ),
    ("SELECT phenix_dims(1.5)", "phenix: phenix_dims() argument 1 expects a vector (JSON text or a float32 blob): got a real number"),
    ("SELECT phenix_dims('[1]', 'float64')", "phenix: phenix_dims() argument 2 is the element type of blob arguments and must be 'float32' or 'float16': got 'float64'"),
    ("SELECT phenix_dims()", "wrong number of arguments to function phenix_dims()"),
]


@pytest.mark.parametrize("sql,message", ERRORS, ids=[e[0][:40] for e in ERRORS])
def test_error_messages(host, sql, message):
    assert host.error(sql) == message
    # The connection is still usable after the error (nothing aborted, nothing left half-done).
    assert host.one("SELECT phenix_dims('[1, 2]')") == 2


def test_sqlite_vec_blobs_are_interchangeable(py_host):
    import sqlite_vec

    py_host.conn.enable_load_extension(True)
    sqlite_vec.load(py_host.conn)
    py_host.conn.enable_load_extension(False)
    a, b = rand(1, 64), rand(2, 64)
    c = py_host.conn
    assert c.execute("SELECT vec_f32(?) = phenix_f32(?)", [as_json(a), as_json(a)]).fetchone()[0] == 1
    pairs = [("l2", "l2"), ("cosine", "cosine")]
    for ours, theirs in pairs:
        mine, vecs = c.execute(
            f"SELECT phenix_distance_{ours}(vec_f32(?1), ?2), vec_distance_{theirs}(?1, phenix_f32(?2))",
            [f32b(a), as_json(b)],
        ).fetchone()
        assert mine == pytest.approx(vecs, rel=1e-5, abs=1e-6)
    assert c.execute("SELECT phenix_dims(vec_normalize(vec_f32(?)))", [f32b(a)]).fetchone()[0] == 64


def test_cli_and_python_report_the_host_versions_we_claim(ext, tmp_path):
    from conftest import ApswHost, CliHost, PySqlite3Host

    assert PySqlite3Host(ext, tmp_path / "a.db").version.startswith("3.40.")
    assert CliHost(ext, tmp_path / "b.db").version.startswith("3.40.")
    assert re.match(r"3\.(4[5-9]|[5-9]\d)\.", ApswHost(ext, tmp_path / "c.db").version)


def test_entry_point_is_exported(ext):
    import ctypes

    lib = ctypes.CDLL(str(ext))
    assert hasattr(lib, "sqlite3_phenix_init")


TOO_OLD_HOST = r"""
import ctypes, sys
lib = ctypes.CDLL(sys.argv[1])
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
VERSION = ctypes.CFUNCTYPE(ctypes.c_int)(lambda: 3039004)
MALLOC = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_int)(lambda n: libc.malloc(n))
# sqlite3_api_routines is an append-only array of function pointers (sqlite3ext.h): libversion_number is
# entry 67 and malloc entry 68 in every version; all others stay NULL.
api = (ctypes.c_void_p * 300)()
api[67] = ctypes.cast(VERSION, ctypes.c_void_p).value
api[68] = ctypes.cast(MALLOC, ctypes.c_void_p).value
init = lib.sqlite3_phenix_init
init.restype = ctypes.c_int
init.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p), ctypes.c_void_p]
err = ctypes.c_void_p()
rc = init(None, ctypes.byref(err), ctypes.cast(api, ctypes.c_void_p))
print(rc, ctypes.string_at(err.value).decode() if err.value else None)
"""


def test_a_too_old_host_gets_a_message_not_a_crash(ext):
    """The real .so's entry point, called with a fake API table of a 3.39.4 host (no SQLite that old is
    installed). In a subprocess, so an abort would fail the test rather than kill pytest."""
    import subprocess
    import sys

    p = subprocess.run([sys.executable, "-c", TOO_OLD_HOST, str(ext)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "1 phenix needs SQLite >= 3.40.0, host is 3.39.4"


SECOND_LIBRARY = r"""
import sqlite3, sys
import apsw
ext = sys.argv[1]
a = sqlite3.connect(":memory:")
a.enable_load_extension(True)
a.load_extension(ext)
b = apsw.Connection(":memory:")
b.enable_load_extension(True)
try:
    b.load_extension(ext)
    print("loaded")
except apsw.Error as e:
    print(e)
print(a.execute("SELECT phenix_dims('[1, 2]')").fetchone()[0])
"""


def test_a_second_sqlite_library_in_one_process_is_refused(ext):
    """Python's sqlite3 (system SQLite) and apsw (its own SQLite) in one process: rusqlite's loadable
    bindings keep one global API table, so the second library must be refused (it would redirect the first
    library's connections into the second one and crash)."""
    import subprocess
    import sys

    p = subprocess.run([sys.executable, "-c", SECOND_LIBRARY, str(ext)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.strip().split("\n")
    assert "libphenix.so is already loaded into another SQLite library in this process" in lines[0], lines
    assert lines[1] == "2"


def test_blobs_carry_their_element_type_through_chained_calls(host):
    """Every blob phenix returns is tagged with an SQLite subtype (float16 / float32), so a chained
    call reads it right without the element-type argument; a stored blob loses the tag (SQLite
    drops subtypes on storage) and needs the argument again. Run on 3.40 (CLI, Python) and 3.54."""
    assert host.one("SELECT phenix_to_json(phenix_f16('[1, 2.5, -3]'))") == "[1,2.5,-3]"
    assert host.one("SELECT phenix_dims(phenix_f16('[1, 2, 3, 4]'))") == 4
    assert host.one("SELECT phenix_to_json(phenix_f32(phenix_f16('[1, 2.5, -3]')))") == "[1,2.5,-3]"
    assert host.one("SELECT phenix_to_json(phenix_normalize(phenix_f16('[0, 2]')))") == "[0,1]"
    # Mixed: a float16 and a float32 blob in one call, each read by its own tag.
    assert host.one("SELECT phenix_distance_l2(phenix_f16('[0, 0]'), phenix_f32('[3, 4]'))") == 5.0
    # An aggregate's result is tagged too.
    assert host.one(
        "SELECT phenix_to_json(phenix_mean(phenix_f16(x))) FROM (SELECT '[1, 2]' AS x UNION ALL SELECT '[3, 4]')"
    ) == "[2,3]"
    # A subquery's column drops the tag (SQLite passes subtypes only from call to call): the
    # 4-byte float16 blobs are read as float32 — one element — unless told.
    assert host.one(
        "SELECT phenix_dims(phenix_mean(x)) FROM (SELECT phenix_f16('[1, 2]') AS x UNION ALL SELECT phenix_f16('[3, 4]'))"
    ) == 1
    assert host.one(
        "SELECT phenix_to_json(phenix_mean(x, 'float16')) FROM (SELECT phenix_f16('[1, 2]') AS x UNION ALL SELECT phenix_f16('[3, 4]'))"
    ) == "[2,3]"
    # Contradicting the tag is an error, not a reinterpretation.
    e = host.error("SELECT phenix_to_json(phenix_f16('[1, 2]'), 'float32')")
    assert "is a float16 blob" in e and "'float32'" in e, e
    # Stored in a column, the tag is gone: the blob reads as float32 unless told.
    host.run("CREATE TABLE t(v BLOB)")
    host.run("INSERT INTO t VALUES (phenix_f16('[1, 2.5, -3, 4]'))")
    assert host.one("SELECT phenix_dims(v) FROM t") == 2
    assert host.one("SELECT phenix_to_json(v, 'float16') FROM t") == "[1,2.5,-3,4]"
    # Embeddings are float16 blobs and say so.
    assert host.one("SELECT phenix_dims(phenix_embed_molecule('default', 'CCO', 1.0))") == 256


def test_an_error_quoting_a_nul_byte_keeps_its_message(host):
    """SQLite takes error messages as C strings: a message quoting a NUL from the argument was
    dropped whole ("SQL logic error"). The NUL is written as \\0 instead."""
    e = host.error("SELECT phenix_dims('[1' || char(0) || ']')")
    assert "phenix: phenix_dims() argument 1: malformed JSON vector" in e and "\\0" in e, e
