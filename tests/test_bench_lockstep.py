"""bench/_lockstep.py, the policy bench's driver, against the floor's real server: it counts what it
sent, times it, and fails loudly on an answer it did not expect or a server it cannot reach (a
driver that let a wrong answer pass would time a broken server as a fast one)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import _lockstep  # noqa: E402
import policy  # noqa: E402


def target(via: str, tmp_path: Path) -> _lockstep.Target:
    return _lockstep.Unix(str(tmp_path / "floor.sock")) if via == "unix" else _lockstep.Tcp(policy.free_port())


@pytest.mark.parametrize("via", ["tcp", "unix"])
@pytest.mark.parametrize("cpus", [None, {min(policy.ALL_CPUS)}], ids=["placed", "pinned"])
def test_counts_and_times_every_answer(via, cpus, tmp_path):
    t = target(via, tmp_path)
    with policy.floor(t) as pid:
        lists = [policy.requests(["a.example"] * 50) for _ in range(3)]
        result = _lockstep.run([t] * 3, [policy.requests(["b.example"])] * 3, lists, b"SPF pass", [pid], cpus)
    assert result.requests == 150  # answers the drivers read, not requests they were given
    assert result.rate > 0 and result.driver_us > 0 and result.server_us > 0


@pytest.mark.parametrize(
    "expect,served,error",
    [
        pytest.param(b"Received-SPF: Pass", True, "unexpected answer b'action=PREPEND", id="wrong-answer"),
        pytest.param(b"SPF pass", False, "ConnectionRefusedError", id="nobody-listening"),
    ],
)
def test_fails_loudly(expect, served, error, tmp_path):
    t = target("tcp", tmp_path)
    if served:
        with policy.floor(t) as pid, pytest.raises(RuntimeError, match=error):
            _lockstep.run([t, t], [[], []], [policy.requests(["a.example"] * 5)] * 2, expect, [pid])
    else:
        with pytest.raises(RuntimeError, match=error):
            _lockstep.run([t], [[]], [policy.requests(["a.example"])], expect, [])


def test_an_answer_too_many_is_caught(tmp_path):
    """Two answers to one request (here: a request the floor reads as two) fail the run: the count
    is of answers read, not of requests sent."""
    t = target("tcp", tmp_path)
    double = [r + r for r in policy.requests(["a.example"] * 5)]
    with policy.floor(t) as pid, pytest.raises(RuntimeError, match="10 answers read for 5 requests"):
        _lockstep.run([t], [[]], [double], b"SPF pass", [pid])
