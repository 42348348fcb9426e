"""Amplification: no check asks more questions than its budget, counted at knot itself."""

from __future__ import annotations

import asyncio
import ipaddress
from dataclasses import replace

import pytest

from rspamd_regcheck import Checker, DnsblZone, Envelope
from rspamd_regcheck.config import config_from_mapping

REG = "id.regcheck.test"


@pytest.fixture
def config(knot):
    return replace(
        config_from_mapping({"policy": {"local_networks": []}}),
        registry_zones=(REG,),
        nameservers=(knot.host,),
        dns_port=knot.port,
        result_cache_size=0,
        cache_size=0,  # every question goes to knot, where it is counted
    )


def asked(knot, config, helo, mail_from=None, ip="192.0.2.10"):
    async def go():
        checker = Checker(config)
        try:
            return await checker.check(Envelope(ip=ipaddress.ip_address(ip), helo=helo, mail_from=mail_from))
        finally:
            checker.close()

    before = knot.queries()
    result = asyncio.run(go())
    return result, knot.queries() - before


def test_spf_mx_bomb_stops_at_the_budget(knot, config):
    result, n = asked(knot, config, "mx.spf.example", "a@mxbomb.spf.example")
    # the registry question, then at most the method's 30
    assert n <= 1 + 30
    assert result.queries == n
    assert "REGCHECK_BUDGET" in {s.name for s in result.verdict.symbols}


def test_spf_mx_bomb_with_a_small_budget(knot, config):
    result, n = asked(knot, replace(config, max_queries=8), "mx.spf.example", "a@mxbomb.spf.example")
    assert n <= 8  # the check's own cap, whatever the method may ask


def test_csa_walk_stops_at_the_budget(knot, config):
    result, n = asked(knot, config, "a.b.c.d.e.f.g.h.csawalk.example")
    assert n <= 1 + 2  # csawalk.example offers CSV:2
    assert "REGCHECK_BUDGET" in {s.name for s in result.verdict.symbols}


def test_csa_walk_is_at_most_five_levels(knot, config):
    result, n = asked(knot, config, "a.b.c.d.e.f.g.h.csa.example")
    assert n <= 1 + 4  # csa.example offers CSV:4: the budget ends the walk before its 5 levels


def test_idlevel_chain_is_followed_once(knot, config):
    result, n = asked(knot, config, "mx.x.sub.chain.example", ip="192.0.2.10")
    assert n == 2  # chain.example, then sub.chain.example; its IDlevel=4 is not followed
    assert result.verdict.id == "sub.chain.example"
    assert "REGCHECK_STOP" not in {s.name for s in result.verdict.symbols}


def test_many_dnsbl_zones_stop_at_the_check_cap(knot, config):
    zones = tuple(DnsblZone(f"bl{i}.not-served.test") for i in range(150))
    result, n = asked(
        knot, replace(config, prescreen=zones, max_queries=20), "mailout17.heaven.net", ip="208.20.133.17"
    )
    assert n <= 20
    assert result.queries <= 20
