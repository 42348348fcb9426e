"""The RFC 7208 test suite (openspf.org, release 2014.04) through our SPF method and DNS layer.

The suite is kept in tests/data/rfc7208/ with its BSD licence beside it
(rfc7208-tests.LICENSE), so a clone needs nothing outside itself.  Each scenario's zone data is served by a
transport of this file's own, behind our real Resolver, Cache and Session,
so every lookup pyspf makes goes through the same path as in production.

Zone data follows the suite's conventions, as its reference driver does:
an SPF entry also answers TXT queries at a name that has no TXT entry of its
own; ``NONE`` values are left out; a ``TIMEOUT`` entry makes a question for
a type not answered before it time out.
"""

from __future__ import annotations

import asyncio
import ipaddress
from pathlib import Path

import pytest
import yaml

from rspamd_regcheck import Budget, Cache, Resolver, Session
from rspamd_regcheck._answer import DnsAnswer, DnsStatus
from rspamd_regcheck._spf import check_host
from rspamd_regcheck._wire import RType, encode_name

SUITE = Path(__file__).resolve().parent / "data" / "rfc7208" / "rfc7208-tests.yml"
MAX_CNAME = 10


class SuiteTransport:
    """Answers from one scenario's ``zonedata`` the way a resolver would."""

    timeout = 0.0  # answers at once (the Transport interface: the longest an ask takes)

    def __init__(self, zonedata: dict):
        self.zone = {name.lower().rstrip("."): list(entries) for name, entries in zonedata.items()}

    async def ask(self, name: str, rtype: RType) -> DnsAnswer:
        try:
            encode_name(name)  # what our real client refuses to send, this one refuses too
        except (ValueError, UnicodeEncodeError) as exc:
            return DnsAnswer(DnsStatus.ERROR, detail=f"cannot ask for {name!r}: {exc}")
        owner = name
        for _ in range(MAX_CNAME):
            entries = self.zone.get(owner)
            if entries is None:
                return DnsAnswer(DnsStatus.NXDOMAIN, ttl=300)
            found, target, timeout = self._records(entries, rtype)
            if timeout:
                return DnsAnswer(DnsStatus.TIMEOUT, detail="timeout")
            if found:
                return DnsAnswer(DnsStatus.OK, tuple(found), ttl=300)
            if target is None or rtype == RType.CNAME:
                return DnsAnswer(DnsStatus.NODATA, ttl=300)
            owner = target
        return DnsAnswer(DnsStatus.SERVFAIL, detail="CNAME loop")

    @staticmethod
    def _records(entries: list, rtype: RType) -> tuple[list, str | None, bool]:
        has_txt = any(isinstance(e, dict) and "TXT" in e for e in entries)
        found: list = []
        cname = None
        for entry in entries:
            if entry == "TIMEOUT":
                return found, cname, not found
            ((kind, value),) = entry.items()
            if value == "NONE":
                continue
            if kind == "CNAME":
                cname = str(value).lower().rstrip(".")
                continue
            if kind == "SPF" and not has_txt:
                kind = "TXT"  # the suite's convention for TXT-only implementations
            if kind != rtype.name:
                continue
            if kind == "TXT":
                text = "".join(value) if isinstance(value, list) else str(value)
                found.append(text.encode("utf-8").decode("latin-1"))
            elif kind == "MX":
                found.append((int(value[0]), str(value[1]).lower().rstrip(".")))
            elif kind == "AAAA":
                found.append(str(ipaddress.IPv6Address(value)))
            elif kind == "PTR":
                found.append(str(value).lower().rstrip("."))
            else:
                found.append(str(value))
        return found, cname, False

    def close(self) -> None:
        pass


def load_cases():
    if not SUITE.exists():
        raise FileNotFoundError(f"RFC 7208 test suite not found at {SUITE}")
    cases = []
    for scenario in yaml.safe_load_all(SUITE.read_text(encoding="utf-8")):
        for test_id, test in scenario["tests"].items():
            cases.append(pytest.param(scenario["zonedata"], test, id=test_id))
    return cases


CASES = load_cases()


def run_case(zonedata: dict, test: dict):
    async def go():
        resolver = Resolver(SuiteTransport(zonedata), Cache())  # type: ignore[arg-type]
        session = Session(resolver, cap=1000)
        return await check_host(
            session,
            Budget(1000),
            ipaddress.ip_address(test["host"]),
            test["mailfrom"],
            test["helo"],
            default_explanation="DEFAULT",
        )

    return asyncio.run(go())


def test_suite_size():
    assert len(CASES) == 203


@pytest.mark.parametrize("zonedata,test", CASES)
def test_rfc7208(zonedata, test):
    ev = run_case(zonedata, test)
    expected = test["result"] if isinstance(test["result"], list) else [test["result"]]
    assert ev.result in expected, f"{test.get('spec')}: {ev.result} ({ev.explanation})"
    if "explanation" in test:
        assert ev.explanation == test["explanation"]
