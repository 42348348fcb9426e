"""The bench's single-component scripts run end to end at a tiny size (no timing is judged
here): a script a merge broke would otherwise be found only when someone needs its numbers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent


@pytest.mark.parametrize(
    "script,args,expected",
    [
        pytest.param("dns_clients.py", ["300", "20", "1", "uvloop"], "regcheck Transport", id="dns-clients"),
        pytest.param("spf_driver.py", ["100", "10", "1"], "ours warm", id="spf-driver"),
        pytest.param("cold_floor.py", ["1"], "floor: the two questions and a reply", id="cold-floor"),
        pytest.param("http_server.py", ["1", "10"], "regcheck HTTP, fixed result", id="http-server"),
        pytest.param("lua_side.py", ["--rounds", "1", "--scans", "20"], "shipped, cache off, worker", id="lua-side"),
    ],
)
def test_bench_script_runs(script, args, expected):
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / script), *args],
                          capture_output=True, text=True, timeout=300, check=False, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert expected in proc.stdout, proc.stdout[-3000:]
