"""The layout rules of docs/development.md: the command line and the worker do not import each
other, and the code cites the repository's own docs, never a document outside it."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "rspamd_regcheck"
# pages other branches add; the lead makes sure they exist at merge
COMING = {"dns-security.md", "operations.md", "rating-services.md", "postfix.md", "integrations.md", "performance.md"}


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            names.add(node.module or "")
            names.update(a.name for a in node.names if node.module is None)
    return names


def test_cli_and_serve_do_not_import_each_other():
    assert "_serve" in imported_modules(PACKAGE / "cli.py")  # the command line starts the worker ...
    assert "cli" not in imported_modules(PACKAGE / "_serve.py")  # ... and nothing goes back
    assert "_loop" in imported_modules(PACKAGE / "_serve.py")  # what both need has its own module


def code_files() -> list[Path]:
    return [
        *PACKAGE.glob("*.py"),
        ROOT / "lua_shim" / "regcheck.lua",
        *(ROOT / "rules").glob("*.conf"),
        *(ROOT / "tests").glob("*.py"),
        ROOT / "contrib" / "rspamd-regcheck.service",
    ]


def test_code_cites_no_design_document_outside_the_repository():
    offenders = [
        f"{p.relative_to(ROOT)}:{n}"
        for p in code_files()
        if p != Path(__file__)
        for n, line in enumerate(p.read_text().splitlines(), 1)
        if re.search(r"\bDESIGN\b|registry-record\.md|\bthe README\b|README \"", line)
    ]
    assert not offenders


def test_docs_cited_by_the_code_exist():
    for p in code_files():
        for page in re.findall(r"docs/([\w.-]+\.md)", p.read_text()):
            assert (ROOT / "docs" / page).is_file() or page in COMING, f"{p.relative_to(ROOT)} cites docs/{page}"
