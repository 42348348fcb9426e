"""bench/rspamd_cost.py end to end at a tiny size (no timing is judged here)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent


def test_rspamd_cost_writes_its_section_and_keeps_the_rest(tmp_path):
    (tmp_path / "RESULTS.md").write_text("# Benchmark results\n\n| a table | run.py wrote |\n")
    argv = [sys.executable, str(ROOT / "bench" / "rspamd_cost.py"), "--scans", "40", "--rounds", "1",
            "--rate", "200", "--out", str(tmp_path)]
    for _ in range(2):  # the second run replaces the section rather than adding another
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    text = (tmp_path / "RESULTS.md").read_text()
    assert text.startswith("# Benchmark results\n\n| a table | run.py wrote |")
    assert text.count("## What the plugin costs an rspamd scan") == 1
    for row in ("regcheck plugin, warm (result cache)", "regcheck plugin, cold (QR1)",
                "rspamd's native spf module, cold", "floor: plugin to a bare server",
                "warm floor: a plugin inserting the same symbols", "floor with DNS: bare server asking knot",
                "floor with DNS, a socket (port) per question"):
        assert row in text, row
    # knot's counters: a cold QR1 check asks two questions, the worker's floors the same two, rspamd's SPF one
    table = {line.split(" | ")[0].lstrip("| "): line.split(" | ") for line in text.splitlines() if line.startswith("| ")}
    asked = {label: cells[-1].rstrip(" |") for label, cells in table.items() if len(cells) == 7}
    assert asked["regcheck plugin, cold (QR1)"] == "2.00", asked
    assert asked["floor with DNS, a socket (port) per question"] == "2.00", asked
    assert asked["rspamd's native spf module, cold"] == "1.00", asked
    assert "(with DNS, pool)" in text
    assert "PASS" in text or "FALLS SHORT" in text
    assert "(warm floor)" in text
    assert (tmp_path / "rspamd_cost.png").stat().st_size > 0
