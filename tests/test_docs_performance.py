"""docs/performance.md's settings block is a configuration rspamd 3.4 accepts, with the plugin's defaults."""

from __future__ import annotations

import re
from pathlib import Path

from test_rules import install, rspamadm

DOC = Path(__file__).parent.parent / "docs" / "performance.md"
SHIM = Path(__file__).parent.parent / "lua_shim" / "regcheck.lua"


def settings_block() -> str:
    blocks = re.findall(r"```ucl\n(.*?)```", DOC.read_text(), re.DOTALL)
    assert len(blocks) == 1
    return blocks[0]


def test_the_documented_settings_pass_configtest(tmp_path):
    install(tmp_path / "conf", settings_block())
    proc = rspamadm(tmp_path / "conf", "configtest", "-s")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_documented_values_are_the_defaults():
    shim = SHIM.read_text()
    units = {"1h": "3600"}
    for key, value in re.findall(r"^  (\w+) = ([^;]+);", settings_block(), re.MULTILINE):
        if key == "servers":
            continue
        default = units.get(value, value).strip('"')
        assert re.search(rf"^  {key} = '?{re.escape(default)}'?,", shim, re.MULTILINE), (key, default)
