"""One signature and one table: every `Method` has a runner, the check uses only the table,
and each method's "no result" symbol says what it means for that method."""

from __future__ import annotations

import asyncio
import inspect
import ipaddress

import pytest

from rspamd_regcheck import _check
from rspamd_regcheck._context import MethodContext
from rspamd_regcheck._dns import Budget
from rspamd_regcheck._methods import RUNNERS
from rspamd_regcheck._names import ptr_name, reverse_name
from rspamd_regcheck._record import parse_record
from rspamd_regcheck._types import Method, MethodOutcome, Result
from rspamd_regcheck.symbols import BY_NAME


def test_every_method_has_a_runner():
    assert set(RUNNERS) == set(Method)
    for method, runner in RUNNERS.items():
        assert inspect.iscoroutinefunction(runner), method
        assert list(inspect.signature(runner).parameters) == ["ctx"], method


def test_the_check_dispatches_only_through_the_table():
    source = inspect.getsource(_check.Checker._run)
    assert "RUNNERS[step.method]" in source
    assert "Method." not in source  # no per-method branch left in the shell


@pytest.mark.parametrize(
    "method,ctx_changes,result",
    [
        pytest.param(Method.QR1, {}, Result.PASS, id="qr1-inside"),
        pytest.param(Method.QR1, {"ip": ipaddress.ip_address("198.51.100.1")}, Result.FAIL, id="qr1-outside"),
        pytest.param(Method.DKIM, {"dkim_domains": ("mail.heaven.net",)}, Result.PASS, id="dkim-under-id"),
        pytest.param(Method.DKIM, {"dkim_domains": ("other.example",)}, Result.NONE, id="dkim-elsewhere"),
    ],
)
def test_runners_take_the_context(method, ctx_changes, result):
    """The methods that ask no DNS question run from a context alone (the others: test_methods.py)."""
    fields = {
        "record": parse_record("v=reg1 svc=S1:A ip4=192.0.2.0/24 meth=DKIM:0"),
        "ip": ipaddress.ip_address("192.0.2.7"),
        "helo": "mx.heaven.net",
        "ident": "heaven.net",
        "session": None,
        "budget": Budget(0),
    } | ctx_changes
    outcome = asyncio.run(RUNNERS[method](MethodContext(**fields)))
    assert isinstance(outcome, MethodOutcome) and outcome.method is method
    assert outcome.result is result


def test_no_result_symbols_say_what_they_mean_per_method():
    na = [s for s in BY_NAME.values() if s.name.endswith("_NA")]
    assert len(na) >= 3
    assert len({s.description for s in na}) == len(na)
    for s in na:
        method = s.name.split("_")[1]
        assert s.description.startswith({"SPF": "SPF", "CSA": "CSA", "SID": "Sender ID"}[method] + ":")


# RFC 5782 2.1 and 2.4's own examples, and the reverse tree (RFC 1035 3.5, RFC 3596 2.5)
NAMES = [
    pytest.param("192.0.2.99", "bl.example", "99.2.0.192.bl.example", id="rfc5782-ipv4"),
    pytest.param(
        "2001:db8:1:2:3:4:567:89ab",
        "bl.example",
        "b.a.9.8.7.6.5.0.4.0.0.0.3.0.0.0.2.0.0.0.1.0.0.0.8.b.d.0.1.0.0.2.bl.example",
        id="rfc5782-ipv6",
    ),
]


@pytest.mark.parametrize("ip,zone,name", NAMES)
def test_reverse_name(ip, zone, name):
    assert reverse_name(ipaddress.ip_address(ip), zone) == name


@pytest.mark.parametrize(
    "ip,name",
    [
        pytest.param("192.0.2.99", "99.2.0.192.in-addr.arpa", id="ipv4"),
        pytest.param("2001:db8::1", "1." + "0." * 23 + "8.b.d.0.1.0.0.2.ip6.arpa", id="ipv6"),
    ],
)
def test_ptr_name(ip, name):
    assert ptr_name(ipaddress.ip_address(ip)) == name
