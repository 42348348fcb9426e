"""The worker's RSPAMC answer beside a real rspamd 3.4's answer to the same Exim request.

rspamd 3.4 asks the worker through the plugin, so both answers rest on the
same check; rspamd adds its own rule (TEST_OTHER, 0.1), writes no options
and no header changes on these lines (newer rspamd writes X-Milter lines),
and a constant 0.0 as the Metric's last number.
"""

from __future__ import annotations

import re
import socket

import pytest
from test_legacy import exim_rspamd_request
from test_rspamd import worker_config

from rspamd_procs import free_port, start_rspamd, start_worker


@pytest.fixture(scope="module")
def pair(knot, tmp_path_factory):
    """The worker, and rspamd 3.4 asking it through the plugin."""
    base = tmp_path_factory.mktemp("legacy-rspamd")
    worker_port = free_port()
    worker = start_worker(base, "worker", worker_config(knot), worker_port)
    rspamd, rspamd_port = start_rspamd(
        base, "score", f'regcheck {{ servers = "127.0.0.1:{worker_port}"; timeout = 2s; }}', knot.port
    )
    yield worker_port, rspamd_port
    rspamd.stop()
    worker.stop()


def ask(port: int, data: bytes) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        s.sendall(data)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out.decode()


MESSAGE = b"From: sender@heaven.net\r\nTo: someone@receiver.test\r\nSubject: seed case\r\n\r\nHello.\r\n"


@pytest.mark.parametrize(
    "ip,helo",
    [
        pytest.param("208.20.133.17", "mailout17.heaven.net", id="accept-heaven"),
        pytest.param("208.20.133.32", "mailout32.heaven.net", id="reject-heaven"),
    ],
)
def test_same_lines_as_rspamd(pair, ip, helo):
    worker_port, rspamd_port = pair
    request = exim_rspamd_request(ip, helo, "sender@heaven.net", body=MESSAGE)
    ours, theirs = ask(worker_port, request).split("\r\n"), ask(rspamd_port, request).split("\r\n")
    assert ours[0] == theirs[0] == "RSPAMD/1.3 0 EX_OK"
    metric = re.compile(r"Metric: default; (True|False); (-?\d+\.\d\d) / (\d+\.\d\d) / (\d+\.\d+)")
    our_metric, their_metric = metric.fullmatch(ours[1]), metric.fullmatch(theirs[1])
    assert our_metric and their_metric, (ours, theirs)
    assert (our_metric[1], our_metric[3]) == (their_metric[1], their_metric[3]), (ours, theirs)
    assert abs(float(our_metric[2]) - float(their_metric[2]) + 0.1) < 0.001  # their TEST_OTHER
    assert ours[2] == theirs[2] and ours[2].startswith("Action: ")
    theirs_regcheck = [line for line in theirs if line.startswith("Symbol: REGCHECK_")]
    ours_symbols = [line for line in ours if line.startswith("Symbol: ")]
    assert len(theirs_regcheck) == len(ours_symbols) > 0
    for line in theirs_regcheck:  # theirs: "Symbol: NAME(score)"; ours adds "; options"
        assert any(mine == line or mine.startswith(line + "; ") for mine in ours_symbols), (line, ours_symbols)
