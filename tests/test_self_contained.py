"""The repository carries everything its tests read: a clone with nothing beside it passes.

A test or a script that reaches outside the clone (for example into a folder that
happens to sit beside the checkout on a developer's machine) passes there and fails
for everyone else.  This scans every tracked file for paths that climb out of the
repository, and checks that the data the suite reads is present with its licence.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# "../shared", "parents[2]" (two levels above tests/ is outside the clone), "../../"
ESCAPES = re.compile(r"\.\./shared|parents\[[2-9]\]|(?<![\w.])\.\./\.\./")


def tracked_text_files() -> list[Path]:
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    paths = [ROOT / p for p in out.decode().split("\0") if p]
    return [p for p in paths if p.suffix not in {".png", ".gz"} and p.is_file()]


def test_no_tracked_file_reads_outside_the_repository() -> None:
    offenders = []
    for path in tracked_text_files():
        if path == Path(__file__):
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        for n, line in enumerate(text.splitlines(), 1):
            if ESCAPES.search(line):
                offenders.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not offenders, "paths outside the clone:\n" + "\n".join(offenders)


def test_the_rfc7208_suite_is_carried_with_its_licence() -> None:
    folder = ROOT / "tests" / "data" / "rfc7208"
    assert (folder / "rfc7208-tests.yml").stat().st_size > 10_000
    assert "Redistribution and use" in (folder / "rfc7208-tests.LICENSE").read_text(encoding="utf-8")
