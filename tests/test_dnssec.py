"""registry.require_dnssec against a real validating resolver: Debian's unbound in front of a
knot that signs its own zones (tests/validating.py)."""

from __future__ import annotations

import asyncio
import ipaddress
import tomllib
from dataclasses import replace
from pathlib import Path

import pytest
from validating import BROKEN, SIGNED, UNSIGNED, validating_resolver

from rspamd_regcheck import Action, Checker, Config, Envelope, Transport
from rspamd_regcheck._answer import DnsStatus
from rspamd_regcheck._wire import RType
from rspamd_regcheck.config import config_from_mapping


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    with validating_resolver(tmp_path_factory.mktemp("dnssec")) as found:
        yield found


def config(server: tuple[str, int], zone: str, require: bool) -> Config:
    host, port = server
    return replace(
        Config(),
        registry_zones=(zone,),
        nameservers=(host,),
        dns_port=port,
        dns_timeout=2.0,
        local_networks=(),
        result_cache_size=0,
        require_dnssec=require,
    )


def check(cfg: Config, helo: str):  # type: ignore[no-untyped-def]
    async def go():  # type: ignore[no-untyped-def]
        checker = Checker(cfg)
        try:
            return await checker.check(Envelope(ip=ipaddress.ip_address("192.0.2.9"), helo=helo))
        finally:
            checker.close()

    return asyncio.run(go())


CASES = [
    pytest.param("unbound", SIGNED, True, "mx.heaven.net", "REGCHECK_QR1_ALLOW", Action.ACCEPT, id="signed-validated"),
    pytest.param(
        "unbound", SIGNED, True, "mx.nowhere.example", "REGCHECK_NO_RECORD", Action.REJECT, id="signed-nxdomain"
    ),
    pytest.param(
        "unbound", UNSIGNED, True, "mx.heaven.net", "REGCHECK_UNVALIDATED", Action.TEMPFAIL, id="unsigned-required"
    ),
    pytest.param(
        "unbound",
        UNSIGNED,
        True,
        "mx.nowhere.example",
        "REGCHECK_UNVALIDATED",
        Action.TEMPFAIL,
        id="unsigned-nxdomain",
    ),
    pytest.param(
        "unbound", UNSIGNED, False, "mx.heaven.net", "REGCHECK_QR1_ALLOW", Action.ACCEPT, id="unsigned-optional"
    ),
    # the record was changed under its signature: unbound answers SERVFAIL, a DNS failure
    pytest.param("unbound", BROKEN, True, "mx.heaven.net", "REGCHECK_DNSFAIL", Action.TEMPFAIL, id="broken-signature"),
    pytest.param("unbound", BROKEN, False, "mx.heaven.net", "REGCHECK_DNSFAIL", Action.TEMPFAIL, id="broken-optional"),
    # knot signs but does not validate: no AD from an authoritative server
    pytest.param("knot", SIGNED, True, "mx.heaven.net", "REGCHECK_UNVALIDATED", Action.TEMPFAIL, id="not-a-validator"),
]


@pytest.mark.parametrize("ask,zone,require,helo,symbol,action", CASES)
def test_registry_answers_need_a_validator_when_required(servers, ask, zone, require, helo, symbol, action):
    result = check(config(getattr(servers, ask), zone, require), helo)
    names = {s.name: s.options for s in result.verdict.symbols}
    assert symbol in names, names
    assert result.verdict.seed.action is action
    if symbol == "REGCHECK_UNVALIDATED":
        assert "registry answer not validated" in names[symbol]
    if symbol == "REGCHECK_DNSFAIL":
        assert "SERVFAIL" in names[symbol]


@pytest.mark.parametrize("authentic,ad", [(True, True), (False, False)], ids=["ad-asked", "ad-not-asked"])
def test_the_ad_bit_is_asked_for_and_read(servers, authentic, ad):
    """RFC 6840 5.7: unbound sets AD (without DO) only when the question asks for it."""

    async def go():  # type: ignore[no-untyped-def]
        transport = Transport([servers.unbound], timeout=2.0, authentic=authentic)
        try:
            return await transport.ask(f"heaven.net.{SIGNED}", RType.TXT)
        finally:
            transport.close()

    answer = asyncio.run(go())
    assert answer.status is DnsStatus.OK and answer.authentic is ad


DOC = Path(__file__).parent.parent / "docs" / "dns-security.md"


def test_the_docs_example_loads_and_its_table_gives_the_defaults():
    text = DOC.read_text()
    example = text.split("```toml\n", 1)[1].split("```", 1)[0]
    cfg = config_from_mapping(tomllib.loads(example))
    assert cfg.require_dnssec and cfg.nameservers == ("127.0.0.1",)
    defaults = Config()
    fields = {
        "dns.sockets": defaults.dns_sockets,
        "dns.rotate_every": defaults.dns_rotate_every,
        "dns.case_randomise": defaults.case_randomise,
        "dns.max_negative_ttl": defaults.max_negative_ttl,
        "dns.negative_ttl": defaults.negative_ttl,
        "dns.trusted_validators": list(defaults.trusted_validators),
        "registry.require_dnssec": defaults.require_dnssec,
    }
    rows = {
        line.split("|")[1].strip(" `"): line.split("|")[2].strip()
        for line in text.splitlines()
        if line.startswith("| `")
    }
    assert set(rows) == set(fields)
    for key, value in fields.items():
        assert tomllib.loads(f"x = {rows[key]}")["x"] == value, key
