"""The wire codec: replies built by dnspython read back the same; malformed input is refused."""

from __future__ import annotations

import contextlib
import random
import struct

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import pytest

from rspamd_regcheck._answer import DnsStatus, answer_from_reply
from rspamd_regcheck._wire import MalformedReply, RType, build_query, encode_name, parse_reply, randomise_case

QNAME = "heaven.net.id.regcheck.test"


def reply(qtype, answers=(), authority=(), rcode=dns.rcode.NOERROR, qname=QNAME):
    """A reply made by dnspython: answers/authority are (owner, type, ttl, rdata text)."""
    query = dns.message.make_query(qname + ".", qtype)
    msg = dns.message.make_response(query)
    msg.set_rcode(rcode)
    for section, rows in ((msg.answer, answers), (msg.authority, authority)):
        for owner, rtype, ttl, text in rows:
            rrset = dns.rrset.from_text(owner + ".", ttl, "IN", rtype, *([text] if isinstance(text, str) else text))
            section.append(rrset)
    return msg.to_wire()


SOA = ("id.regcheck.test", "SOA", 600, "ns1.id.regcheck.test. host.id.regcheck.test. 1 3600 600 86400 300")

CASES = [
    pytest.param("TXT", [(QNAME, "TXT", 300, '"v=reg1 svc=S1:A"')], DnsStatus.OK, ("v=reg1 svc=S1:A",), 300, id="txt"),
    pytest.param("TXT", [(QNAME, "TXT", 60, '"ab" "cd" ""')], DnsStatus.OK, ("abcd",), 60, id="txt-strings-joined"),
    pytest.param("TXT", [(QNAME, "TXT", 60, ['"one"', '"two"'])], DnsStatus.OK, ("one", "two"), 60, id="two-txt"),
    pytest.param(
        "TXT", [(QNAME, "TXT", 60, '"caf\\195\\169"')], DnsStatus.OK, ("caf\u00c3\u00a9",), 60, id="txt-bytes-as-latin1"
    ),
    pytest.param(
        "A", [(QNAME, "A", 10, ["192.0.2.1", "192.0.2.2"])], DnsStatus.OK, ("192.0.2.1", "192.0.2.2"), 10, id="a"
    ),
    pytest.param("AAAA", [(QNAME, "AAAA", 10, "2001:db8::1")], DnsStatus.OK, ("2001:db8::1",), 10, id="aaaa"),
    pytest.param(
        "MX", [(QNAME, "MX", 10, "10 MX1.Heaven.NET.")], DnsStatus.OK, ((10, "mx1.heaven.net"),), 10, id="mx-lowercased"
    ),
    pytest.param(
        "SRV", [(QNAME, "SRV", 10, "1 2 25 mx.heaven.net.")], DnsStatus.OK, ((1, 2, 25, "mx.heaven.net"),), 10, id="srv"
    ),
    pytest.param("PTR", [(QNAME, "PTR", 10, "mx.heaven.net.")], DnsStatus.OK, ("mx.heaven.net",), 10, id="ptr"),
    pytest.param(
        "TXT",
        [(QNAME, "CNAME", 50, "real.example."), ("real.example", "TXT", 100, '"x"')],
        DnsStatus.OK,
        ("x",),
        50,
        id="cname-chain-lowest-ttl",
    ),
    # RFC 2308 5: no SOA, no negative caching (the CNAME's own TTL says nothing of the target's absence)
    pytest.param("TXT", [(QNAME, "CNAME", 50, "real.example.")], DnsStatus.NODATA, (), None, id="cname-dangling"),
    pytest.param("TXT", [("other.example", "TXT", 10, '"x"')], DnsStatus.NODATA, (), None, id="unrelated-owner"),
    pytest.param("TXT", [(QNAME, "A", 10, "192.0.2.1")], DnsStatus.NODATA, (), None, id="other-type-only"),
]


@pytest.mark.parametrize("qtype,answers,status,records,ttl", CASES)
def test_answers(qtype, answers, status, records, ttl):
    parsed = parse_reply(reply(qtype, answers))
    answer = answer_from_reply(parsed, QNAME, RType.make(qtype))
    assert (answer.status, tuple(sorted(answer.records)), answer.ttl) == (status, records, ttl)


@pytest.mark.parametrize(
    "rcode,authority,status,ttl",
    [
        pytest.param(dns.rcode.NXDOMAIN, [SOA], DnsStatus.NXDOMAIN, 300, id="nxdomain-soa-minimum"),
        pytest.param(dns.rcode.NXDOMAIN, [], DnsStatus.NXDOMAIN, None, id="nxdomain-no-soa"),
        pytest.param(dns.rcode.NOERROR, [SOA], DnsStatus.NODATA, 300, id="nodata"),
        pytest.param(dns.rcode.NOERROR, [], DnsStatus.NODATA, None, id="nodata-no-soa"),
        pytest.param(
            dns.rcode.NXDOMAIN, [("example.org", *SOA[1:])], DnsStatus.NXDOMAIN, None, id="soa-of-another-zone"
        ),
        pytest.param(dns.rcode.NXDOMAIN, [("x." + QNAME, *SOA[1:])], DnsStatus.NXDOMAIN, None, id="soa-below-the-name"),
        pytest.param(dns.rcode.NXDOMAIN, [(QNAME, *SOA[1:])], DnsStatus.NXDOMAIN, 300, id="soa-at-the-name"),
        pytest.param(
            dns.rcode.NXDOMAIN, [("example.org", *SOA[1:]), SOA], DnsStatus.NXDOMAIN, 300, id="the-soa-above-is-chosen"
        ),
        pytest.param(dns.rcode.SERVFAIL, [], DnsStatus.SERVFAIL, None, id="servfail"),
        pytest.param(dns.rcode.REFUSED, [], DnsStatus.REFUSED, None, id="refused"),
        pytest.param(dns.rcode.NOTIMP, [], DnsStatus.ERROR, None, id="notimp"),
    ],
)
def test_negative_and_failed(rcode, authority, status, ttl):
    answer = answer_from_reply(parse_reply(reply("TXT", authority=authority, rcode=rcode)), QNAME, RType.TXT)
    assert (answer.status, answer.ttl) == (status, ttl)


def test_soa_after_a_cname_is_the_targets_zone():
    answers = [(QNAME, "CNAME", 50, "x.real.example.")]
    theirs = ("real.example", *SOA[1:])
    for authority, ttl in (([theirs], 300), ([SOA], None)):  # the SOA above the question name only: not it
        wire = reply("TXT", answers, authority=authority, rcode=dns.rcode.NXDOMAIN)
        assert answer_from_reply(parse_reply(wire), QNAME, RType.TXT).ttl == ttl


def edns_reply(rcode: int, ad: bool = False, opt: bool = True) -> bytes:
    query = dns.message.make_query(QNAME + ".", "TXT", use_edns=0 if opt else False)
    msg = dns.message.make_response(query)
    msg.set_rcode(rcode)
    if ad:
        msg.flags |= dns.flags.AD
    return msg.to_wire()


@pytest.mark.parametrize(
    "wire,rcode,edns,authentic",
    [
        pytest.param(edns_reply(dns.rcode.NOERROR), 0, True, False, id="opt"),
        pytest.param(edns_reply(dns.rcode.NOERROR, opt=False), 0, False, False, id="no-opt"),
        pytest.param(edns_reply(dns.rcode.FORMERR), 1, True, False, id="formerr-with-opt"),
        pytest.param(edns_reply(dns.rcode.FORMERR, opt=False), 1, False, False, id="formerr-without-opt"),
        # RFC 6891 9: BADVERS is 16, its upper bits in the OPT record; the header alone says NOERROR
        pytest.param(edns_reply(dns.rcode.BADVERS), 16, True, False, id="badvers"),
        pytest.param(edns_reply(dns.rcode.NOERROR, ad=True), 0, True, True, id="ad-bit"),
    ],
)
def test_edns_and_extended_rcode(wire, rcode, edns, authentic):
    parsed = parse_reply(wire)
    assert (parsed.rcode, parsed.edns, parsed.authentic) == (rcode, edns, authentic)


def test_badvers_is_a_failure_not_an_empty_answer():
    answer = answer_from_reply(parse_reply(edns_reply(dns.rcode.BADVERS)), QNAME, RType.TXT)
    assert (answer.status, answer.detail, answer.ttl) == (DnsStatus.ERROR, "BADVERS", None)


@pytest.mark.parametrize("trusted,ad,authentic", [(True, True, True), (False, True, False), (True, False, False)])
def test_ad_counts_only_from_a_trusted_server(trusted, ad, authentic):
    wire = reply("TXT", [(QNAME, "TXT", 60, '"x"')])
    if ad:
        wire = wire[:3] + bytes([wire[3] | 0x20]) + wire[4:]
    assert answer_from_reply(parse_reply(wire), QNAME, RType.TXT, trusted).authentic is authentic


def test_two_opt_records_are_malformed():
    wire = edns_reply(dns.rcode.NOERROR)
    opt = wire[-11:]
    doubled = wire[:10] + b"\x00\x02" + wire[12:] + opt
    with pytest.raises(MalformedReply, match="OPT"):
        parse_reply(doubled)


def test_case_randomised_query_keeps_the_name():
    query = build_query(7, QNAME, RType.TXT, authentic=True)
    mixed = randomise_case(query, b"\xff" * 32)
    assert mixed != query and mixed.lower() == query.lower()[:12] + mixed.lower()[12:]
    msg = dns.message.from_wire(mixed)
    assert msg.question[0].name.to_text() == QNAME.upper() + "."
    assert msg.flags & dns.flags.AD and msg.flags & dns.flags.RD
    assert randomise_case(query, bytes(32)) == query


def test_soa_ttl_lower_than_minimum():
    soa = ("id.regcheck.test", "SOA", 30, SOA[3])
    answer = answer_from_reply(parse_reply(reply("TXT", authority=[soa], rcode=dns.rcode.NXDOMAIN)), QNAME, RType.TXT)
    assert answer.ttl == 30


def test_question_is_read_back():
    parsed = parse_reply(reply("TXT", qname="MiXeD.Example"))
    assert (parsed.qname, parsed.qtype, parsed.qclass) == ("mixed.example", 16, 1)


@pytest.mark.parametrize("qtype,answers,status,records,ttl", CASES)
def test_the_question_as_sent_reads_the_same(qtype, answers, status, records, ttl):
    """Passing the question as sent (what the client does) changes nothing in what is read."""
    data = reply(qtype, answers, authority=[SOA])
    asked = (build_query(0, QNAME, RType.make(qtype))[12:], QNAME)
    assert parse_reply(data, asked) == parse_reply(data)


def test_a_question_echoed_differently_is_decoded():
    data = reply("TXT", qname="MiXeD.Example")
    asked = (build_query(0, "mixed.example", RType.TXT)[12:], "mixed.example")
    assert parse_reply(data, asked).qname == "mixed.example"
    other = (build_query(0, "other.example", RType.TXT)[12:], "other.example")
    assert parse_reply(data, other).qname == "mixed.example"  # never the name we hoped for


@pytest.mark.parametrize(
    "rdata,why",
    [
        pytest.param(b"\x01", "runs past", id="label-past-end"),
        pytest.param(b"\x00\x00" + bytes(19), "wrong length", id="short-fixed-part"),
        pytest.param(b"\x40a\x00" + bytes(20), "label type", id="bad-label-type"),
    ],
)
def test_broken_soa_is_malformed(rdata, why):
    data = bytearray(reply("TXT", rcode=dns.rcode.NXDOMAIN))
    data[9] = 1  # NSCOUNT 1
    data += b"\xc0\x0c" + struct.pack("!HHIH", 6, 1, 60, len(rdata)) + rdata
    with pytest.raises(MalformedReply, match=why):
        parse_reply(bytes(data))


def test_build_query_round_trip():
    msg = dns.message.from_wire(build_query(7, QNAME, RType.SRV))
    assert msg.id == 7 and msg.flags & dns.flags.RD
    assert msg.question[0].name == dns.name.from_text(QNAME) and msg.question[0].rdtype == dns.rdatatype.SRV


@pytest.mark.parametrize("name", ["a..b", "a" * 64 + ".example", ".".join(["abcdefgh"] * 32)])
def test_encode_name_limits(name):
    with pytest.raises(ValueError):
        encode_name(name)


def test_every_truncation_is_malformed():
    data = reply("TXT", [(QNAME, "TXT", 300, '"v=reg1 svc=S1:A"')], authority=[SOA])
    for cut in range(len(data)):
        with pytest.raises(MalformedReply):
            parse_reply(data[:cut])


@pytest.mark.parametrize(
    "data,why",
    [
        pytest.param(
            b"\x00\x01\x81\x80\x00\x01\x00\x00\x00\x00\x00\x00\xc0\x0c\x00\x10\x00\x01", "loop", id="pointer-to-itself"
        ),
        pytest.param(
            b"\x00\x01\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x00\x10\x00\x01", "not a reply", id="query-not-reply"
        ),
        pytest.param(
            b"\x00\x01\x81\x80\x00\x02\x00\x00\x00\x00\x00\x00\x00\x00\x10\x00\x01", "questions", id="two-questions"
        ),
        pytest.param(
            b"\x00\x01\x81\x80\x00\x01\x00\x00\x00\x00\x00\x00\x41a\x00\x00\x10\x00\x01", "label", id="bad-label-type"
        ),
        pytest.param(
            b"\x00\x01\x81\x80\x00\x01\x00\x01\x00\x00\x00\x00\x00\x00\x01\x00\x01"
            b"\x00\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x03\x7f\x00\x00",
            "4 bytes",
            id="short-a",
        ),
        pytest.param(
            b"\x00\x01\x81\x80\x00\x01\x00\x01\x00\x00\x00\x00\x00\x00\x10\x00\x01"
            b"\x00\x00\x10\x00\x01\x00\x00\x00\x3c\x00\x02\x05a",
            "TXT string",
            id="txt-overrun",
        ),
    ],
)
def test_malformed(data, why):
    with pytest.raises(MalformedReply, match=why):
        parse_reply(data)


def test_dot_inside_a_label_stays_one_label():
    data = b"\x00\x01\x81\x80\x00\x01\x00\x00\x00\x00\x00\x00\x03a.b\x01c\x00\x00\x10\x00\x01"
    assert parse_reply(data).qname == "a\\.b.c"


def test_random_and_mutated_input_only_ever_raises_malformed():
    rng = random.Random(20261127)
    good = reply("MX", [(QNAME, "MX", 10, ["10 mx1.heaven.net.", "20 mx2.heaven.net."])], authority=[SOA])
    tried = 0
    for _ in range(3000):
        if rng.random() < 0.5:
            data = bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 80)))
        else:
            data = bytearray(good)
            for _ in range(rng.randrange(1, 6)):
                data[rng.randrange(len(data))] = rng.getrandbits(8)
            data = bytes(data)
        tried += 1
        with contextlib.suppress(MalformedReply):
            parse_reply(data)
    assert tried == 3000
