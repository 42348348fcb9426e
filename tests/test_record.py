"""The REG1 record parser against docs/record-format.md, case by case."""

from __future__ import annotations

import ipaddress

import pytest

from rspamd_regcheck import InvalidRecord, Method, MethodOffer, Rating, parse_record, select_record
from rspamd_regcheck._record import MAX_RECORD_LENGTH, tokenize

R = Rating


def nets(record_list):
    return [b.text for b in record_list]


# -- the spec's examples, each with its stated meaning ---------------------------------------


def test_heaven_net():
    r = parse_record("v=reg1 svc=S1:A,M2:A,H1:B ip4=208.20.133.16/29 meth=SPF:10,SID:10")
    assert r.versioned
    assert r.ratings == (R("S1", "A"), R("M2", "A"), R("H1", "B"))
    assert nets(r.ip4) == ["208.20.133.16/29"]
    assert r.ip4[0].networks == (ipaddress.ip_network("208.20.133.16/29"),)
    assert r.ip6 is None
    assert r.methods == (MethodOffer(Method.SPF, 10), MethodOffer(Method.SID, 10))
    assert not r.stop and r.idlevel is None


def test_spammer_tld():
    r = parse_record("svc=S1:C,M2:C ip4=192.168.0.0/16")
    assert not r.versioned
    assert r.ratings == (R("S1", "C"), R("M2", "C"))
    assert nets(r.ip4) == ["192.168.0.0/16"]
    assert r.methods == ()


def test_wayforward_and_rr_offer_spf_only():
    for text in ("svc=S1:A,M2:A,H1:B meth=SPF:10",):
        r = parse_record(text)
        assert r.methods == (MethodOffer(Method.SPF, 10),)
        assert r.ip4 is None


def test_co_uk_idlevel():
    r = parse_record("IDlevel=3")
    assert r.idlevel == 3
    assert r.ratings == ()


def test_example_co_uk_stop():
    assert parse_record("stop=all").stop


def test_partner_example_mth_and_spf_param():
    r = parse_record('svc=S1:B,X9:A mth=CSV+2,SPF+5 spf="v=spf1 ip4:198.51.100.0/24 -all"')
    assert r.ratings == (R("S1", "B"), R("X9", "A"))
    assert r.methods == (MethodOffer(Method.CSA, 2), MethodOffer(Method.SPF, 5))
    assert r.param(Method.SPF) == "v=spf1 ip4:198.51.100.0/24 -all"
    assert r.param(Method.SID) is None


def test_old_example_range_and_opt():
    r = parse_record("svc=X1:A,S2:A mth=SPF+5,DKIM+3 ip4=192.168.92.216-218 opt=df:3")
    assert r.methods == (MethodOffer(Method.SPF, 5), MethodOffer(Method.DKIM, 3))
    assert r.default_status == 3
    block = r.ip4[0]
    assert block.text == "192.168.92.216-218"
    inside = [ipaddress.ip_address(f"192.168.92.{n}") in block for n in (215, 216, 217, 218, 219)]
    assert inside == [False, True, True, True, False]


# -- the spec's invalid examples, each rejected with a reason naming the key -----------------

INVALID = [
    pytest.param("svc=S1:A svc=M2:B", "svc", "given twice", id="key-twice"),
    pytest.param("ip4=300.1.1.1", "ip4", "bad IPv4 item", id="bad-ipv4"),
    pytest.param("IDlevel=x", "IDlevel", "not an integer", id="idlevel-not-int"),
    pytest.param("meth=SPF:10 mth=CSV+2", "mth", "both meth and mth", id="meth-and-mth"),
    pytest.param("svc=S1", "svc", "rating missing", id="rating-missing"),
    # beyond the spec's list: every rule of the grammar and the key table
    pytest.param("SVC=S1:A svc=M2:B", "svc", "given twice", id="key-twice-other-case"),
    pytest.param("svc=S1:A v=reg1", "v", "must come first", id="version-not-first"),
    pytest.param("v=reg2 svc=S1:A", "v", "unknown version", id="version-unknown"),
    pytest.param("stop=some", "stop", "not 'all'", id="stop-not-all"),
    pytest.param("IDlevel=1", "IDlevel", "outside 2..10", id="idlevel-too-small"),
    pytest.param("IDlevel=11", "IDlevel", "outside 2..10", id="idlevel-too-big"),
    pytest.param("svc=S1:a", "svc", "bad rating", id="rating-lowercase-letter"),
    pytest.param("svc=S1:1000", "svc", "bad rating", id="rating-over-999"),
    pytest.param("svc=S1:AB", "svc", "bad rating", id="rating-two-letters"),
    pytest.param("svc=S1_X:A", "svc", "bad service code", id="service-code-underscore"),
    pytest.param("svc=ABCDEFGHIJKLMNOPQ:A", "svc", "bad service code", id="service-code-17"),
    pytest.param("svc=S1:A,", "svc", "rating missing", id="svc-trailing-comma"),
    pytest.param("ip4=192.0.2.0/33", "ip4", "bad IPv4 item", id="ipv4-prefix-33"),
    pytest.param("ip4=192.0.2.9-3", "ip4", "below its start", id="ipv4-range-backwards"),
    pytest.param("ip4=192.0.2.9-256", "ip4", "above 255", id="ipv4-range-over-255"),
    pytest.param("ip4=2001:db8::1", "ip4", "bad IPv4 item", id="ipv6-in-ip4"),
    pytest.param("ip6=192.0.2.1", "ip6", "bad IPv6 item", id="ipv4-in-ip6"),
    pytest.param("ip6=2001:db8::/129", "ip6", "bad IPv6 item", id="ipv6-prefix-129"),
    pytest.param("meth=SPF", "meth", "not NAME:N", id="meth-no-count"),
    pytest.param("meth=SPF:1000", "meth", "more than 999", id="meth-count-over-999"),
    pytest.param("mth=SPF-3", "mth", "not NAME:N", id="mth-bad-separator"),
    pytest.param("opt=df", "opt", "is not k:v", id="opt-not-kv"),
    pytest.param("opt=df:0", "opt", "df:0", id="opt-df-0"),
    pytest.param("opt=df:1,df:2", "opt", "given twice", id="opt-df-twice"),
    pytest.param("stop=all opt=idlevel:3 IDlevel=4", "IDlevel", "disagrees", id="opt-disagrees"),
    pytest.param("opt=stop:none", "stop", "not 'all'", id="opt-stop-bad"),
]


@pytest.mark.parametrize("text,key,why", INVALID)
def test_invalid_records_name_the_key(text, key, why):
    with pytest.raises(InvalidRecord) as info:
        parse_record(text)
    assert any(r.startswith(f"{key}: ") and why in r for r in info.value.reasons), info.value.reasons


def test_every_problem_is_reported():
    with pytest.raises(InvalidRecord) as info:
        parse_record("svc=S1 ip4=300.1.1.1 IDlevel=x")
    assert [r.split(":")[0] for r in info.value.reasons] == ["IDlevel", "svc", "ip4"]


# -- grammar: separators, quoting, keys ------------------------------------------------------

SYNTAX_ERRORS = [
    pytest.param("", id="empty"),
    pytest.param(" ; ", id="only-separators"),
    pytest.param(" svc=S1:A", id="leading-space"),
    pytest.param("svc", id="key-without-value"),
    pytest.param("svc=", id="empty-bare-value"),
    pytest.param("=A", id="value-without-key"),
    pytest.param("1svc=S1:A", id="key-starts-with-digit"),
    pytest.param('spf="v=spf1 -all', id="unterminated-quote"),
    pytest.param('spf="v=spf1"-all', id="quote-then-text"),
    pytest.param('svc=S1:"A"', id="quote-inside-bare"),
    pytest.param("svc=S1:A\x00", id="nul"),
    pytest.param("svc=S1:\u00c4", id="non-ascii"),
    pytest.param("svc=S1:A,\nM2:B", id="newline"),
    pytest.param("x" * (MAX_RECORD_LENGTH + 1), id="too-long"),
]


@pytest.mark.parametrize("text", SYNTAX_ERRORS)
def test_syntax_errors_are_rejected(text):
    with pytest.raises(InvalidRecord) as info:
        parse_record(text)
    assert info.value.reasons and all(": " in r for r in info.value.reasons)


VALID_SYNTAX = [
    pytest.param("svc=S1:A;ip4=192.0.2.1", {"ratings": (R("S1", "A"),)}, id="semicolon-separator"),
    pytest.param("svc=S1:A\t ;; ip4=192.0.2.1", {"ratings": (R("S1", "A"),)}, id="mixed-separators"),
    pytest.param("svc=S1:A; ", {"ratings": (R("S1", "A"),)}, id="trailing-separator"),
    pytest.param("V=REG1 SVC=s1:A", {"versioned": True, "ratings": (R("S1", "A"),)}, id="upper-keys"),
    pytest.param("svc=S1:42,M2:0", {"ratings": (R("S1", "42"), R("M2", "0"))}, id="numeric-ratings"),
    pytest.param("svc=VX:partner.example,S1:A", {"vouches": ("partner.example",)}, id="vouch-kept-not-rated"),
    pytest.param("future-key=whatever svc=S1:A", {"ratings": (R("S1", "A"),)}, id="unknown-key-ignored"),
    pytest.param('note="a; b c" svc=S1:A', {"ratings": (R("S1", "A"),)}, id="quoted-unknown-key"),
    pytest.param('spf=""', {"params": ((Method.SPF, ""),)}, id="empty-quoted-value"),
    pytest.param("spf=v=spf1", {"params": ((Method.SPF, "v=spf1"),)}, id="equals-in-bare-value"),
    pytest.param(
        "meth=QR1:0,XYZ:3,csv:4",
        {"methods": (MethodOffer(Method.QR1, 0), MethodOffer(Method.CSA, 4))},
        id="unknown-method-ignored",
    ),
    pytest.param("stop=all opt=stop:all", {"stop": True}, id="stop-both-ways-agree"),
    pytest.param("opt=IDlevel:4,future:1", {"idlevel": 4}, id="opt-idlevel-unknown-option"),
    pytest.param("ip4=192.0.2.7/24", {}, id="host-bits-allowed"),
    pytest.param("ip6=2001:DB8::/32,::1", {}, id="ipv6-list"),
    pytest.param("x" * (MAX_RECORD_LENGTH - 2) + "=y", {}, id="exactly-max-length"),
]


@pytest.mark.parametrize("text,expected", VALID_SYNTAX)
def test_valid_syntax(text, expected):
    record = parse_record(text)
    for attr, value in expected.items():
        assert getattr(record, attr) == value


def test_tokenize_keeps_quoted_spaces():
    assert tokenize('a=1 spf="v=spf1 a -all";b=2') == [
        ("a", "1", False),
        ("spf", "v=spf1 a -all", True),
        ("b", "2", False),
    ]


# -- choosing the record among several TXT RRs ----------------------------------------------

SELECT = [
    pytest.param(["v=reg1 svc=S1:A"], "v=reg1 svc=S1:A", id="one-tagged"),
    pytest.param(["svc=S1:A"], "svc=S1:A", id="one-untagged"),
    pytest.param(["v=spf1 -all", "v=reg1 svc=S1:A"], "v=reg1 svc=S1:A", id="tagged-among-others"),
    pytest.param(["V=REG1;svc=S1:A", "hello"], "V=REG1;svc=S1:A", id="tag-any-case"),
    pytest.param(["v=reg10 a=b", "v=reg1"], "v=reg1", id="reg10-is-not-a-tag"),
]


@pytest.mark.parametrize("rrs,chosen", SELECT)
def test_select_record(rrs, chosen):
    assert select_record(rrs) == chosen


@pytest.mark.parametrize(
    "rrs",
    [
        pytest.param(["v=reg1 svc=S1:A", "v=reg1 svc=M2:A"], id="two-tagged"),
        pytest.param(["svc=S1:A", "svc=M2:A"], id="two-untagged"),
        pytest.param([], id="none"),
    ],
)
def test_select_record_ambiguous(rrs):
    with pytest.raises(InvalidRecord):
        select_record(rrs)
