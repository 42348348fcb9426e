"""DNS fetching: dnspython's async resolver, with local zone files laid over it.

Answers come back as `DnsAnswer` facts: dnspython's exceptions stop here
(STYLE item 5), so nothing above this module knows which library asked.  The
full DNS layer (cache, coalescing, budgets, DNSBL) replaces `ResolverFetcher`
behind the same `Fetcher` protocol.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import dns.asyncresolver
import dns.exception
import dns.name
import dns.rdataclass
import dns.rdatatype
import dns.resolver
import dns.zone

from .errors import InvalidZoneFile

MAX_CNAME_HOPS = 8  # inside a local zone file; loops end here


class DnsStatus(enum.Enum):
    """How a question ended."""

    OK = "ok"
    NXDOMAIN = "nxdomain"
    NODATA = "nodata"
    TIMEOUT = "timeout"
    SERVFAIL = "servfail"
    ERROR = "error"

    @property
    def failed(self) -> bool:
        """True when the answer says nothing about the name (a DNS failure)."""
        return self in (DnsStatus.TIMEOUT, DnsStatus.SERVFAIL, DnsStatus.ERROR)


@dataclass(frozen=True)
class DnsAnswer:
    """The records found for one question, as text.

    TXT records are given with their strings joined (RFC 7208 3.3), decoded
    as Latin-1 so every byte survives; other types in presentation format.
    """

    status: DnsStatus
    records: tuple[str, ...] = ()
    detail: str = ""


class Fetcher(Protocol):
    """Anything that answers DNS questions with `DnsAnswer` facts."""

    async def query(self, name: str, rdtype: str) -> DnsAnswer:
        """Ask for *rdtype* records at *name* (absolute, without trailing dot)."""
        ...


def _texts(rdtype: dns.rdatatype.RdataType, rdataset: object) -> tuple[str, ...]:
    if rdtype == dns.rdatatype.TXT:
        return tuple(b"".join(rd.strings).decode("latin-1") for rd in rdataset)  # type: ignore[attr-defined]
    return tuple(rd.to_text() for rd in rdataset)  # type: ignore[attr-defined]


class ResolverFetcher:
    """Asks recursive or authoritative servers through dnspython's async resolver."""

    def __init__(self, nameservers: Sequence[str] = (), port: int = 53, timeout: float = 2.0):
        self._nameservers = tuple(nameservers)
        self._port = port
        self._timeout = timeout
        self._resolver: dns.asyncresolver.Resolver | None = None

    def _get_resolver(self) -> dns.asyncresolver.Resolver:
        if self._resolver is None:
            if self._nameservers:
                r = dns.asyncresolver.Resolver(configure=False)
                r.nameservers = list(self._nameservers)
            else:
                r = dns.asyncresolver.Resolver()  # /etc/resolv.conf
            r.port = self._port
            r.timeout = self._timeout
            r.lifetime = self._timeout
            self._resolver = r
        return self._resolver

    async def query(self, name: str, rdtype: str) -> DnsAnswer:
        kind = dns.rdatatype.RdataType.make(rdtype)
        try:
            resolver = self._get_resolver()
            answer = await resolver.resolve(name + ".", kind, search=False, raise_on_no_answer=False)
        except dns.resolver.NXDOMAIN:
            return DnsAnswer(DnsStatus.NXDOMAIN)
        except dns.resolver.LifetimeTimeout:
            return DnsAnswer(DnsStatus.TIMEOUT, detail="timeout")
        except dns.resolver.NoNameservers as exc:
            return DnsAnswer(DnsStatus.SERVFAIL, detail=_first_line(exc))
        except dns.resolver.NoResolverConfiguration:
            return DnsAnswer(DnsStatus.ERROR, detail="no nameserver configured")
        except dns.exception.DNSException as exc:
            return DnsAnswer(DnsStatus.ERROR, detail=_first_line(exc))
        if answer.rrset is None:
            return DnsAnswer(DnsStatus.NODATA)
        return DnsAnswer(DnsStatus.OK, _texts(kind, answer.rrset))


class ZoneOverlay:
    """Answers names under a zone file's origin from the file; the rest from *fallback*.

    A name under a file's ``$ORIGIN`` is answered from that file only, so a
    local file fully overrides DNS for its zone (the offline default for the
    demo and for local overrides).
    """

    def __init__(self, paths: Sequence[str], fallback: Fetcher):
        self._fallback = fallback
        self._zones: list[tuple[dns.name.Name, dns.zone.Zone, frozenset[dns.name.Name]]] = []
        for path in paths:
            zone = load_zone_file(path)
            origin = zone.origin
            assert origin is not None  # load_zone_file refuses a file without $ORIGIN
            names = set()  # every owner name and the empty non-terminals above it
            for node_name in zone.nodes:
                n = dns.name.Name(node_name.labels)
                while n.is_subdomain(origin) and n not in names:
                    names.add(n)
                    n = n.parent()
            self._zones.append((origin, zone, frozenset(names)))
        # The most specific origin wins when files nest.
        self._zones.sort(key=lambda z: len(z[0].labels), reverse=True)

    async def query(self, name: str, rdtype: str) -> DnsAnswer:
        qname = dns.name.from_text(name)
        for origin, zone, names in self._zones:
            if qname.is_subdomain(origin):
                return self._answer(zone, origin, names, qname, dns.rdatatype.RdataType.make(rdtype))
        return await self._fallback.query(name, rdtype)

    @staticmethod
    def _answer(
        zone: dns.zone.Zone,
        origin: dns.name.Name,
        names: frozenset[dns.name.Name],
        qname: dns.name.Name,
        kind: dns.rdatatype.RdataType,
    ) -> DnsAnswer:
        for _ in range(MAX_CNAME_HOPS):
            node = zone.get_node(qname)
            if node is None:
                return DnsAnswer(DnsStatus.NODATA if qname in names else DnsStatus.NXDOMAIN)
            rdataset = node.get_rdataset(dns.rdataclass.IN, kind)
            if rdataset is not None:
                return DnsAnswer(DnsStatus.OK, _texts(kind, rdataset))
            cname = node.get_rdataset(dns.rdataclass.IN, dns.rdatatype.CNAME)
            if cname is None or kind == dns.rdatatype.CNAME:
                return DnsAnswer(DnsStatus.NODATA)
            qname = cname[0].target
            if not qname.is_subdomain(origin):
                return DnsAnswer(DnsStatus.ERROR, detail=f"CNAME leaves the local zone: {qname}")
        return DnsAnswer(DnsStatus.ERROR, detail="CNAME chain too long in the local zone")


def load_zone_file(path: str) -> dns.zone.Zone:
    """Read a zone file; its ``$ORIGIN`` line names the zone.

    :raises InvalidZoneFile: when the file cannot be read or parsed.
    """
    try:
        with open(path, encoding="utf-8") as fh:
            return dns.zone.from_file(fh, origin=None, relativize=False, check_origin=False)
    except OSError as exc:
        raise InvalidZoneFile(path, exc.strerror or str(exc)) from exc
    except dns.zone.UnknownOrigin as exc:
        raise InvalidZoneFile(path, "no $ORIGIN line") from exc
    except (dns.exception.DNSException, UnicodeDecodeError) as exc:
        raise InvalidZoneFile(path, _first_line(exc)) from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:200]


class CountingFetcher:
    """Counts the questions one check asks (reported as ``regcheck.queries``)."""

    def __init__(self, inner: Fetcher):
        self._inner = inner
        self.count = 0

    async def query(self, name: str, rdtype: str) -> DnsAnswer:
        self.count += 1
        return await self._inner.query(name, rdtype)
