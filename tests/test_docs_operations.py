"""docs/operations.md stays true: its transcripts are run, its files written as shown."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

DOC = Path(__file__).parent.parent / "docs" / "operations.md"
BLOCK = re.compile(r"(?:<!-- file: (?P<file>\S+) -->\n)?```(?P<lang>\w*)\n(?P<body>.*?)```", re.S)


def test_transcripts(tmp_path):
    ran = 0
    for m in BLOCK.finditer(DOC.read_text()):
        if m["file"]:
            (tmp_path / m["file"]).write_text(m["body"])
        if m["lang"] != "console":
            continue
        lines = m["body"].splitlines()
        command, expected = lines[0].removeprefix("$ "), lines[1:]
        program, _, rest = command.partition(" ")
        assert program == "rspamd-regcheck"
        shell = f"{shlex.quote(sys.executable)} -m rspamd_regcheck {rest}"
        proc = subprocess.run(
            shell, shell=True, cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False,
            env=dict(os.environ, PYTHONWARNINGS="error"),
        )  # fmt: skip
        assert (proc.stderr + proc.stdout).splitlines() == expected, command  # warnings come first
        ran += 1
    assert ran >= 3


def test_the_enforce_example_is_what_the_worker_sends():
    import json

    from rspamd_regcheck import Config, Facts, Policy, RegistryFacts, RegistryStatus, build_reply, evaluate

    example = re.search(r"```json\n(.*?)```", DOC.read_text(), re.S)
    assert example
    cfg = Config()
    facts = Facts(
        ip=__import__("ipaddress").ip_address("192.0.2.1"),
        helo="mx.example.com",
        id="example.com",
        registry=RegistryFacts(RegistryStatus.DNSFAIL, reasons=("127.0.0.1:53: Connection refused",)),
    )
    reply = build_reply(evaluate(facts, Policy(cfg.ratings, cfg.method_order, cfg.method_limits)), cfg)
    assert reply["regcheck"]["enforce"] == json.loads(example[1])
