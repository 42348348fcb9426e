"""The docs are run: every command they show is executed here, so they cannot rot.

In README.md and the pages under docs/ listed below, each fenced block is one of:

- ```` ```sh ````: commands, run in order (one sandbox per page) by ``bash -euo pipefail``;
  they must succeed.  System paths are moved into the sandbox: ``/etc/rspamd`` is a copy of
  Debian's (with fuzzy_check off, as this host has no DNS: docs "configtest BAD"),
  ``/etc/rspamd-regcheck``, ``/etc/knot`` and ``/var/lib/knot`` start empty, and
  ``/opt/rspamd-regcheck/bin/`` is this checkout's venv.
- ```` ```console ````: a transcript; each ``$ command`` runs and its output must match the
  lines below it (``...`` stands for any lines).
- ```` ```toml ````: a worker configuration; ``config check`` must accept it.
- a block right after ``<!-- not run: REASON -->`` is skipped, and the reason must say why.

Other blocks (``text``, ``ucl``, ``yaml``, zone files) are shown, not run; the zone files and
records in them are linted where a ``sh`` block says so.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from rspamd_regcheck.symbols import symbols_markdown

ROOT = Path(__file__).resolve().parents[1]
PAGES = [
    "README.md",
    "docs/README.md",
    "docs/install-and-operate.md",
    "docs/configuration.md",
    "docs/scoring.md",
    "docs/record-format.md",
    "docs/running-a-registry.md",
    "docs/protocol.md",
    "docs/development.md",
    "docs/postfix.md",
]
FENCE = re.compile(r"^(?P<indent> *)```(?P<lang>[\w-]*)\s*$")
NOT_RUN = re.compile(r"<!-- not run: (?P<why>.{10,}) -->")
VENV_BIN = Path(sys.executable).parent


@dataclass(frozen=True)
class Block:
    page: str
    line: int
    lang: str
    text: str
    not_run: str | None


def blocks(page: str) -> list[Block]:
    lines = (ROOT / page).read_text().splitlines()
    found: list[Block] = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if m is None:
            i += 1
            continue
        indent, start = m.group("indent"), i
        body: list[str] = []
        i += 1
        while i < len(lines) and lines[i].strip() != "```":
            body.append(lines[i][len(indent) :] if lines[i].startswith(indent) else lines[i])
            i += 1
        before = next((x for x in reversed(lines[:start]) if x.strip()), "")
        why = NOT_RUN.search(before)
        found.append(Block(page, start + 1, m.group("lang"), "\n".join(body) + "\n", why and why.group("why")))
        i += 1
    return found


class Sandbox:
    def __init__(self, base: Path):
        self.base = base
        self.etc_rspamd = base / "etc" / "rspamd"
        shutil.copytree("/etc/rspamd", self.etc_rspamd)
        (self.etc_rspamd / "local.d" / "fuzzy_check.conf").write_text("enabled = false;\n")
        for d in ("etc/rspamd-regcheck",):
            (base / d).mkdir(parents=True)
        self.env = dict(os.environ, PATH=f"{VENV_BIN}:{os.environ['PATH']}", PYTHONWARNINGS="error")

    def localise(self, text: str) -> str:
        """*text* with the system paths moved into the sandbox (commands and their output)."""
        text = text.replace("/opt/rspamd-regcheck/bin/", f"{VENV_BIN}/")
        text = text.replace("/etc/rspamd-regcheck", f"{self.base}/etc/rspamd-regcheck")
        for path in ("/etc/knot", "/var/lib/knot"):
            text = text.replace(path, f"{self.base}{path}")
        return re.sub(r"/etc/rspamd(?![-\w])", str(self.etc_rspamd), text)

    def command(self, text: str) -> str:
        """A command localised; rspamadm also needs to be told where the copy is."""
        text = self.localise(text)
        # rspamadm reads CONFDIR and LOCAL_CONFDIR from its build; the copy needs them set
        d = self.etc_rspamd
        return re.sub(
            r"\brspamadm (configtest|configdump)\b",
            rf"rspamadm --var=CONFDIR={d} --var=LOCAL_CONFDIR={d} \1 -c {d}/rspamd.conf",
            text,
        )

    def run(self, script: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", "-euo", "pipefail", "-c", self.command(script)],
            cwd=ROOT,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=180,
            check=False,
        )


def matches(expected: list[str], actual: list[str]) -> bool:
    """Line-by-line equality where a line ``...`` matches any run of lines (also none)."""
    if not expected:
        return not actual
    if expected[0] == "...":
        return any(matches(expected[1:], actual[k:]) for k in range(len(actual) + 1))
    return bool(actual) and expected[0] == actual[0] and matches(expected[1:], actual[1:])


def transcript(text: str) -> list[tuple[str, list[str]]]:
    steps: list[tuple[str, list[str]]] = []
    for line in text.rstrip("\n").splitlines():
        if line.startswith("$ "):
            steps.append((line[2:], []))
        elif steps and steps[-1][0].endswith("\\"):
            steps[-1] = (steps[-1][0][:-1] + line.strip(), [])
        else:
            assert steps, f"output before any command: {line!r}"
            steps[-1][1].append(line.rstrip())
    return steps


def run_page(page: str, sandbox: Sandbox) -> None:
    for b in blocks(page):
        where = f"{page}:{b.line}"
        if b.not_run is not None:
            continue
        if b.lang == "sh":
            proc = sandbox.run(b.text)
            assert proc.returncode == 0, f"{where}: exit {proc.returncode}\n{proc.stdout}"
        elif b.lang == "console":
            for command, expected in transcript(b.text):
                proc = sandbox.run(command)
                actual = [x.rstrip() for x in proc.stdout.rstrip("\n").splitlines()]
                shown = [sandbox.localise(x) for x in expected]
                assert matches(shown, actual), f"{where}: $ {command}\n--- expected\n{shown}\n--- got\n{actual}"
        elif b.lang == "toml":
            conf = sandbox.base / "doc-example.toml"
            conf.write_text(b.text)
            proc = sandbox.run(f"rspamd-regcheck --config {conf} config check")
            assert proc.returncode == 0, f"{where}: config check refused it\n{proc.stdout}"


@pytest.mark.parametrize("page", PAGES)
def test_page_commands_run(page, tmp_path):
    if not Path("/etc/rspamd/rspamd.conf").is_file():
        pytest.fail("Debian's rspamd is not installed: ./dev test installs it")
    run_page(page, Sandbox(tmp_path))


def test_every_not_run_marker_says_why():
    for page in PAGES:
        for n, line in enumerate((ROOT / page).read_text().splitlines(), 1):
            if "<!-- not run" in line:
                assert NOT_RUN.search(line), f"{page}:{n}: a not-run marker needs a reason"


def test_blocks_are_found():
    """A page whose fences the extractor misreads would silently run nothing."""
    readme = blocks("README.md")
    assert [b.lang for b in readme].count("sh") >= 6
    assert sum(1 for b in readme if b.not_run) == 4
    assert all(not b.text.startswith(" ") for b in readme), "list indentation is stripped"


def test_matches():
    assert matches(["a", "...", "d"], ["a", "b", "c", "d"])
    assert matches(["a", "..."], ["a"])
    assert not matches(["a", "d"], ["a", "b", "d"])
    assert not matches(["a"], ["a", "b"])


def test_symbol_table_is_the_catalogue():
    text = (ROOT / "docs" / "scoring.md").read_text()
    block = re.search(r"<!-- symbols: begin -->\n(.*?)<!-- symbols: end -->", text, re.DOTALL)
    assert block is not None and block.group(1) == symbols_markdown()


def test_pages_link_only_to_what_exists_or_is_coming():
    """Relative links resolve; the pages other branches add are allowed by name."""
    coming = {"dns-security.md", "operations.md", "rating-services.md", "postfix.md", "integrations.md",
              "performance.md"}  # fmt: skip
    for page in PAGES:
        text = (ROOT / page).read_text()
        for target in re.findall(r"\]\((?!https?:|#)([^)#]+)(?:#[^)]*)?\)", text):
            path = (ROOT / page).parent / target
            assert path.exists() or path.name in coming, f"{page}: broken link {target}"


def test_record_format_examples_mean_what_the_page_says():
    """record-format.md shows every key in a valid example, and each line of its list of invalid
    records is refused by the parser."""
    from rspamd_regcheck._lint import KNOWN_KEYS
    from rspamd_regcheck._record import parse_record, tokenize
    from rspamd_regcheck.errors import InvalidRecord

    text = (ROOT / "docs" / "record-format.md").read_text()
    keys_part = text[text.index("## Keys") : text.index("## Invalid records")]
    examples = re.findall(r"```text\n(v=reg1 [^\n]*)\n```", keys_part)
    shown = set()
    for example in examples:
        parse_record(example)  # raises when the page's example is invalid
        shown.update(key.lower() for key, _value, _quoted in tokenize(example))
    assert shown >= KNOWN_KEYS | {"spf", "sid"}, sorted(KNOWN_KEYS - shown)
    invalid = re.search(r"## Invalid records.*?```text\n(.*?)```", text, re.DOTALL)
    assert invalid is not None
    for line in invalid.group(1).strip().splitlines():
        record, why = re.split(r"\s{2,}", line.strip(), maxsplit=1)
        with pytest.raises(InvalidRecord):
            parse_record(record)
        assert why
