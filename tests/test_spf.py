"""The SPF method against knot: results, alignment, registry records, budgets, the seed's examples."""

from __future__ import annotations

import asyncio
import ipaddress
from dataclasses import replace

import pytest

from rspamd_regcheck import Action, Budget, Checker, Config, Envelope, Session, make_resolver
from rspamd_regcheck._spf import aligned, check_host, spf_identity, spf_record
from rspamd_regcheck.config import config_from_mapping

from helpers import run_check, symbol_options

REG = "id.regcheck.test"
GOOD = "ratings=S1:A,M2:A,H1:B"


@pytest.fixture
def config(knot) -> Config:
    return replace(
        config_from_mapping({"policy": {"local_networks": []}, "spf": {"receiver": "mx.receiver.test"}}),
        registry_zones=(REG,),
        nameservers=(knot.host,),
        dns_port=knot.port,
    )


def check(config, ip, helo, mail_from=None):
    return run_check(config, ip, helo, mail_from=mail_from)


symbols = symbol_options


RESULTS = [
    pytest.param(
        "192.0.2.10",
        "a@pass.spf.example",
        Action.ACCEPT,
        "REGCHECK_SPF_ALLOW",
        ["spf.example", "mailfrom=pass.spf.example", "mechanism=ip4:192.0.2.0/24"],
        id="pass",
    ),
    pytest.param(
        "192.0.2.10",
        "a@fail.spf.example",
        Action.REJECT,
        "REGCHECK_SPF_FAIL",
        ["spf.example", "mailfrom=fail.spf.example", "mechanism=-all", GOOD],
        id="fail",
    ),
    pytest.param(
        "192.0.2.10",
        "a@soft.spf.example",
        Action.FILTER,
        "REGCHECK_SPF_SOFTFAIL",
        ["spf.example", "mailfrom=soft.spf.example", "mechanism=~all", GOOD],
        id="softfail",
    ),
    pytest.param(
        "192.0.2.10",
        "a@neutral.spf.example",
        Action.FILTER,
        "REGCHECK_SPF_NEUTRAL",
        ["spf.example", "mailfrom=neutral.spf.example", "mechanism=?all", GOOD],
        id="neutral",
    ),
    pytest.param(
        "192.0.2.10",
        "a@none.spf.example",
        Action.CONTINUE,
        "REGCHECK_SPF_NA",
        ["spf.example", "mailfrom=none.spf.example", GOOD],
        id="none",
    ),
    pytest.param(
        "192.0.2.10",
        "a@perm.spf.example",
        Action.CONTINUE,
        "REGCHECK_SPF_PERMFAIL",
        ["spf.example", "mailfrom=perm.spf.example", GOOD],
        id="permerror",
    ),
    pytest.param(
        "192.0.2.10",
        "a@temp.spf.example",
        Action.TEMPFAIL,
        "REGCHECK_SPF_DNSFAIL",
        ["spf.example", "mailfrom=temp.spf.example", GOOD],
        id="temperror",
    ),
    pytest.param(
        "192.0.2.25",
        "a@mxpass.spf.example",
        Action.ACCEPT,
        "REGCHECK_SPF_ALLOW",
        ["spf.example", "mailfrom=mxpass.spf.example", "mechanism=mx"],
        id="pass-via-mx",
    ),
    pytest.param(
        "192.0.2.10",
        "a@toomany.spf.example",
        Action.CONTINUE,
        "REGCHECK_SPF_PERMFAIL",
        ["spf.example", "mailfrom=toomany.spf.example", GOOD],
        id="more-than-10-lookups",
    ),
    pytest.param(
        "192.0.2.10",
        "a@voids.spf.example",
        Action.CONTINUE,
        "REGCHECK_SPF_PERMFAIL",
        ["spf.example", "mailfrom=voids.spf.example", GOOD],
        id="more-than-2-void-lookups",
    ),
    pytest.param(
        "192.0.2.25",
        "",
        Action.ACCEPT,
        "REGCHECK_SPF_ALLOW",
        ["spf.example", "helo=mx.spf.example", "mechanism=a"],
        id="null-sender-helo-identity",
    ),
]


@pytest.mark.parametrize("ip,mail_from,action,symbol,options", RESULTS)
def test_spf_results(config, ip, mail_from, action, symbol, options):
    result = check(config, ip, "mx.spf.example", mail_from)
    got = symbols(result)
    assert result.verdict.seed.action is action, result.verdict.seed
    assert got[symbol] == options
    headers = dict(result.verdict.add_headers)
    spf_word = symbol.rsplit("_", 1)[1]
    expected_word = {
        "ALLOW": "Pass",
        "FAIL": "Fail",
        "SOFTFAIL": "SoftFail",
        "NEUTRAL": "Neutral",
        "NA": "None",
        "PERMFAIL": "PermError",
        "DNSFAIL": "TempError",
    }[spf_word]
    assert headers["Received-SPF"].startswith(f"{expected_word} (mx.receiver.test: ")
    assert f"client-ip={ip};" in headers["Received-SPF"]
    assert set(result.verdict.remove_headers) == {"X-Regcheck", "Received-SPF"}
    assert ("REGCHECK_RATING_HIGH" in got) is (action is Action.ACCEPT)
    if action is Action.CONTINUE:
        assert "REGCHECK_UNVERIFIED" in got


def test_header_injection_through_an_spf_record_is_defused(config):
    """An SPF record's bad term carrying CR LF and a header name: pyspf puts the term into
    Received-SPF's problem=; it must reach the MTA as one line, not as a header of the sender's."""
    result = check(config, "192.0.2.10", "mx.spf.example", "a@inject.spf.example")
    received = dict(result.verdict.add_headers)["Received-SPF"]
    assert received.startswith("PermError (mx.receiver.test: "), received
    assert "X-Injected: yes" in received  # the text is kept, on the same line
    assert not any(c in received for c in "\r\n\t\x00"), repr(received)


def test_seed_wayforward_alignment_none(config):
    result = check(replace(config, spf_alignment="none"), "69.55.226.139", "mx1.wayforward.net", "tway@optsw.com")
    assert result.verdict.seed.action is Action.ACCEPT
    assert symbols(result)["REGCHECK_SPF_ALLOW"] == [
        "wayforward.net",
        "mailfrom=optsw.com",
        "mechanism=ip4:69.55.226.128/25",
    ]
    assert dict(result.verdict.add_headers)["X-Regcheck"] == "69.55.226.139 wayforward.net SPF pass " + GOOD


def test_seed_wayforward_relaxed_checks_the_helo(config):
    result = check(config, "69.55.226.139", "mx1.wayforward.net", "tway@optsw.com")
    assert result.verdict.seed.action is Action.ACCEPT
    assert symbols(result)["REGCHECK_SPF_ALLOW"] == [
        "wayforward.net",
        "helo=mx1.wayforward.net",
        "unaligned=tway@optsw.com",
        "mechanism=a",
    ]
    assert "identity=helo" in dict(result.verdict.add_headers)["Received-SPF"]


def test_seed_rr_tld_null_sender_softfail(config):
    result = check(config, "192.0.4.1", "mx1.abilene.texas.rr.tld", "")
    assert result.verdict.seed.action is Action.FILTER
    assert symbols(result)["REGCHECK_SPF_SOFTFAIL"] == [
        "rr.tld",
        "helo=mx1.abilene.texas.rr.tld",
        "mechanism=~all",
        GOOD,
    ]
    assert dict(result.verdict.add_headers)["X-Regcheck"] == "192.0.4.1 rr.tld SPF softfail " + GOOD


@pytest.mark.parametrize(
    "alignment,action,high",
    [
        pytest.param("relaxed", Action.REJECT, False, id="relaxed-checks-helo-and-fails"),
        pytest.param("none", Action.ACCEPT, True, id="seed-behaviour-lends-the-rating"),
    ],
)
def test_spammer_mail_from_does_not_borrow_a_good_id(config, alignment, action, high):
    """A good ID's HELO with the spammer's own SPF-passing MAIL FROM, from an IP the ID does not use."""
    result = check(
        replace(config, spf_alignment=alignment), "203.0.113.66", "mx.spf.example", "boss@spammer-own.example"
    )
    assert result.verdict.seed.action is action
    assert ("REGCHECK_RATING_HIGH" in symbols(result)) is high


def test_registry_supplied_record(config):
    result = check(config, "198.51.100.5", "mx.partner.example", "")
    got = symbols(result)
    assert got["REGCHECK_SPF_ALLOW"] == [
        "partner.example",
        "helo=mx.partner.example",
        "record=registry",
        "mechanism=ip4:198.51.100.0/24",
    ]
    assert result.verdict.seed.action is Action.FILTER  # S1:B only: low ratings
    other = check(config, "203.0.113.5", "mx.partner.example", "")
    assert "REGCHECK_SPF_FAIL" in symbols(other)


def test_budget_stops_spf_and_knot_sees_no_more(knot, config):
    before = knot.queries()
    result = check(config, "203.0.113.4", "mx.spfgreedy.example", "a@spfgreedy.example")
    asked = knot.queries() - before
    got = symbols(result)
    assert got["REGCHECK_BUDGET"] == ["spfgreedy.example", "SPF", "method budget of 3 queries spent"]
    assert "REGCHECK_UNVERIFIED" in got
    assert result.verdict.seed.action is Action.CONTINUE
    assert asked <= 1 + 3  # the registry question and at most the method's budget
    assert result.queries == 1 + 3


def test_budget_counts_cache_hits(config):
    """Warm or cold, the budget ends the evaluation at the same place."""

    async def go():
        checker = Checker(replace(config, result_cache_size=0))  # the DNS cache answers, the check runs again
        env = Envelope(
            ip=ipaddress.ip_address("203.0.113.4"), helo="mx.spfgreedy.example", mail_from="a@spfgreedy.example"
        )
        try:
            return [await checker.check(env) for _ in range(2)]
        finally:
            checker.close()

    cold, warm = asyncio.run(go())
    assert cold.verdict == warm.verdict and cold.queries == warm.queries == 4


def test_check_host_evaluates_a_supplied_record_without_dns(config):
    async def go():
        resolver = make_resolver(config)
        try:
            session = Session(resolver, cap=10)
            return await check_host(
                session,
                Budget(5),
                ipaddress.ip_address("192.0.2.1"),
                "a@x.example",
                "mx.x.example",
                "v=spf1 ip4:192.0.2.0/24 -all",
            ), session.count
        finally:
            resolver.close()

    ev, count = asyncio.run(go())
    assert (ev.result, ev.identity, ev.domain, count) == ("pass", "mailfrom", "x.example", 0)


@pytest.mark.parametrize(
    "mail_from,ident,expected",
    [
        pytest.param("a@heaven.net", "heaven.net", True, id="same"),
        pytest.param("a@mail.heaven.net", "heaven.net", True, id="under"),
        pytest.param("a@HEAVEN.NET.", "heaven.net", True, id="case-and-dot"),
        pytest.param("a@notheaven.net", "heaven.net", False, id="suffix-not-label"),
        pytest.param("a@optsw.com", "wayforward.net", False, id="other"),
        pytest.param("no-at-sign", "heaven.net", False, id="no-domain"),
    ],
)
def test_alignment(mail_from, ident, expected):
    assert aligned(mail_from, ident) is expected


def test_identity_choice():
    assert spf_identity(None, "mx.a.example", "a.example", "relaxed") == ("", "null-sender")
    assert spf_identity("", "mx.a.example", "a.example", "none") == ("", "null-sender")
    assert spf_identity("x@b.example", "mx.a.example", "a.example", "relaxed") == ("", "unaligned-mailfrom")
    assert spf_identity("x@b.example", "mx.a.example", "a.example", "none") == ("x@b.example", "mailfrom")
    assert spf_identity("x@a.example", "mx.a.example", "a.example", "relaxed") == ("x@a.example", "mailfrom")


@pytest.mark.parametrize(
    "text,record",
    [("ip4:1.2.3.4 -all", "v=spf1 ip4:1.2.3.4 -all"), ("v=spf1 -all", "v=spf1 -all"), ("V=SPF1 a", "V=SPF1 a")],
)
def test_spf_record(text, record):
    assert spf_record(text) == record
