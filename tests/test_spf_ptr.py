"""RFC 7208 5.5 and 7.3: a DNS failure around PTR (the ``ptr`` mechanism, the ``%{p}`` macro).

A failed PTR lookup means "no match" (and ``%{p}`` = "unknown"), a failed
A/AAAA lookup of a name the PTR answer gave skips that name, and neither is a
void lookup (4.6.4: only NXDOMAIN and empty answers are).  The names a PTR
answer lists are the connecting client's to choose: counted as voids, their
failures would turn a fail into a permerror.  knot cannot fail one name on
demand, so test_spf_greenlet's table transport answers, behind our real
Resolver, Cache and Session.
"""

from __future__ import annotations

import asyncio
import ipaddress

import pytest
from test_spf_greenlet import TableTransport, txt

from rspamd_regcheck import Budget, Cache, Resolver, Session
from rspamd_regcheck._spf import check_host

CLIENT = ipaddress.ip_address("192.0.2.10")
REVERSE = "10.2.0.192.in-addr.arpa"


BAD_NAMES = ("bad1.x.example", "bad2.x.example", "bad3.x.example")

CASES = [
    pytest.param(
        "v=spf1 ptr ip4:192.0.2.10 -all",
        {},
        {(REVERSE, "PTR")},
        "pass",
        id="ptr-lookup-fails-then-ip4-matches",
    ),
    pytest.param(
        "v=spf1 ptr -all",
        {},
        {(REVERSE, "PTR")},
        "fail",
        id="ptr-lookup-fails-no-match",
    ),
    pytest.param(
        "v=spf1 exists:%{p}.x.example -all",
        {("unknown.x.example", "A"): ("127.0.0.2",)},
        {(REVERSE, "PTR")},
        "pass",
        id="p-macro-is-unknown-when-ptr-fails",
    ),
    pytest.param(
        "v=spf1 ptr:v.example -all",
        {(REVERSE, "PTR"): BAD_NAMES},
        {(name, "A") for name in BAD_NAMES},
        "fail",
        id="failing-ptr-names-are-skipped-not-void",
    ),
    pytest.param(
        "v=spf1 ptr:v.example -all",
        {(REVERSE, "PTR"): BAD_NAMES},
        set(),
        "permerror",
        id="control-nxdomain-ptr-names-are-void",
    ),
    pytest.param(
        "v=spf1 ptr -all",
        {(REVERSE, "PTR"): ("bad1.x.example", "mx.s.example"), ("mx.s.example", "A"): ("192.0.2.10",)},
        {("bad1.x.example", "A")},
        "pass",
        id="one-failing-name-skipped-the-next-validates",
    ),
]


@pytest.mark.parametrize("record,table,fail,expected", CASES)
def test_dns_failures_around_ptr(record: str, table: dict, fail: set, expected: str) -> None:
    transport = TableTransport({("s.example", "TXT"): txt(record), **table}, fail=frozenset(fail))

    async def go():
        session = Session(Resolver(transport, Cache()), cap=100)  # type: ignore[arg-type]
        return await check_host(session, Budget(30), CLIENT, "a@s.example", "mx.s.example")

    ev = asyncio.run(go())
    assert ev.result == expected, (ev.result, ev.explanation)
