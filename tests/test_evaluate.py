"""The pure decision core: facts in, symbols, headers and the seed's verdict out."""

from __future__ import annotations

import ipaddress

import pytest

from rspamd_regcheck import (
    Action,
    BadHelo,
    Facts,
    Method,
    MethodOutcome,
    Policy,
    RatingPolicy,
    RegistryFacts,
    RegistryStatus,
    Result,
    evaluate,
    parse_record,
    plan,
    rate,
)
from rspamd_regcheck.config import SEED_METHOD_LIMITS, SEED_METHOD_ORDER

POLICY = Policy(RatingPolicy(), SEED_METHOD_ORDER, SEED_METHOD_LIMITS)
IP = ipaddress.ip_address("208.20.133.17")


def found(text, *methods, ip=IP, ident="heaven.net"):
    record = parse_record(text)
    return Facts(
        ip=ip,
        helo="mx." + ident,
        id=ident,
        registry=RegistryFacts(RegistryStatus.FOUND, record=record),
        ratings=rate(record.ratings, POLICY.ratings),
        methods=tuple(methods),
    )


def qr1(result, *options):
    return MethodOutcome(Method.QR1, result, options)


HEAVEN = "svc=S1:A,M2:A,H1:B ip4=208.20.133.16/29"
CASES = [
    pytest.param(
        found(HEAVEN, qr1(Result.PASS, "208.20.133.16/29")),
        Action.ACCEPT,
        250,
        {
            "REGCHECK_QR1_ALLOW": ("heaven.net", "208.20.133.16/29"),
            "REGCHECK_RATING_HIGH": ("heaven.net", "ratings=S1:A,M2:A,H1:B"),
        },
        "208.20.133.17 heaven.net QR1 pass ratings=S1:A,M2:A,H1:B",
        id="qr1-pass-high-accept",
    ),
    pytest.param(
        found(HEAVEN, qr1(Result.FAIL, "208.20.133.32")),
        Action.REJECT,
        550,
        # a failing ID earns nothing from its ratings: they are only an option
        {"REGCHECK_QR1_FAIL": ("heaven.net", "208.20.133.32", "ratings=S1:A,M2:A,H1:B")},
        "208.20.133.17 heaven.net QR1 fail ratings=S1:A,M2:A,H1:B",
        id="qr1-fail-reject",
    ),
    pytest.param(
        found("svc=S1:C,M2:C ip4=192.168.0.0/16", qr1(Result.PASS, "192.168.0.0/16"), ident="spammer.tld"),
        Action.FILTER,
        250,
        {
            "REGCHECK_QR1_ALLOW": ("spammer.tld", "192.168.0.0/16"),
            "REGCHECK_RATING_LOW": ("spammer.tld", "ratings=S1:C,M2:C"),
        },
        "208.20.133.17 spammer.tld QR1 pass ratings=S1:C,M2:C",
        id="qr1-pass-low-filter",
    ),
    pytest.param(
        found("svc=S1:D,M2:C ip4=192.0.2.0/24"),
        Action.REJECT,
        550,
        {"REGCHECK_RATING_BAD": ("heaven.net", "ratings=S1:D,M2:C")},
        None,
        id="bad-rating-quick-reject",
    ),
    pytest.param(
        found("svc=X1:A ip4=192.0.2.0/24"),
        Action.FILTER,
        250,
        {"REGCHECK_NO_RATINGS": ("heaven.net",)},
        "208.20.133.17 heaven.net NONE unverified ratings=",
        id="no-trusted-rating-filter",
    ),
    pytest.param(
        found("svc=S1:A,M2:A,H1:B meth=SPF:10"),
        Action.CONTINUE,
        250,
        {"REGCHECK_UNVERIFIED": ("heaven.net", "ratings=S1:A,M2:A,H1:B")},
        "208.20.133.17 heaven.net NONE unverified ratings=S1:A,M2:A,H1:B",
        id="no-method-ran-continue",
    ),
    pytest.param(
        found(
            "svc=S1:A,M2:A,H1:B meth=SPF:40",
            MethodOutcome(Method.SPF, None, ("SPF", "needs 40 queries, limit 30"), budget=True),
        ),
        Action.CONTINUE,
        250,
        {
            "REGCHECK_BUDGET": ("heaven.net", "SPF", "needs 40 queries, limit 30"),
            "REGCHECK_UNVERIFIED": ("heaven.net", "ratings=S1:A,M2:A,H1:B"),
        },
        "208.20.133.17 heaven.net NONE unverified ratings=S1:A,M2:A,H1:B",
        id="budget-skip-then-unverified",
    ),
    pytest.param(
        found("svc=S1:A,M2:A,H1:B meth=SPF:10", MethodOutcome(Method.SPF, Result.TEMPERROR, ("timeout",))),
        Action.TEMPFAIL,
        451,
        {
            "REGCHECK_SPF_DNSFAIL": ("heaven.net", "timeout", "ratings=S1:A,M2:A,H1:B"),
            "REGCHECK_UNVERIFIED": ("heaven.net", "ratings=S1:A,M2:A,H1:B"),
        },
        "208.20.133.17 heaven.net NONE unverified ratings=S1:A,M2:A,H1:B",
        id="temperror-exhausted-tempfail",
    ),
    pytest.param(
        found("svc=S1:A,M2:A,H1:B meth=SPF:10", MethodOutcome(Method.SPF, Result.SOFTFAIL)),
        Action.FILTER,
        250,
        {"REGCHECK_SPF_SOFTFAIL": ("heaven.net", "ratings=S1:A,M2:A,H1:B")},
        "208.20.133.17 heaven.net SPF softfail ratings=S1:A,M2:A,H1:B",
        id="softfail-filter",
    ),
    pytest.param(
        found("svc=S1:A,M2:A,H1:B", MethodOutcome(Method.SPF, Result.NONE), MethodOutcome(Method.CSA, Result.PASS)),
        Action.ACCEPT,
        250,
        {
            "REGCHECK_SPF_NA": ("heaven.net", "ratings=S1:A,M2:A,H1:B"),
            "REGCHECK_CSA_ALLOW": ("heaven.net",),
            "REGCHECK_RATING_HIGH": ("heaven.net", "ratings=S1:A,M2:A,H1:B"),
        },
        "208.20.133.17 heaven.net CSA pass ratings=S1:A,M2:A,H1:B",
        id="not-final-then-pass",
    ),
    pytest.param(
        found("stop=all"),
        Action.REJECT,
        550,
        {"REGCHECK_STOP": ("heaven.net",)},
        None,
        id="stop-all",
    ),
    pytest.param(
        Facts(ip=IP, helo=BadHelo("bare-word", "JUPITER")),
        Action.REJECT,
        550,
        {"REGCHECK_BAD_HELO": ("bare-word", "JUPITER")},
        None,
        id="bad-helo",
    ),
    pytest.param(
        Facts(ip=IP, helo=None),
        Action.REJECT,
        550,
        {"REGCHECK_BAD_HELO": ("missing",)},
        None,
        id="missing-helo",
    ),
    pytest.param(
        Facts(ip=IP, helo="mx.nowhere.example", id="nowhere.example", registry=RegistryFacts(RegistryStatus.NO_RECORD)),
        Action.REJECT,
        550,
        {"REGCHECK_NO_RECORD": ("nowhere.example",)},
        None,
        id="no-record",
    ),
    pytest.param(
        Facts(
            ip=IP,
            helo="mx.broken.example",
            id="broken.example",
            registry=RegistryFacts(RegistryStatus.INVALID, reasons=("svc: given twice",)),
        ),
        Action.TEMPFAIL,
        451,
        {"REGCHECK_RECORD_PERMFAIL": ("broken.example", "svc: given twice")},
        None,
        id="invalid-record",
    ),
    pytest.param(
        Facts(
            ip=IP,
            helo="mx.slow.example",
            id="slow.example",
            registry=RegistryFacts(RegistryStatus.DNSFAIL, reasons=("timeout",)),
        ),
        Action.TEMPFAIL,
        451,
        {"REGCHECK_DNSFAIL": ("slow.example", "timeout")},
        None,
        id="dns-failure",
    ),
    pytest.param(
        Facts(
            ip=IP,
            helo="mx.signed.example",
            id="signed.example",
            registry=RegistryFacts(RegistryStatus.UNVALIDATED, reasons=("registry answer not validated",)),
        ),
        Action.TEMPFAIL,
        451,
        {"REGCHECK_UNVALIDATED": ("signed.example", "registry answer not validated")},
        None,
        id="registry-answer-not-validated",
    ),
    pytest.param(
        Facts(
            ip=IP,
            helo="mx.deep.example",
            id="deep.example",
            registry=RegistryFacts(RegistryStatus.BUDGET, reasons=("check query cap 2 reached",)),
        ),
        Action.CONTINUE,
        250,
        {"REGCHECK_BUDGET": ("deep.example", "check query cap 2 reached")},
        None,
        id="registry-over-budget",
    ),
    pytest.param(
        Facts(ip=None, skipped="no client IP"),
        Action.CONTINUE,
        250,
        {},
        None,
        id="skipped",
    ),
]


@pytest.mark.parametrize("facts,action,code,symbols,header", CASES)
def test_evaluate(facts, action, code, symbols, header):
    v = evaluate(facts, POLICY)
    assert v.seed.action is action
    assert v.seed.smtp_code == code
    assert v.seed.xcode.startswith(str(code)[0] + ".")
    assert v.seed.message
    assert {h.name: h.options for h in v.symbols} == symbols
    assert [h.name for h in v.symbols] == sorted(symbols)
    assert all(0.0 <= h.weight <= 1.0 for h in v.symbols)
    assert dict(v.add_headers).get("X-Regcheck") == header
    assert v.remove_headers == (() if facts.skipped else ("X-Regcheck",))


def test_rating_symbols_carry_dynamic_weights():
    v = evaluate(found(HEAVEN, qr1(Result.PASS, "208.20.133.16/29")), POLICY)
    weights = {h.name: h.weight for h in v.symbols}
    assert weights["REGCHECK_QR1_ALLOW"] == 1.0
    assert weights["REGCHECK_RATING_HIGH"] == pytest.approx((25 / 3 - 4) / 5, abs=1e-4)


def test_messages_are_the_projects_own():
    v = evaluate(found(HEAVEN, qr1(Result.FAIL, "208.20.133.32")), POLICY)
    assert v.seed.message == "Host 208.20.133.17 is not authorised to send mail for 'heaven.net' (QR1)"


# -- the plan (docs/scoring.md, step 6) ----------------------------------------------------------------

NO_DKIM = Policy(RatingPolicy(), SEED_METHOD_ORDER[:-1], SEED_METHOD_LIMITS)
PLANS = [
    pytest.param(
        "ip4=192.0.2.0/24 meth=SPF:10,SID:10",
        POLICY,
        ["QR1:0", "SPF:10", "SID:10"],
        [],
        id="qr1-first-then-receiver-order",
    ),
    pytest.param(
        "meth=DKIM:1,SID:10,SPF:10,CSV:2",
        POLICY,
        ["CSA:2", "SPF:10", "SID:10", "DKIM:1"],
        [],
        id="receiver-order-not-sender-order",
    ),
    pytest.param("ip6=2001:db8::/32 meth=SPF:10", POLICY, ["SPF:10"], [], id="no-list-for-family"),
    pytest.param("ip4=192.0.2.0/24 meth=SPF:31,CSV:5", POLICY, ["QR1:0"], ["CSA", "SPF"], id="over-limit-skipped"),
    pytest.param("meth=QR1:0,DKIM:3", NO_DKIM, [], [], id="not-in-receiver-order"),
    pytest.param("meth=QR1:0,DKIM:3", POLICY, ["DKIM:3"], [], id="qr1-needs-netblocks"),
    pytest.param("meth=SPF:0", POLICY, ["SPF:0"], [], id="zero-queries"),
]


@pytest.mark.parametrize("record,policy,planned,budget", PLANS)
def test_plan(record, policy, planned, budget):
    steps, skips = plan(parse_record(record), IP, policy)
    assert [f"{s.method.value}:{s.budget}" for s in steps] == planned
    assert [s.method.value for s in skips] == budget
    assert all(s.budget and s.result is None for s in skips)
