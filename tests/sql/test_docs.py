"""Runs every example in docs/sql.md and docs/analysis.md through the real sqlite3 CLI (and Python's
sqlite3) and compares with the recorded output.

Rules for docs/sql.md (stated at the top of that file too):
- every ```sql block is followed by an ```output block with exactly what ``/usr/bin/sqlite3`` prints in
  its default list mode: stdout, then stderr; an empty output block means no output;
- the blocks of one ``## `` section run in order against one database file, fresh for each section, in a
  temporary directory that is also the working directory; phenix is loaded with ``-cmd .load``;
- no dot-commands in examples (the Python run could not follow them), except ``.import --csv FILE
  TABLE`` in docs/analysis.md, which the Python run replays (every column TEXT, as the CLI creates them);
  the worked example's ``plate.csv`` is written by ``models/training/plate_csv.py`` before its section.

Nothing is skipped: a sql block without an output block, or an output block without a sql block, fails
the structure test. ``PHENIX_DOCS_REGEN=1`` rewrites the output blocks from the CLI instead of comparing
(then review the diff).
"""

from __future__ import annotations

import csv
import os
import re
import sqlite3
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conftest import ROOT, SQLITE3_CLI, _split as split_statements

DOC = ROOT / "docs" / "sql.md"
ANALYSIS = ROOT / "docs" / "analysis.md"
DOCS = {"sql.md": DOC, "analysis.md": ANALYSIS}
# Sections that read plate.csv (written before they run).
NEEDS_PLATE = {("analysis.md", "Worked example")}


@dataclass
class Example:
    section: str
    line: int  # 1-based line of the ```sql fence
    sql: str
    output: str | None  # None: no output block follows
    out_span: tuple[int, int] | None = None  # lines of the output body [start, end) (0-based)


@dataclass
class Doc:
    lines: list[str]
    examples: list[Example] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def parse(text: str, allow_import: bool = False) -> Doc:
    lines = text.split("\n")
    doc = Doc(lines)
    section = "(preamble)"
    i = 0
    pending: Example | None = None
    while i < len(lines):
        ln = lines[i]
        if ln.startswith("## "):
            section = ln[3:].strip()
        m = re.match(r"^```(\w*)\s*$", ln)
        if not m:
            if pending and ln.strip():
                doc.problems.append(f"line {pending.line}: ```sql block not followed by an ```output block")
                pending = None
            i += 1
            continue
        lang = m.group(1)
        j = i + 1
        while j < len(lines) and not lines[j].startswith("```"):
            j += 1
        if j == len(lines):
            doc.problems.append(f"line {i + 1}: unterminated ``` block")
            break
        body = "\n".join(lines[i + 1 : j])
        if lang == "sql":
            if pending:
                doc.problems.append(f"line {pending.line}: ```sql block not followed by an ```output block")
            pending = Example(section, i + 1, body, None)
            doc.examples.append(pending)
        elif lang == "output":
            if pending is None:
                doc.problems.append(f"line {i + 1}: ```output block without a ```sql block before it")
            else:
                pending.output = body
                pending.out_span = (i + 1, j)
                pending = None
        else:
            if pending:
                doc.problems.append(f"line {pending.line}: ```sql block not followed by an ```output block")
                pending = None
        i = j + 1
    if pending:
        doc.problems.append(f"line {pending.line}: ```sql block not followed by an ```output block")
    for ex in doc.examples:
        for k, l in enumerate(ex.sql.split("\n")):
            if l.startswith(".") and not (allow_import and l.startswith(".import --csv ")):
                doc.problems.append(f"line {ex.line + 1 + k}: dot-command in an example: {l!r}")
    return doc


PARSED = {name: parse(path.read_text(), allow_import=name == "analysis.md") for name, path in DOCS.items()}
DOC_PARSED = PARSED["sql.md"]
SECTIONS = [(name, s) for name, d in PARSED.items() for s in dict.fromkeys(ex.section for ex in d.examples)]


def run_cli(ext: Path, db: Path, sql: str) -> str:
    p = subprocess.run(
        [SQLITE3_CLI, "-cmd", f".load {ext.with_suffix('')}", str(db)],
        input=(sql + "\n").encode(),
        capture_output=True,
        cwd=db.parent,
        timeout=120,
    )
    out = p.stdout.decode() + p.stderr.decode()
    return out.rstrip("\n")


def render(v) -> str:
    """A value as the CLI's list mode prints it."""
    if v is None:
        return ""
    if isinstance(v, float):
        s = "%.15g" % v
        if "inf" in s or "nan" in s:
            return {"inf": "Inf", "-inf": "-Inf"}.get(s, s)
        mant, e, exp = s.partition("e")
        if "." not in mant:
            mant += ".0"
        return mant + (e + exp if e else "")
    if isinstance(v, bytes):
        return v.split(b"\0", 1)[0].decode("utf-8", "replace")
    return str(v)


def run_python(ext: Path, db: Path, sql: str) -> tuple[list[str], list[str]]:
    """Rows (list mode) and error messages of each statement of ``sql``, run one at a time."""
    conn = sqlite3.connect(db, isolation_level=None)
    conn.enable_load_extension(True)
    conn.load_extension(str(ext))
    out, errors = [], []
    # Relative paths in examples (phenix_backup('copy.db')) resolve in the database's directory, as
    # for the CLI, which runs there.
    cwd = os.getcwd()
    os.chdir(db.parent)
    try:
        chunks, cur = [], []
        for line in sql.split("\n"):
            if line.startswith(".import --csv "):
                chunks.append("\n".join(cur))
                chunks.append(line)
                cur = []
            else:
                cur.append(line)
        chunks.append("\n".join(cur))
        stmts = []
        for ch in chunks:
            stmts.extend([ch] if ch.startswith(".import") else split_statements(ch))
        for st in stmts:
            if st.startswith(".import --csv "):
                _, _, path, table = st.split()
                with open(path, newline="") as f:
                    rows = list(csv.reader(f))
                cols = ", ".join('"%s" TEXT' % c.replace('"', '""') for c in rows[0])
                conn.execute(f'CREATE TABLE "{table}"({cols})')
                conn.executemany(f'INSERT INTO "{table}" VALUES ({", ".join("?" * len(rows[0]))})', rows[1:])
                continue
            try:
                for row in conn.execute(st):
                    out.append("|".join(render(v) for v in row))
            except sqlite3.Error as e:
                errors.append(str(e))
    finally:
        conn.close()
        os.chdir(cwd)
    return out, errors


@pytest.mark.parametrize("name", list(DOCS))
def test_doc_structure(name):
    assert PARSED[name].examples, f"docs/{name} has no examples"
    assert not PARSED[name].problems, "\n".join(PARSED[name].problems)


def test_analysis_is_linked_from_sql_md():
    assert "(analysis.md)" in DOC.read_text()


def test_every_function_is_documented(py_host):
    names = {
        r[0]
        for r in py_host.conn.execute(
            "SELECT name FROM pragma_function_list WHERE name LIKE 'phenix%'"
        )
    }
    assert "phenix_version" in names
    text = DOC.read_text() + "\n" + ANALYSIS.read_text()
    missing = sorted(n for n in names if not re.search(rf"^### `?{n}\(", text, re.M))
    assert not missing, f"functions without a '### name(' heading in docs/sql.md or docs/analysis.md: {missing}"


@pytest.fixture(scope="session")
def plate_csv(tmp_path_factory) -> Path:
    """The worked example's simulated plate CSV (models/training/plate_csv.py), written once."""
    out = tmp_path_factory.mktemp("plate") / "plate.csv"
    subprocess.run([sys.executable, str(ROOT / "models" / "training" / "plate_csv.py"), str(out)], check=True, timeout=600)
    return out


@pytest.mark.parametrize("docname,section", SECTIONS)
def test_examples(docname, section, ext, tmp_path, request):
    regen = os.environ.get("PHENIX_DOCS_REGEN") == "1"
    DOC = DOCS[docname]
    doc = parse(DOC.read_text(), allow_import=docname == "analysis.md") if regen else PARSED[docname]
    (tmp_path / "cli").mkdir()
    (tmp_path / "py").mkdir()
    cli_db, py_db = tmp_path / "cli" / "doc.db", tmp_path / "py" / "doc.db"
    if (docname, section) in NEEDS_PLATE:
        src = request.getfixturevalue("plate_csv")
        for d in ("cli", "py"):
            shutil.copy(src, tmp_path / d / "plate.csv")
    failures = []
    for ex in [e for e in doc.examples if e.section == section]:
        got = run_cli(ext, cli_db, ex.sql)
        if regen:
            ex.output = got
            continue
        if got != (ex.output or "").rstrip("\n"):
            failures.append(
                f"docs/{docname} line {ex.line}:\n{ex.sql}\n--- expected\n{ex.output}\n--- sqlite3 CLI printed\n{got}"
            )
            continue
        rows, errors = run_python(ext, py_db, ex.sql)
        cli_lines = got.split("\n") if got else []
        # The CLI prints stdout first, then stderr: the rows are a prefix, the error lines follow.
        if cli_lines[: len(rows)] != rows:
            failures.append(f"docs/{docname} line {ex.line}: Python printed {rows}, the CLI {cli_lines}")
        stderr = "\n".join(cli_lines[len(rows) :])
        for msg in errors:
            if msg not in stderr:
                failures.append(f"docs/{docname} line {ex.line}: Python error {msg!r} not in the CLI's {stderr!r}")
        if not errors and stderr:
            failures.append(f"docs/{docname} line {ex.line}: CLI error {stderr!r} but none in Python")
    if regen:
        lines = DOC.read_text().split("\n")
        for ex in sorted(
            (e for e in doc.examples if e.section == section and e.out_span),
            key=lambda e: -e.out_span[0],
        ):
            a, b = ex.out_span
            lines[a:b] = ex.output.split("\n") if ex.output else []
        DOC.write_text("\n".join(lines))
        pytest.skip("PHENIX_DOCS_REGEN=1: output blocks rewritten; review the diff and rerun without it")
    assert not failures, "\n\n".join(failures)


def test_parser_rejects_unpaired_blocks():
    bad = parse("## A\n```sql\nSELECT 1;\n```\ntext\n```output\n1\n```\n")
    assert len(bad.problems) == 2, bad.problems
    ok = parse("## A\n```sql\nSELECT 1;\n```\n\n```output\n1\n```\n")
    assert not ok.problems and ok.examples[0].output == "1"
    dot = parse("## A\n```sql\n.mode box\nSELECT 1;\n```\n```output\n```\n")
    assert any("dot-command" in p for p in dot.problems)
