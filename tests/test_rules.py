"""The rspamd side without a running rspamd: catalogue agreement, luacheck, Lua unit tests,
and `rspamadm configtest -s` / `configdump -m` on a stock Debian config with our files installed
as docs/install-and-operate.md lays them out."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from rspamd_regcheck.symbols import CATALOGUE, rules_group_conf

ROOT = Path(__file__).parent.parent
SHIM = ROOT / "lua_shim" / "regcheck.lua"
RULES = ROOT / "rules"


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found: ./dev test installs it (Debian packages rspamd, lua-check)")
    return path


def test_group_file_is_the_catalogue():
    assert (RULES / "regcheck_group.conf").read_text() == rules_group_conf()


def test_shim_catalogue_is_the_catalogue():
    block = re.search(r"local CATALOGUE = \{(.*?)\n\}", SHIM.read_text(), re.DOTALL)
    assert block is not None
    assert re.findall(r"'(REGCHECK_[A-Z0-9_]+)'", block.group(1)) == [s.name for s in CATALOGUE]


def test_every_worker_symbol_is_in_the_group_file():
    text = (RULES / "regcheck_group.conf").read_text()
    for s in CATALOGUE:
        assert f'"{s.name}" {{ weight = {s.score};' in text


def test_luacheck():
    proc = subprocess.run(
        [tool("luacheck"), "--no-color", "lua_shim", "tests/lua"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout


def test_lua_unit_tests():
    proc = subprocess.run(
        [tool("rspamadm"), "lua", "-a", str(SHIM), str(ROOT / "tests" / "lua" / "test_regcheck.lua")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    last = (proc.stdout.strip().splitlines() or [""])[-1]
    assert re.fullmatch(r"\d+ passed, 0 failed", last), proc.stdout + proc.stderr
    assert proc.returncode == 0


def install(confdir: Path, settings: str | None = None) -> None:
    """Lay out our files in a private LOCAL_CONFDIR as docs/install-and-operate.md lists them."""
    (confdir / "plugins.d").mkdir(parents=True)
    (confdir / "local.d").mkdir()
    (confdir / "db").mkdir()
    shutil.copy(SHIM, confdir / "plugins.d" / "regcheck.lua")
    shutil.copy(RULES / "regcheck_group.conf", confdir / "local.d" / "regcheck_group.conf")
    (confdir / "local.d" / "regcheck.conf").write_text(settings or (RULES / "regcheck.conf").read_text())
    (confdir / "local.d" / "groups.conf").write_text('.include "$LOCAL_CONFDIR/local.d/regcheck_group.conf"\n')
    (confdir / "rspamd.conf.local").write_text('.include "$LOCAL_CONFDIR/local.d/regcheck.conf"\n')
    # offline: the stock fuzzy_check wants to resolve rspamd.com (rspamd-3.4-notes.md section 10)
    (confdir / "local.d" / "fuzzy_check.conf").write_text("enabled = false;\n")


def rspamadm(confdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            tool("rspamadm"),
            f"--var=LOCAL_CONFDIR={confdir}",
            f"--var=DBDIR={confdir}/db",
            *args,
            "-c",
            "/etc/rspamd/rspamd.conf",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize(
    "settings", [None, (RULES / "regcheck_enforce.conf").read_text()], ids=["score-profile", "enforce-profile"]
)
def test_configtest_strict_on_stock_config(tmp_path, settings):
    install(tmp_path / "conf", settings)
    proc = rspamadm(tmp_path / "conf", "configtest", "-s")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    dump = rspamadm(tmp_path / "conf", "configdump", "-m")
    enabled = next(line for line in dump.stdout.splitlines() if line.startswith("Modules enabled:"))
    assert "regcheck" in [m.strip() for m in enabled.split(":", 1)[1].split(",")]


@pytest.mark.parametrize(
    "settings,error",
    [
        pytest.param('regcheck { mode = "bogus"; }', 'field "mode"', id="bad-mode"),
        pytest.param('regcheck { servers = "127.0.0.1:11340"; colour = "blue"; }', "colour", id="unknown-key"),
        pytest.param("regcheck { timeout = -1; }", "timeout must be a positive", id="negative-timeout"),
    ],
)
def test_bad_settings_fail_configtest(tmp_path, settings, error):
    install(tmp_path / "conf", settings)
    proc = rspamadm(tmp_path / "conf", "configtest", "-s")
    assert proc.returncode == 1
    assert error in proc.stdout + proc.stderr
