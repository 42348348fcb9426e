"""Hostile DNS: each misbehaviour ends in the right symbol within the deadline, nothing is
poisoned, and the checker keeps serving."""

from __future__ import annotations

import asyncio
import ipaddress
import time
from dataclasses import replace

import pytest

from rspamd_regcheck import Action, Checker, Config, Envelope

from hostile_dns import GOOD_RECORD, HostileResponder

TIMEOUT = 0.5
DEADLINE = 1.0


@pytest.fixture(scope="module")
def responder():
    with HostileResponder() as r:
        yield r


@pytest.fixture
def config(responder) -> Config:
    return replace(
        Config(),
        registry_zones=("reg.hostile.test",),
        nameservers=("127.0.0.1",),
        dns_port=responder.port,
        dns_timeout=TIMEOUT,
        deadline=DEADLINE,
        local_networks=(),
        result_cache_size=0,
    )


def check_all(config, envs):
    async def go():
        checker = Checker(config)
        try:
            out = []
            for env in envs:
                started = time.monotonic()
                result = await checker.check(env)
                out.append((result, time.monotonic() - started))
            return out, checker
        finally:
            checker.close()

    return asyncio.run(go())


def env(helo, mail_from=None):
    return Envelope(ip=ipaddress.ip_address("192.0.2.9"), helo=helo, mail_from=mail_from)


REGISTRY = [
    pytest.param("mx.late.example", "REGCHECK_DNSFAIL", "timeout", id="late"),
    pytest.param("mx.never.example", "REGCHECK_DNSFAIL", "timeout", id="never"),
    pytest.param("mx.servfail.example", "REGCHECK_DNSFAIL", "SERVFAIL", id="servfail"),
    pytest.param("mx.malformed.example", "REGCHECK_DNSFAIL", "malformed reply", id="malformed-txt"),
    pytest.param("mx.cnameloop.example", "REGCHECK_DNSFAIL", "CNAME chain too long", id="cname-loop"),
    pytest.param("mx.wrongid.example", "REGCHECK_DNSFAIL", "timeout", id="mismatched-id"),
    pytest.param("mx.wrongname.example", "REGCHECK_DNSFAIL", "timeout", id="mismatched-name"),
    pytest.param("mx.oversized.example", "REGCHECK_RECORD_PERMFAIL", "record: ", id="oversized-txt-over-tcp"),
    pytest.param("mx.truncated.example", "REGCHECK_QR1_ALLOW", "192.0.2.0/24", id="truncated-then-tcp"),
]


@pytest.mark.parametrize("helo,symbol,detail", REGISTRY)
def test_registry_lookup_against_hostile_dns(config, helo, symbol, detail):
    (result, elapsed), (good, _) = check_all(config, [env(helo), env("mx.good.example")])[0]
    names = {s.name: s.options for s in result.verdict.symbols}
    assert symbol in names, names
    assert any(detail in o for o in names[symbol]), names[symbol]
    assert elapsed < DEADLINE * 3  # generous: the point is that nothing waits past the deadline much
    # and the checker still serves an ordinary name right after
    assert good.verdict.seed.action is Action.ACCEPT


def test_spoofed_answer_is_not_cached(config, responder):
    """A reply to another question carries a stop=all for good.example: it must not be believed."""
    (spoofed, _), (good, _) = check_all(config, [env("mx.wrongname.example"), env("mx.good.example")])[0]
    assert spoofed.verdict.seed.action is Action.TEMPFAIL
    assert good.verdict.seed.action is Action.ACCEPT  # the real record, asked for and answered
    assert "REGCHECK_STOP" not in {s.name for s in good.verdict.symbols}


SPF = [
    pytest.param("a@servfail.spf.hostile.test", "REGCHECK_SPF_DNSFAIL", id="servfail"),
    pytest.param("a@never.spf.hostile.test", "REGCHECK_SPF_DNSFAIL", id="never"),
    pytest.param("a@malformed.spf.hostile.test", "REGCHECK_SPF_DNSFAIL", id="malformed"),
    pytest.param("a@cnameloop.spf.hostile.test", "REGCHECK_SPF_DNSFAIL", id="cname-loop"),
    pytest.param("a@truncated.spf.hostile.test", "REGCHECK_SPF_ALLOW", id="truncated-then-tcp"),
]


@pytest.mark.parametrize("mail_from,symbol", SPF)
def test_spf_against_hostile_dns(config, mail_from, symbol):
    cfg = replace(config, spf_alignment="none")  # the senders are under hostile.test, not the ID
    ((result, elapsed),) = check_all(cfg, [env("mx.spfid.example", mail_from)])[0]
    names = {s.name for s in result.verdict.symbols}
    assert symbol in names, names
    assert elapsed < DEADLINE * 3


def test_record_text_is_the_good_one(config):
    ((result, _),) = check_all(config, [env("mx.good.example")])[0]
    assert result.verdict.id == "good.example"
    assert GOOD_RECORD.startswith("v=reg1")
