"""The DNS layer against a real knot: cache, TTLs, negative answers, coalescing,
budgets, registry order, DNSBL pre-screen, overlays, TCP fallback, deadlines.

Query counts are read from knot itself (mod-stats through knotc), so "cached"
means knot was not asked.  Behaviour no real server shows on demand (silence,
wrong IDs, garbage) comes from small responders of the tests' own.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from dataclasses import replace
from pathlib import Path

import pytest

from rspamd_regcheck import (
    Action,
    Budget,
    Checker,
    Config,
    DnsblZone,
    DnsStatus,
    Envelope,
    Listing,
    Session,
    Transport,
    make_resolver,
)
from rspamd_regcheck._answer import DnsAnswer
from rspamd_regcheck._dns import Cache
from rspamd_regcheck._prescreen import parse_code_range
from rspamd_regcheck._wire import RType, build_query, parse_reply
from rspamd_regcheck.config import config_from_mapping

ZONES = Path(__file__).parent / "zones"
REG = "id.regcheck.test"
REG2 = "id2.regcheck.test"
BL = "bl.regcheck.test"


@pytest.fixture
def config(knot) -> Config:
    return replace(
        config_from_mapping({"policy": {"local_networks": []}}),
        registry_zones=(REG,),
        nameservers=(knot.host,),
        dns_port=knot.port,
    )


@pytest.fixture
def silent_port():
    """A UDP port where a socket is bound and never reads: questions go unanswered."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]


def run(coro):
    return asyncio.run(coro)


async def asked(knot, resolver, *questions):
    """Ask each (name, type) through *resolver*; return the answers and how many reached knot."""
    before = knot.queries()
    answers = [await resolver.query(name, rtype) for name, rtype in questions]
    return answers, knot.queries() - before


# -- cache -----------------------------------------------------------------------------------


def test_second_ask_is_a_cache_hit(knot, config):
    async def go():
        resolver = make_resolver(config)
        try:
            answers, sent = await asked(knot, resolver, *[(f"heaven.net.{REG}", "TXT")] * 3)
            assert sent == 1
            assert resolver.cache.hits == 2
            assert all(a.status is DnsStatus.OK and a.ttl == 300 for a in answers)
            assert answers[0].records[0].startswith("v=reg1 svc=S1:A")
        finally:
            resolver.close()

    run(go())


def test_ttl_expiry(knot, config):
    async def go():
        resolver = make_resolver(config)
        try:
            _, sent = await asked(knot, resolver, (f"ttl1.example.{REG}", "TXT"), (f"ttl1.example.{REG}", "TXT"))
            assert sent == 1
            await asyncio.sleep(1.3)  # the record's TTL is 1 s
            _, sent = await asked(knot, resolver, (f"ttl1.example.{REG}", "TXT"))
            assert sent == 1
        finally:
            resolver.close()

    run(go())


@pytest.mark.parametrize(
    "name,status",
    [
        pytest.param(f"nowhere.example.{REG}", DnsStatus.NXDOMAIN, id="nxdomain"),
        pytest.param(f"ns1-only.example.{REG}", DnsStatus.NODATA, id="nodata"),
    ],
)
def test_negative_answers_are_cached_for_the_soa_ttl(knot, config, name, status):
    async def go():
        resolver = make_resolver(config)
        try:
            answers, sent = await asked(knot, resolver, (name, "TXT"), (name, "TXT"))
            assert sent == 1
            assert [a.status for a in answers] == [status, status]
            assert answers[0].ttl == 300  # min(SOA TTL, SOA minimum) (RFC 2308 5)
        finally:
            resolver.close()

    run(go())


def test_failures_are_not_cached(knot, config):
    async def go():
        resolver = make_resolver(config)
        try:
            answers, sent = await asked(knot, resolver, *[("x.not-served.test", "TXT")] * 2)
            assert sent == 2
            assert {a.status for a in answers} == {DnsStatus.REFUSED}
        finally:
            resolver.close()

    run(go())


def test_cache_is_bounded(knot, config):
    async def go():
        resolver = make_resolver(replace(config, cache_size=3))
        try:
            names = ["heaven.net", "spammer.tld", "range.example", "six.example", "split.example"]
            _, sent = await asked(knot, resolver, *[(f"{n}.{REG}", "TXT") for n in names])
            assert sent == 5 and len(resolver.cache) == 3 and resolver.cache.evictions == 2
            _, sent = await asked(knot, resolver, (f"heaven.net.{REG}", "TXT"))  # evicted first
            assert sent == 1
            _, sent = await asked(knot, resolver, (f"split.example.{REG}", "TXT"))  # still there
            assert sent == 0
        finally:
            resolver.close()

    run(go())


# -- coalescing ------------------------------------------------------------------------------


def test_concurrent_checks_for_a_new_id_send_one_question(knot, config):
    async def go():
        checker = Checker(config)
        try:
            before = knot.queries()
            env = Envelope(ip=ipaddress.ip_address("208.20.133.17"), helo="mailout17.heaven.net")
            results = await asyncio.gather(*(checker.check(env) for _ in range(25)))
            assert knot.queries() - before == 1
            assert {r.verdict.seed.action for r in results} == {Action.ACCEPT}
            assert checker.resolver.stats.coalesced == 24
            assert all(r.queries == 1 for r in results)  # each check counts its question
        finally:
            checker.close()

    run(go())


def test_a_cancelled_check_does_not_cancel_the_shared_question(knot, config):
    async def go():
        checker = Checker(config)
        try:
            env = Envelope(ip=ipaddress.ip_address("192.0.2.9"), helo="mx.split.example")
            first = asyncio.ensure_future(checker.check(env))
            second = asyncio.ensure_future(checker.check(env))
            await asyncio.sleep(0)  # both are waiting for the same question now
            first.cancel()
            result = await second
            assert result.verdict.seed.action is Action.ACCEPT
            with pytest.raises(asyncio.CancelledError):
                await first
        finally:
            checker.close()

    run(go())


# -- budgets ---------------------------------------------------------------------------------


def test_method_budget_and_check_cap(knot, config):
    async def go():
        resolver = make_resolver(config)
        try:
            session = Session(resolver, cap=3)
            budget = Budget(2)
            before = knot.queries()
            a = await session.query(f"heaven.net.{REG}", "TXT", budget)
            b = await session.query(f"heaven.net.{REG}", "TXT", budget)  # a cache hit, counted all the same
            c = await session.query(f"spammer.tld.{REG}", "TXT", budget)  # budget spent: not asked
            d = await session.query(f"spammer.tld.{REG}", "TXT")  # no method budget: the cap allows a third
            e = await session.query(f"range.example.{REG}", "TXT")  # cap reached
            assert [x.status for x in (a, b, c, d, e)] == [
                DnsStatus.OK,
                DnsStatus.OK,
                DnsStatus.BUDGET,
                DnsStatus.OK,
                DnsStatus.BUDGET,
            ]
            assert budget.spent == 2 and session.count == 3
            assert knot.queries() - before == 2
        finally:
            resolver.close()

    run(go())


def test_results_do_not_depend_on_the_cache(knot, config):
    """With a cap of one question, the second registry zone is out of reach, warm or cold."""
    cfg = replace(config, registry_zones=(REG, REG2), max_queries=1, result_cache_size=0)

    async def go():
        checker = Checker(cfg)
        try:
            env = Envelope(ip=ipaddress.ip_address("192.0.2.1"), helo="mx.fallback.example")
            cold = await checker.check(env)
            warm = await checker.check(env)
            return cold, warm
        finally:
            checker.close()

    cold, warm = run(go())
    for result in (cold, warm):
        assert result.verdict.seed.action is Action.CONTINUE  # the receiver's limit: fail open
        assert result.verdict.symbols[0].name == "REGCHECK_BUDGET"
        assert "check query cap 1 reached" in result.verdict.symbols[0].options
    assert cold.verdict == warm.verdict


# -- registry zones, CNAME, TCP --------------------------------------------------------------


def check(config, ip, helo):
    async def go():
        checker = Checker(config)
        try:
            return await checker.check(Envelope(ip=ipaddress.ip_address(ip), helo=helo))
        finally:
            checker.close()

    return run(go())


def test_registry_record_through_a_cname(config):
    result = check(config, "208.20.133.17", "mx.alias.example")
    assert result.verdict.seed.action is Action.ACCEPT
    assert result.verdict.id == "alias.example"


def test_truncated_reply_is_asked_again_over_tcp(knot, config):
    async def go():
        transport = Transport([(knot.host, knot.port)], timeout=2.0)
        try:
            answer = await transport.ask(f"bigtxt.example.{REG}", RType.TXT)
            assert transport.tcp == 1
            return answer
        finally:
            transport.close()

    answer = run(go())
    assert answer.status is DnsStatus.OK
    assert len(answer.records[0]) > 1232 and answer.records[0].endswith("x" * 50)
    assert check(config, "192.0.2.7", "mx.bigtxt.example").verdict.seed.action is Action.ACCEPT


# -- the DNSBL pre-screen --------------------------------------------------------------------

SBL = DnsblZone(BL, codes=((parse_code_range("127.0.0.2"), "SBL"), (parse_code_range("127.0.0.3-127.0.0.4"), "XBL")))


@pytest.mark.parametrize(
    "ip,zone,status,symbol,options",
    [
        pytest.param("192.0.2.2", SBL, Listing.LISTED, "REGCHECK_DNSBL", [f"{BL}:127.0.0.2:SBL"], id="listed"),
        pytest.param(
            "192.0.2.3",
            SBL,
            Listing.LISTED,
            "REGCHECK_DNSBL",
            [f"{BL}:127.0.0.2:SBL", f"{BL}:127.0.0.4:XBL"],
            id="two-codes",
        ),
        pytest.param(
            "192.0.2.3",
            DnsblZone(BL),
            Listing.LISTED,
            "REGCHECK_DNSBL",
            [f"{BL}:127.0.0.2", f"{BL}:127.0.0.4"],
            id="no-code-map",
        ),
        pytest.param("192.0.2.1", SBL, Listing.CLEAN, None, None, id="not-listed"),
        pytest.param(
            "192.0.2.4", SBL, Listing.BLOCKED, "REGCHECK_DNSBL_BLOCKED", [f"{BL}:127.255.255.254"], id="refusal-code"
        ),
        pytest.param(
            "192.0.2.5",
            SBL,
            Listing.DNSFAIL,
            "REGCHECK_DNSBL_DNSFAIL",
            [f"{BL}:answer 10.0.0.1 is not a 127/8 code"],
            id="not-a-code",
        ),
        pytest.param("192.0.2.6", SBL, Listing.CLEAN, None, None, id="code-not-in-map"),
        pytest.param("2001:db8:6::25", SBL, Listing.LISTED, "REGCHECK_DNSBL", [f"{BL}:127.0.0.3:XBL"], id="ipv6"),
        pytest.param("2001:db8:6::25", replace(SBL, ipv6=False), None, None, None, id="ipv6-off"),
    ],
)
def test_prescreen(config, ip, zone, status, symbol, options):
    cfg = replace(config, prescreen=(zone,))
    helo = "mx.six.example" if ":" in ip else "mx.range.example"
    result = check(cfg, ip, helo)
    symbols = {s.name: list(s.options) for s in result.verdict.symbols}
    prescreen = {k: v for k, v in symbols.items() if k.startswith("REGCHECK_DNSBL")}
    assert prescreen == ({symbol: options} if symbol else {})
    registry = {k for k in symbols if not k.startswith("REGCHECK_DNSBL")}
    assert registry  # the registry check ran beside the pre-screen
    if status is Listing.LISTED:
        assert result.verdict.seed.action is Action.REJECT  # the seed's checkSBL
        assert "is listed by bl.regcheck.test" in result.verdict.seed.message


def test_prescreen_failure_never_changes_the_verdict(config, silent_port):
    base = check(config, "208.20.133.17", "mailout17.heaven.net")
    dead = DnsblZone(BL, nameserver=("127.0.0.1", silent_port))
    cfg = replace(config, prescreen=(dead,), dns_timeout=0.3, deadline=2.0)
    started = time.monotonic()
    result = check(cfg, "208.20.133.17", "mailout17.heaven.net")
    assert time.monotonic() - started < 0.3 * 6  # the DNSBL timeout, with a generous margin
    assert result.verdict.seed == base.verdict.seed
    names = [s.name for s in result.verdict.symbols]
    assert "REGCHECK_DNSBL_DNSFAIL" in names
    assert set(names) - {"REGCHECK_DNSBL_DNSFAIL"} == {s.name for s in base.verdict.symbols}


def test_prescreen_asks_its_own_server_only_for_its_zone(knot, config):
    """A zone's nameserver route serves that zone; the registry still goes to the default."""
    zone = DnsblZone(BL, nameserver=(knot.host, knot.port))
    cfg = replace(config, prescreen=(zone,), nameservers=("127.0.0.1",), dns_port=9, dns_timeout=0.3)
    result = check(cfg, "192.0.2.2", "mx.range.example")
    names = {s.name for s in result.verdict.symbols}
    assert "REGCHECK_DNSBL" in names and "REGCHECK_DNSFAIL" in names


# -- zone-file overlays ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "name,rtype",
    [
        pytest.param(f"heaven.net.{REG}", "TXT", id="txt"),
        pytest.param(f"withspf.example.{REG}", "TXT", id="two-txt"),
        pytest.param(f"split.example.{REG}", "TXT", id="split-strings"),
        pytest.param(f"nowhere.example.{REG}", "TXT", id="nxdomain"),
        pytest.param(f"ns1-only.example.{REG}", "TXT", id="nodata"),
        pytest.param(f"ns1-only.example.{REG}", "A", id="a"),
        pytest.param(f"alias.example.{REG}", "TXT", id="cname"),
        pytest.param(f"2.2.0.192.{BL}", "A", id="dnsbl-a"),
        pytest.param(f"net.{REG}", "TXT", id="empty-non-terminal"),
    ],
)
def test_zone_file_answers_like_knot(knot, config, name, rtype):
    zone_file = ZONES / (BL if name.endswith(BL) else REG)
    local_cfg = replace(config, zone_files=(f"{zone_file}.zone",), nameservers=("127.0.0.1",), dns_port=9)

    async def go():
        remote, local = make_resolver(config), make_resolver(local_cfg)
        try:
            return await remote.query(name, rtype), await local.query(name, rtype)
        finally:
            remote.close()
            local.close()

    via_knot, via_file = run(go())
    assert (via_file.status, sorted(via_file.records)) == (via_knot.status, sorted(via_knot.records))


def test_zone_file_answers_count_against_the_budget(config):
    local_cfg = replace(config, zone_files=(str(ZONES / f"{REG}.zone"),))

    async def go():
        resolver = make_resolver(local_cfg)
        try:
            session = Session(resolver, cap=1)
            a = await session.query(f"heaven.net.{REG}", "TXT")
            b = await session.query(f"heaven.net.{REG}", "TXT")
            return a, b
        finally:
            resolver.close()

    a, b = run(go())
    assert (a.status, b.status) == (DnsStatus.OK, DnsStatus.BUDGET)


# -- deadlines and hostile servers -----------------------------------------------------------


def test_check_answers_by_its_deadline(config, silent_port):
    cfg = replace(config, nameservers=("127.0.0.1",), dns_port=silent_port, dns_timeout=10.0, deadline=0.4)
    started = time.monotonic()
    result = check(cfg, "208.20.133.17", "mailout17.heaven.net")
    elapsed = time.monotonic() - started
    assert elapsed < 0.4 * 5  # generous: the point is that it does not wait for the 10 s timeout
    assert result.verdict.seed.action is Action.TEMPFAIL
    assert result.verdict.symbols[0].options == ("heaven.net", "check deadline passed")


class Responder(asyncio.DatagramProtocol):
    """Answers each question with a scripted list of datagrams (the last one last)."""

    def __init__(self, script):
        self.script = script

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        for make in self.script:
            self.transport.sendto(make(data), addr)


def good_reply(query: bytes, qname=None, qid=None, txt=b"v=reg1 svc=S1:A") -> bytes:
    """A NOERROR reply with one TXT record, echoing the question unless told otherwise."""
    import struct

    from rspamd_regcheck._wire import encode_name

    qid = struct.unpack("!H", query[:2])[0] if qid is None else qid
    end = query.index(b"\x00", 12) + 5
    question = query[12:end] if qname is None else encode_name(qname) + query[end - 4 : end]
    rr = b"\xc0\x0c" + struct.pack("!HHIH", 16, 1, 60, len(txt) + 1) + bytes([len(txt)]) + txt
    return struct.pack("!HHHHHH", qid, 0x8180, 1, 1, 0, 0) + question + rr


def ask_responder(script, timeout=0.5):
    async def go():
        loop = asyncio.get_running_loop()
        server, _ = await loop.create_datagram_endpoint(lambda: Responder(script), local_addr=("127.0.0.1", 0))
        port = server.get_extra_info("sockname")[1]
        transport = Transport([("127.0.0.1", port)], timeout=timeout, tries=1)
        try:
            return await transport.ask("heaven.net.id.regcheck.test", RType.TXT)
        finally:
            transport.close()
            server.close()

    return run(go())


def test_replies_must_match_id_and_question():
    answer = ask_responder(
        [
            lambda q: good_reply(q, qid=(int.from_bytes(q[:2], "big") + 1) % 65536, txt=b"wrong id"),
            lambda q: good_reply(q, qname="other.example", txt=b"wrong name"),
            lambda q: good_reply(q, txt=b"right"),
        ]
    )
    assert (answer.status, answer.records) == (DnsStatus.OK, ("right",))


def test_only_mismatched_replies_time_out():
    answer = ask_responder([lambda q: good_reply(q, qname="other.example")], timeout=0.3)
    assert answer.status is DnsStatus.TIMEOUT


def test_malformed_reply_is_an_error():
    answer = ask_responder([lambda q: good_reply(q)[:-3]])
    assert answer.status is DnsStatus.ERROR and "malformed" in answer.detail


def test_query_wire_form_is_what_dnspython_reads():
    import dns.message

    msg = dns.message.from_wire(build_query(4242, "heaven.net.id.regcheck.test", RType.TXT))
    assert msg.id == 4242 and str(msg.question[0].name) == "heaven.net.id.regcheck.test."
    assert parse_reply is not None


# -- reused check results --------------------------------------------------------------------


def test_a_result_is_reused_while_its_answers_are_cached(knot, config):
    async def go():
        checker = Checker(config)
        try:
            env = Envelope(ip=ipaddress.ip_address("192.0.2.9"), helo="mx.ttl1.example")
            before = knot.queries()
            first = await checker.check(env)
            again = await checker.check(replace(env, rcpts=("other@x.test",), queue_id="Q2"))  # same inputs that count
            asked_once = knot.queries() - before
            other = await checker.check(replace(env, mail_from="someone@else.example"))  # another input: checked
            await asyncio.sleep(1.3)  # the registry record's TTL is 1 s
            later = await checker.check(env)
            return first, again, other, later, asked_once, checker.result_hits, knot.queries() - before
        finally:
            checker.close()

    first, again, other, later, asked_once, hits, asked = run(go())
    assert again is first and asked_once == 1 and hits == 1
    assert other is not first
    assert later is not first and later.verdict == first.verdict
    assert asked == 2  # once at first (then cached for `other`), once after the TTL


def test_failed_checks_are_not_reused(config, silent_port):
    cfg = replace(config, nameservers=("127.0.0.1",), dns_port=silent_port, dns_timeout=0.2, deadline=0.5)

    async def go():
        checker = Checker(cfg)
        try:
            env = Envelope(ip=ipaddress.ip_address("192.0.2.9"), helo="mx.heaven.net")
            a = await checker.check(env)
            b = await checker.check(env)
            return a, b, checker.result_hits
        finally:
            checker.close()

    a, b, hits = run(go())
    assert a is not b and hits == 0
    assert a.verdict.symbols[0].name == "REGCHECK_DNSFAIL"


@pytest.mark.parametrize(
    "answer,kept",
    [
        pytest.param(DnsAnswer(DnsStatus.NXDOMAIN, ttl=86_400), 3600, id="negative-capped-at-max-negative-ttl"),
        pytest.param(DnsAnswer(DnsStatus.NODATA, ttl=60), 60, id="negative-under-the-cap"),
        pytest.param(DnsAnswer(DnsStatus.NXDOMAIN), None, id="negative-without-soa-not-cached"),
        pytest.param(DnsAnswer(DnsStatus.OK, ("x",), ttl=86_400), 86_400, id="positive-up-to-max-ttl"),
        pytest.param(DnsAnswer(DnsStatus.SERVFAIL), None, id="failure-not-cached"),
    ],
)
def test_cache_lifetimes(answer, kept):
    """RFC 2308 5: a negative answer lives as long as its SOA says, capped like unbound's 3,600 s."""
    cache = Cache()
    cache.put(("a.example", 16), answer, 0.0)
    expires = cache.expires(("a.example", 16), answer)
    assert (expires or None) == kept
