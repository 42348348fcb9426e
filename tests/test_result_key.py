"""The worker's reused results and the header block: parsed only when Sender ID needs it."""

from __future__ import annotations

import asyncio
import ipaddress
from dataclasses import replace

import pytest
from test_slim import config_for

from rspamd_regcheck import Checker, Envelope


def block(sender: str) -> bytes:
    return f"Received: by mx.receiver.test\r\nFrom: {sender}\r\nSubject: x\r\n\r\nbody\r\n".encode()


def checks(knot, envs: list[Envelope]):
    async def go():
        checker = Checker(config_for(knot))
        try:
            results = [await checker.check(env) for env in envs]
            return results, checker.result_hits
        finally:
            checker.close()

    return asyncio.run(go())


SID = Envelope(ip=ipaddress.ip_address("192.0.2.77"), helo="mx.sid.example", raw_headers=block("a@fail.sid.example"))
QR1 = Envelope(ip=ipaddress.ip_address("208.20.133.17"), helo="mailout17.heaven.net", raw_headers=block("a@x.example"))


@pytest.mark.parametrize(
    "envs,hits,same",
    [
        # QR1 never reads the headers: another message from the same session reuses the result
        pytest.param([QR1, replace(QR1, raw_headers=block("b@y.example"))], 1, True, id="qr1-ignores-headers"),
        # Sender ID reads the PRA: the same PRA in another block reuses it ...
        pytest.param(
            [SID, replace(SID, raw_headers=b"X-Other: 1\r\n" + block("a@fail.sid.example"))], 1, True, id="sid-same-pra"
        ),
        # ... another PRA is checked again, and finds another result
        pytest.param([SID, replace(SID, raw_headers=block("a@pass.sid.example"))], 0, False, id="sid-other-pra"),
    ],
)
def test_results_rest_on_the_pra_only_when_sender_id_ran(knot, envs, hits, same):
    results, reused = checks(knot, envs)
    assert reused == hits
    assert (results[1].verdict == results[0].verdict) is same


def test_the_header_block_is_not_parsed_for_a_check_that_does_not_need_it(knot):
    env = replace(QR1)
    checks(knot, [env])
    assert "header_fields" not in env.__dict__  # cached_property: present once computed
    sid = replace(SID)
    checks(knot, [sid])
    assert sid.__dict__["header_fields"][1] == ("From", "a@fail.sid.example")
