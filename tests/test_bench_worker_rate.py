"""bench/worker_rate.py end to end at a tiny size (no timing is judged here): it runs, and
``--against`` takes a second checkout's worker in turns."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent


def test_worker_rate_runs_both_workers_in_turns():
    argv = [sys.executable, str(ROOT / "bench" / "worker_rate.py"), "--rate", "200", "--scans", "30",
            "--rounds", "1", "--alone", "5", "--against", str(ROOT)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = re.findall(r"^\| (this checkout|/\S+) \| 200/s \| (\d+) us \|", proc.stdout, re.M)
    assert [name for name, _ in rows] == ["this checkout", str(ROOT)], proc.stdout
    assert all(int(cpu) > 0 for _, cpu in rows), rows
    assert "median of the rounds' ratios: CPU per check" in proc.stdout
