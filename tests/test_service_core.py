"""The pure core of the rating services: return codes, VBR, local lists, the fallback's record, config."""

from __future__ import annotations

import dataclasses
import ipaddress

import pytest

from rspamd_regcheck import ConfigError, DnsAnswer, DnsStatus, Method, Rating
from rspamd_regcheck._fallback import assumed_record
from rspamd_regcheck._ratings import DEFAULT_REFUSALS, Reading, ServiceScale, first_hand, parse_code_pattern, read_codes
from rspamd_regcheck._services import LocalList, LocalService, parse_local_list
from rspamd_regcheck._types import MethodOffer
from rspamd_regcheck._vbr import Claim, header_claims, read_vouch
from rspamd_regcheck.config import config_from_mapping

A = ipaddress.IPv4Address

PATTERNS = [
    # id, pattern, matches, does not match
    pytest.param("127.0.1.2", ["127.0.1.2"], ["127.0.1.3", "127.0.2.2"], id="one-code"),
    pytest.param("127.0.1.4-127.0.1.6", ["127.0.1.4", "127.0.1.6"], ["127.0.1.3", "127.0.1.7"], id="range"),
    pytest.param("127.0.1.0/24", ["127.0.1.0", "127.0.1.255"], ["127.0.2.1"], id="network"),
    pytest.param("127.0.*.3", ["127.0.0.3", "127.0.15.3"], ["127.0.15.2", "127.1.15.3"], id="wildcard-octet"),
    pytest.param("127.0.*.0-127.0.*.1", ["127.0.3.0", "127.0.10.1"], ["127.0.10.2", "127.1.0.0"], id="wildcard-range"),
    pytest.param("*.*.*.*", ["127.0.0.1", "10.1.2.3"], [], id="all-wildcards"),
]


@pytest.mark.parametrize("text,yes,no", PATTERNS)
def test_code_patterns(text, yes, no):
    p = parse_code_pattern(text)
    assert [c for c in yes if p.matches(A(c))] == yes
    assert [c for c in no if p.matches(A(c))] == []


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("127.0.1", id="three-octets"),
        pytest.param("127.0.1.256", id="octet-too-big"),
        pytest.param("127.0.x.1", id="not-a-number"),
        pytest.param("127.0.*.1-127.*.0.1", id="wildcards-in-different-places"),
        pytest.param("127.0.1.5-127.0.1.4", id="backwards"),
        pytest.param("127.0.1.0/33", id="bad-prefix"),
    ],
)
def test_bad_code_patterns(text):
    with pytest.raises(ValueError):
        parse_code_pattern(text)


SCALE = ServiceScale(5.0, {"A": 9.0, "B": 7.0, "C": 5.0, "D": 0.0})
DNSWL = (
    (parse_code_pattern("127.0.*.3"), "A"),
    (parse_code_pattern("127.0.*.2"), "B"),
    (parse_code_pattern("127.0.*.0-127.0.*.1"), "C"),
)


def ok(*codes):
    return DnsAnswer(DnsStatus.OK, codes)


READINGS = [
    # id, answer, unlisted, rating, note
    pytest.param(ok("127.0.15.3"), None, "A", "", id="high"),
    pytest.param(ok("127.0.15.3", "127.0.4.1"), None, "C", "", id="two-codes-the-worse-counts"),
    pytest.param(ok("127.0.0.9"), None, None, "", id="unknown-code-is-unlisted"),
    pytest.param(ok("127.0.0.9"), "C", "C", "", id="unknown-code-unlisted-rating"),
    pytest.param(DnsAnswer(DnsStatus.NXDOMAIN), None, None, "", id="nxdomain"),
    pytest.param(DnsAnswer(DnsStatus.NODATA), "C", "C", "", id="nodata-unlisted-rating"),
    pytest.param(ok("127.0.0.255"), "C", None, "S:refused 127.0.0.255", id="dnswl-refusal"),
    pytest.param(ok("127.0.15.3", "127.255.255.254"), None, None, "S:refused 127.255.255.254", id="mixed-refusal"),
    pytest.param(ok("127.0.1.255"), None, None, "S:refused 127.0.1.255", id="dbl-refusal"),
    pytest.param(ok("192.0.2.1"), None, None, "S:dnsfail 192.0.2.1 is not a 127/8 code", id="not-127"),
    pytest.param(ok("::1"), None, None, "S:dnsfail not an IPv4 answer '::1'", id="not-ipv4"),
    pytest.param(DnsAnswer(DnsStatus.TIMEOUT, detail="timeout"), "C", None, "S:dnsfail timeout", id="timeout"),
    pytest.param(DnsAnswer(DnsStatus.SERVFAIL), None, None, "S:dnsfail servfail", id="servfail"),
    pytest.param(DnsAnswer(DnsStatus.BUDGET, detail="cap"), None, None, "S:budget cap", id="budget"),
]


@pytest.mark.parametrize("answer,unlisted,rating,note", READINGS)
def test_read_codes(answer, unlisted, rating, note):
    assert read_codes("S", answer, DNSWL, SCALE, DEFAULT_REFUSALS, unlisted) == Reading("S", rating, note)


def test_first_hand_ratings_come_first_and_replace_the_record_copy():
    record = (Rating("S1", "A"), Rating("DWL", "A"), Rating("M2", "B"))
    readings = [Reading("LOCAL", None), Reading("DWL", "C"), Reading("DBL", None, "DBL:refused 127.0.1.255")]
    used, notes = first_hand(readings, record, {"LOCAL", "DWL", "DBL"})
    assert used == (Rating("DWL", "C"), Rating("S1", "A"), Rating("M2", "B"))
    assert notes == ("DBL:refused 127.0.1.255",)


# -- VBR ------------------------------------------------------------------------------------------

CLAIMS = [
    pytest.param(
        [("VBR-Info", "md=example.com; mc=list; mv=a.example:b.example")],
        [Claim("a.example", "list"), Claim("b.example", "list")],
        id="rfc5518-two-vouchers",
    ),
    pytest.param([("vbr-info", "MD=Example.com.;MC=all;MV=A.example")], [Claim("a.example", "all")], id="case"),
    pytest.param([("VBR-Info", "md=other.com; mc=all; mv=a.example")], [], id="another-domain"),
    pytest.param([("VBR-Info", "md=example.com; mc=all")], [], id="no-vouchers"),
    pytest.param([("VBR-Info", "md=example.com; mc=a b; mv=a.example")], [], id="bad-type"),
    pytest.param([("VBR-Info", "md=example.com; mv=a.example:-bad-:a.example")], [Claim("a.example")], id="dedup"),
    pytest.param([("Subject", "md=example.com; mv=a.example")], [], id="other-header"),
    pytest.param(
        [("VBR-Info", "md=example.com; mv=" + ":".join(f"v{i}.example" for i in range(20)))],
        [Claim(f"v{i}.example") for i in range(8)],
        id="at-most-eight",
    ),
]


@pytest.mark.parametrize("headers,claims", CLAIMS)
def test_vbr_header_claims(headers, claims):
    assert list(header_claims(headers, "example.com")) == claims


def txt(*texts):
    return DnsAnswer(DnsStatus.OK, texts)


VOUCHES = [
    pytest.param(Claim("v.example", "list"), txt("all"), "A", "", id="all"),
    pytest.param(Claim("v.example", "list"), txt("transaction list"), "A", "", id="type-listed"),
    pytest.param(Claim("v.example", "list"), txt("transaction"), None, "", id="type-not-listed"),
    pytest.param(Claim("v.example"), txt("transaction"), "A", "", id="record-claim-any-type"),
    pytest.param(Claim("v.example"), txt("not;types"), None, "", id="not-a-type-list"),
    pytest.param(Claim("v.example"), txt(""), None, "", id="empty"),
    pytest.param(Claim("v.example"), DnsAnswer(DnsStatus.NXDOMAIN), None, "", id="no-record"),
    pytest.param(
        Claim("v.example"),
        DnsAnswer(DnsStatus.TIMEOUT, detail="timeout"),
        None,
        "VBR:v.example dnsfail timeout",
        id="failure",
    ),
]


@pytest.mark.parametrize("claim,answer,rating,note", VOUCHES)
def test_read_vouch(claim, answer, rating, note):
    assert read_vouch("VBR", claim, answer, "A") == Reading("VBR", rating, note)


# -- local lists ------------------------------------------------------------------------------------

RATINGS = {"A": 9.0, "D": 0.0}


def test_local_list_lookup():
    entries = parse_local_list(
        "# comment\n\nexample.com A  # ok\n192.0.2.0/24 D\n192.0.2.128/25 A\n2001:db8::/32 D\nExample.NET. D\n",
        "r.txt",
        RATINGS,
    )
    lst = LocalList(LocalService("LOCAL", "/nonexistent", entries), RATINGS)
    ip = ipaddress.ip_address
    assert lst.reading("example.com", ip("192.0.2.1")).rating == "A"  # the ID's line wins over a network
    assert lst.reading("other.com", ip("192.0.2.1")).rating == "D"
    assert lst.reading("other.com", ip("192.0.2.200")).rating == "A"  # the narrowest network
    assert lst.reading("other.com", ip("2001:db8::1")).rating == "D"
    assert lst.reading("example.net", ip("198.51.100.1")).rating == "D"
    assert lst.reading("other.com", ip("198.51.100.1")).rating is None


@pytest.mark.parametrize(
    "text,message",
    [
        pytest.param("a.com A\nb.com\n", "r.txt:2: expected 'ID-or-CIDR RATING'", id="one-word"),
        pytest.param("a.com A extra\n", "r.txt:1: expected", id="three-words"),
        pytest.param("a.com Z\n", "r.txt:1: rating 'Z' is not one of this service's ratings (A, D)", id="rating"),
        pytest.param("192.0.2.0/33 A\n", "r.txt:1: '192.0.2.0/33' is not an IP address or network", id="cidr"),
        pytest.param("\n# x\nbad_name! A\n", "r.txt:3: 'bad_name!' is not a domain name", id="name"),
        pytest.param("1.2.3 A\n", "r.txt:1: '1.2.3' is not an IP address or network", id="short-ip"),
    ],
)
def test_local_list_errors_name_the_line(text, message):
    with pytest.raises(ConfigError) as err:
        parse_local_list(text, "r.txt", RATINGS)
    assert str(err.value).startswith(message)


# -- the fallback's record ------------------------------------------------------------------------


def test_assumed_record():
    limits = {Method.SPF: 30, Method.CSA: 4}
    assert assumed_record(limits, csa=False).methods == (MethodOffer(Method.SPF, 30),)
    rec = assumed_record(limits, csa=True)
    assert rec.methods == (MethodOffer(Method.CSA, 4), MethodOffer(Method.SPF, 30))
    assert (rec.ip4, rec.ip6, rec.stop, rec.ratings) == (None, None, False, ())


# -- configuration --------------------------------------------------------------------------------

S = {"ratings": {"A": 9, "D": 0}}
Z = {**S, "zone": "dwl.example", "codes": {"127.0.*.3": "A"}}

BAD_CONFIG = [
    pytest.param({"zone": "x.example", **S}, "services.X.codes: missing", id="zone-without-codes"),
    pytest.param({**Z, "codes": {"127.0.*.3": "Q"}}, "services.X.codes.127.0.*.3: 'Q' is not one of", id="rating"),
    pytest.param({**Z, "codes": {"127.0.*": "A"}}, "services.X.codes.127.0.*: '127.0.*' is not", id="code"),
    pytest.param({**Z, "ask": "mx"}, "services.X.ask: 'mx' is not one of id, helo, ip", id="ask"),
    pytest.param({**Z, "unlisted": "Q"}, "services.X.unlisted: 'Q' is not one of", id="unlisted"),
    pytest.param({**Z, "blocked": ["300.0.0.1"]}, "services.X.blocked[0]:", id="blocked"),
    pytest.param({**Z, "file": "x"}, "services.X.file: a service answers one way", id="two-sources"),
    pytest.param({**S, "ask": "id"}, "services.X.ask: only a service with a zone", id="ask-without-zone"),
    pytest.param({**S, "vouchers": []}, "services.X.vouchers: expected a list", id="no-vouchers"),
    pytest.param({**S, "vouchers": [{"domain": "v.example"}]}, "services.X.vouchers[0]: needs", id="voucher"),
    pytest.param(
        {**S, "vouchers": [{"domain": "v.example", "rating": "Q"}]}, "services.X.vouchers[0].rating:", id="v-rating"
    ),
    pytest.param({**S, "file": "/nonexistent/r.txt"}, "/nonexistent/r.txt: cannot read", id="missing-file"),
]


@pytest.mark.parametrize("table,message", BAD_CONFIG)
def test_bad_service_config(table, message):
    with pytest.raises(ConfigError) as err:
        config_from_mapping({"services": {"X": table}})
    assert str(err.value).startswith(message)


def test_bad_fallback():
    with pytest.raises(ConfigError, match=r"registry\.fallback: 'maybe' is not one of none, authenticate"):
        config_from_mapping({"registry": {"fallback": "maybe"}})


def test_service_config_round_trips_through_config_check(tmp_path):
    (tmp_path / "r.txt").write_text("example.com A\n")
    data = {
        "registry": {"fallback": "authenticate"},
        "services": {
            "DWL": {**Z, "ask": "helo", "unlisted": "D", "blocked": ["127.0.0.255"], "ipv6": False},
            "VBR": {**S, "vouchers": [{"domain": "v.example", "rating": "A"}]},
            "LOCAL": {**S, "file": "r.txt"},
        },
    }
    cfg = config_from_mapping(data, base_dir=str(tmp_path))
    import tomllib

    again = config_from_mapping(tomllib.loads(cfg.to_toml()), base_dir=str(tmp_path))
    assert again.rating_services == cfg.rating_services
    assert again.registry_fallback == "authenticate"


# -- the evaluator: notes and the assumed record ------------------------------------------------


def test_evaluate_says_the_record_was_assumed_and_why_a_service_gave_nothing():
    from rspamd_regcheck import Facts, Policy, RatingPolicy, RegistryFacts, RegistryStatus, evaluate
    from rspamd_regcheck._types import MethodOutcome, RatingClass, RatingSummary, Result

    policy = Policy(RatingPolicy(), (Method.SPF,), {Method.SPF: 30})
    notes = ("DBL:refused 127.255.255.254",)
    reg = RegistryFacts(RegistryStatus.FOUND, record=assumed_record({Method.SPF: 30}, False), assumed=True)
    ip = ipaddress.ip_address("192.0.2.1")
    unrated = evaluate(Facts(ip, "mx.a.zz", "a.zz", reg, RatingSummary(RatingClass.NONE, notes=notes)), policy)
    assert [(s.name, s.options) for s in unrated.symbols] == [
        ("REGCHECK_NO_RATINGS", ("a.zz", *notes, "record=assumed"))
    ]
    assert unrated.add_headers == (("X-Regcheck", "192.0.2.1 a.zz NONE unverified ratings= record=assumed"),)
    high = RatingSummary(RatingClass.HIGH, (Rating("DWL", "A"),), 9.0, 9.0, 9.0, notes)
    passed = MethodOutcome(Method.SPF, Result.PASS, ("mailfrom=a.zz",))
    verdict = evaluate(Facts(ip, "mx.a.zz", "a.zz", reg, high, (passed,)), policy)
    assert [(s.name, s.options) for s in verdict.symbols] == [
        ("REGCHECK_RATING_HIGH", ("a.zz", "ratings=DWL:A", *notes, "record=assumed")),
        ("REGCHECK_SPF_ALLOW", ("a.zz", "mailfrom=a.zz", *notes, "record=assumed")),
    ]
    # a record from the registry: nothing said about assuming
    real = dataclasses.replace(reg, assumed=False)
    plain = evaluate(Facts(ip, "mx.a.zz", "a.zz", real, RatingSummary(RatingClass.NONE)), policy)
    assert plain.add_headers == (("X-Regcheck", "192.0.2.1 a.zz NONE unverified ratings="),)
    assert plain.symbols[0].options == ("a.zz",)


@pytest.mark.parametrize(
    "used,answering,listed",
    [
        pytest.param("DBL:D", {"DBL"}, "DBL:D", id="live-d"),
        pytest.param("DBL:D,DWL:A", {"DBL", "DWL"}, "DBL:D", id="only-the-bad-one"),
        pytest.param("S1:D", set(), "", id="record-copy-is-not-live"),
        pytest.param("DWL:C", {"DWL"}, "", id="c-is-not-bad"),
    ],
)
def test_listed_bad(used, answering, listed):
    from rspamd_regcheck._ratings import RatingPolicy, listed_bad
    from rspamd_regcheck._types import RatingClass, RatingSummary

    scale = ServiceScale(5.0, {"A": 9.0, "C": 5.0, "D": 0.0})
    policy = RatingPolicy(services={"DBL": scale, "DWL": scale, "S1": scale}, answering=frozenset(answering))
    summary = RatingSummary(RatingClass.BAD, tuple(Rating(*x.split(":")) for x in used.split(",")))
    assert ",".join(str(r) for r in listed_bad(summary, policy)) == listed
