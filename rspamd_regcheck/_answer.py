"""DNS answers as facts: what the checks see of DNS, whichever client asked.  Pure.

`answer_from_reply` turns a parsed reply into a `DnsAnswer`: the records of
the asked type (after the CNAME chain in the answer section), and how long
the answer may be cached (RFC 2181 5.2: the lowest TTL of what it used;
RFC 2308 5: for NXDOMAIN and NODATA, the SOA's TTL capped by its minimum).

A negative answer's TTL comes only from an SOA whose owner is the question
name or a name above it (the zone cut the answer speaks for; after a CNAME
chain, above the chain's last name): an SOA for some other zone says nothing
about how long this name is absent.  Without such an SOA the TTL is None,
and the cache keeps the answer for no time (RFC 2308 5).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from ._wire import Rcode, Reply, RType

MAX_CNAME_CHAIN = 16  # links followed inside one answer section


class DnsStatus(enum.Enum):
    """How a question ended."""

    OK = "ok"
    NXDOMAIN = "nxdomain"
    NODATA = "nodata"
    TIMEOUT = "timeout"
    SERVFAIL = "servfail"
    REFUSED = "refused"
    ERROR = "error"
    BUDGET = "budget"  # not asked: the method's or the check's query budget is spent

    @property
    def failed(self) -> bool:
        """True when the answer says nothing about the name (a DNS failure)."""
        return self in _FAILED


_FAILED = frozenset({DnsStatus.TIMEOUT, DnsStatus.SERVFAIL, DnsStatus.REFUSED, DnsStatus.ERROR})


@dataclass(frozen=True)
class DnsAnswer:
    """The records found for one question.

    Record values by type: TXT -> the strings joined (RFC 7208 3.3) as text,
    each byte one character (Latin-1); A/AAAA -> address text; MX ->
    ``(preference, exchange)``; SRV -> ``(priority, weight, port, target)``;
    PTR/CNAME/NS -> name.  Names are lower case without the trailing dot.
    ``ttl`` is how long the answer may be cached (None: not cacheable, or
    unknown for a negative answer).  ``authentic``: a validating resolver we
    trust set the AD bit (RFC 4035 3.2.3), or a local zone file answered.
    """

    status: DnsStatus
    records: tuple[Any, ...] = ()
    detail: str = ""
    ttl: int | None = None
    authentic: bool = False


def _at_or_above(owner: str, name: str) -> bool:
    return owner == name or not owner or name.endswith("." + owner)


def _negative_ttl(reply: Reply, name: str) -> int | None:
    """The TTL of the first SOA in the authority section at or above *name*; None without one."""
    for rr in reply.authority:
        if rr.rtype == RType.SOA and isinstance(rr.value, int) and _at_or_above(rr.name, name):
            return min(rr.ttl, rr.value)
    return None


def record_value(rtype: int, value: object) -> object:
    """A record value as `DnsAnswer` carries it (TXT bytes become text)."""
    if rtype == RType.TXT and isinstance(value, bytes):
        return value.decode("latin-1")
    return value


def answer_from_reply(reply: Reply, name: str, rtype: int, trusted: bool = False) -> DnsAnswer:
    """Read the answer to (*name*, *rtype*) out of *reply*.

    *trusted*: the reply came from a validating resolver we trust, so its AD
    bit counts (`DnsAnswer.authentic`).
    """
    authentic = trusted and reply.authentic
    if reply.rcode == Rcode.NXDOMAIN:
        return DnsAnswer(DnsStatus.NXDOMAIN, ttl=_negative_ttl(reply, _chain_end(reply, name)), authentic=authentic)
    if reply.rcode == Rcode.SERVFAIL:
        return DnsAnswer(DnsStatus.SERVFAIL, detail="SERVFAIL")
    if reply.rcode == Rcode.REFUSED:
        return DnsAnswer(DnsStatus.REFUSED, detail="REFUSED")
    if reply.rcode != Rcode.NOERROR:
        try:
            code = Rcode(reply.rcode).name
        except ValueError:
            code = f"rcode {reply.rcode}"
        return DnsAnswer(DnsStatus.ERROR, detail=code)
    owner = name
    ttl: int | None = None
    for _ in range(MAX_CNAME_CHAIN):
        values = []
        for rr in reply.answers:
            if rr.name == owner and rr.rtype == rtype:
                values.append(record_value(rtype, rr.value))
                ttl = rr.ttl if ttl is None else min(ttl, rr.ttl)
        if values:
            return DnsAnswer(DnsStatus.OK, tuple(values), ttl=ttl, authentic=authentic)
        cname = next((rr for rr in reply.answers if rr.name == owner and rr.rtype == RType.CNAME), None)
        if cname is None or rtype == RType.CNAME:
            break
        owner = str(cname.value)
        ttl = cname.ttl if ttl is None else min(ttl, cname.ttl)
    else:
        return DnsAnswer(DnsStatus.ERROR, detail="CNAME chain too long")
    negative = _negative_ttl(reply, owner)
    if negative is None:
        return DnsAnswer(DnsStatus.NODATA, authentic=authentic)  # no SOA for it: not cached
    return DnsAnswer(DnsStatus.NODATA, ttl=negative if ttl is None else min(ttl, negative), authentic=authentic)


def _chain_end(reply: Reply, name: str) -> str:
    """The last name of the CNAME chain from *name* in the answer section (an NXDOMAIN is about it)."""
    owner = name
    for _ in range(MAX_CNAME_CHAIN):
        cname = next((rr for rr in reply.answers if rr.name == owner and rr.rtype == RType.CNAME), None)
        if cname is None:
            break
        owner = str(cname.value)
    return owner
