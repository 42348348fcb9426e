"""The benchmark at its tiny size: every measurement runs end to end (no timing is judged here)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent


def test_benchmark_runs_at_tiny_size(tmp_path):
    for tool in ("wrk", "knotd", "rspamd"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            pytest.fail(f"{tool} not found: ./dev test installs it")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--tiny", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    table = (tmp_path / "RESULTS-tiny.md").read_text()
    for item in (
        "1. warm QR1",
        "1. warm SPF",
        "2. cold QR1",
        "3. critical path",
        "4. in rspamd",
        "5. warm SPF vs policyd-spf",
        "5. cold SPF",
        "6. memory",
        "7. /ping",
    ):
        assert item in table, item
    assert "FALLS SHORT" in table or "PASS" in table


def test_policy_benchmark_runs_quick():
    """bench/policy.py end to end at its smallest (our listener, policyd-spf, the floor); nothing judged."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "policy.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for row in ("| warm, 1 connection |", "| warm, 8 connections |", "| cold, 1 connection |", "The floor"):
        assert row in proc.stdout, row
    # both placements of a 1-connection run, and the driver's own CPU beside the servers'
    assert "| warm, 1 connection | pinned to one CPU | TCP |" in proc.stdout
    assert "| warm, 1 connection | placed by the OS | TCP |" in proc.stdout
    assert "driver: ours TCP" in proc.stdout
    # ours over a UNIX socket too (the worker's listen = "unix:/path"), not skipped
    assert "| warm, 1 connection | pinned to one CPU | UNIX |" in proc.stdout
    assert "Ours over UNIX was skipped" not in proc.stdout
    assert "rspamd asking after Postfix" in proc.stdout and " 0 DNS questions" in proc.stdout
