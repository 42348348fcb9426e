"""The DNS layer: local zones, cache, coalescing, routes, budgets and deadlines.

    Session (one per check)        counts every question, enforces the
      |                            method budgets, the per-check cap and the
      |                            check's deadline
    Resolver (shared)              routes a name: a local zone file answers
      |                            names under its origin; else the cache;
      |                            else one question in flight per (name,
      |                            type), sent by the transport of the
      |                            longest matching route (a DNSBL zone may
      |                            have its own server), or the default one
    Transport (_transport.py)      UDP, TCP on truncation

Answers are `DnsAnswer` facts; nothing above this module sees an exception
from DNS.  Budgets count questions *before* the cache, so a check's result
never depends on what happens to be cached (docs/development.md, "The DNS client").
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import OrderedDict, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import dns.exception
import dns.name
import dns.rdataclass
import dns.rdatatype
import dns.resolver
import dns.zone

from ._answer import DnsAnswer, DnsStatus, record_value
from ._lru import TwoGenerationLRU
from ._transport import Transport
from ._wire import RType
from .errors import InvalidZoneFile

MAX_CNAME_HOPS = 8  # inside a local zone file; loops end here
LOCAL_TTL = 0  # local zone answers are not put in the DNS cache: the zone keeps its own
MAX_LOCAL_ANSWERS = 10_000  # answers a zone file keeps ready (names asked, found or not)


class Fetcher(Protocol):
    """Anything that answers DNS questions with `DnsAnswer` facts."""

    async def query(self, name: str, rdtype: str, budget: Budget | None = None) -> DnsAnswer:
        """Ask for *rdtype* records at *name* (absolute, without trailing dot)."""
        ...


@dataclass
class Budget:
    """How many questions one method may still ask (docs/development.md, "The DNS client")."""

    limit: int
    spent: int = 0

    @property
    def left(self) -> int:
        return max(0, self.limit - self.spent)


def normalise_name(name: str) -> str:
    return name.rstrip(".").lower()


# -- local zone files ----------------------------------------------------------------------


def load_zone_file(path: str) -> dns.zone.Zone:
    """Read a zone file; its ``$ORIGIN`` line names the zone.

    :raises InvalidZoneFile: when the file cannot be read or parsed.
    """
    try:
        with open(path, "rb") as fh:
            text = fh.read().decode("utf-8")  # whole, so an error's offset is the file's
        return dns.zone.from_text(text, origin=None, relativize=False, filename=path, check_origin=False)
    except OSError as exc:
        raise InvalidZoneFile(path, exc.strerror or str(exc)) from exc
    except UnicodeDecodeError as exc:  # worded as config.py words it for the configuration file
        raise InvalidZoneFile(
            path, f"not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start})"
        ) from exc
    except dns.zone.UnknownOrigin as exc:
        raise InvalidZoneFile(path, "no $ORIGIN line") from exc
    except dns.exception.DNSException as exc:
        raise InvalidZoneFile(path, _first_line(exc)) from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:200]


def _rdata_value(rtype: int, rd: Any) -> object:
    """A zone file record as `DnsAnswer` carries it (the same shapes as from the wire)."""
    if rtype == RType.TXT:
        return record_value(rtype, b"".join(rd.strings))
    if rtype in (RType.A, RType.AAAA):
        return rd.address
    if rtype == RType.MX:
        return (rd.preference, normalise_name(rd.exchange.to_text()))
    if rtype == RType.SRV:
        return (rd.priority, rd.weight, rd.port, normalise_name(rd.target.to_text()))
    if rtype in (RType.PTR, RType.CNAME, RType.NS):
        return normalise_name(rd.target.to_text())
    return rd.to_text()


class LocalZone:
    """One zone file, answering every name under its origin (and nothing else).

    Its answers are `authentic`: the operator's own data, needing no DNSSEC.
    """

    def __init__(self, path: str):
        zone = load_zone_file(path)
        origin = zone.origin
        assert origin is not None  # load_zone_file refuses a file without $ORIGIN
        self.zone = zone
        self.origin = normalise_name(origin.to_text())
        names = set()  # owner names and the empty non-terminals above them
        for node_name in zone.nodes:
            n = dns.name.Name(node_name.labels)
            while n.is_subdomain(origin) and n not in names:
                names.add(n)
                n = n.parent()
        self._names = frozenset(names)
        self._answers: OrderedDict[tuple[str, RType], DnsAnswer] = OrderedDict()

    def answer(self, name: str, rtype: RType) -> DnsAnswer:
        """The zone's answer; kept (bounded) since the zone never changes while loaded."""
        key = (name, rtype)
        found = self._answers.get(key)
        if found is None:
            found = self._lookup(name, rtype)
            self._answers[key] = found
            if len(self._answers) > MAX_LOCAL_ANSWERS:
                self._answers.popitem(last=False)
        return found

    def _lookup(self, name: str, rtype: RType) -> DnsAnswer:
        qname = dns.name.from_text(name)
        for _ in range(MAX_CNAME_HOPS):
            node = self.zone.get_node(qname)
            if node is None:
                status = DnsStatus.NODATA if qname in self._names else DnsStatus.NXDOMAIN
                return DnsAnswer(status, ttl=LOCAL_TTL, authentic=True)
            rdataset = node.get_rdataset(dns.rdataclass.IN, dns.rdatatype.RdataType(int(rtype)))
            if rdataset is not None:
                values = tuple(_rdata_value(rtype, rd) for rd in rdataset)
                return DnsAnswer(DnsStatus.OK, values, ttl=LOCAL_TTL, authentic=True)
            cname = node.get_rdataset(dns.rdataclass.IN, dns.rdatatype.CNAME)
            if cname is None or rtype == RType.CNAME:
                return DnsAnswer(DnsStatus.NODATA, ttl=LOCAL_TTL, authentic=True)
            qname = cname[0].target
            if normalise_name(qname.to_text()) != self.origin and not qname.is_subdomain(self.zone.origin):
                return DnsAnswer(DnsStatus.ERROR, detail=f"CNAME leaves the local zone: {qname}")
        return DnsAnswer(DnsStatus.ERROR, detail="CNAME chain too long in the local zone")


# -- cache -----------------------------------------------------------------------------------


class Cache:
    """A bounded, TTL-respecting cache of answers (least recently used goes first, see `_lru`).

    Times are `time.monotonic()` seconds (``now`` arguments, expiries).

    Negative answers (NXDOMAIN, NODATA) are cached for their SOA-derived TTL
    (RFC 2308 5) capped at *max_negative_ttl* (unbound's 3,600 s), or for
    *negative_ttl* when the reply carried no SOA for the name (0 by default:
    RFC 2308 5 says such answers SHOULD NOT be cached).  Failures are never
    cached.  TTLs are capped at *max_ttl*.
    """

    def __init__(
        self, max_entries: int = 50_000, max_ttl: int = 86_400, negative_ttl: int = 0, max_negative_ttl: int = 3600
    ):
        self.max_entries = max_entries
        self.max_ttl = max_ttl
        self.negative_ttl = negative_ttl
        self.max_negative_ttl = max_negative_ttl
        self._data: TwoGenerationLRU[tuple[str, int], tuple[float, DnsAnswer]] = TwoGenerationLRU(max_entries)
        self.hits = 0
        self.misses = 0

    @property
    def evictions(self) -> int:
        return self._data.evictions

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: tuple[str, int], now: float) -> DnsAnswer | None:
        entry = self._data.get(key)
        if entry is None:
            self.misses += 1
            return None
        expires, answer = entry
        if expires <= now:
            self._data.discard(key)
            self.misses += 1
            return None
        self.hits += 1
        return answer

    def expires(self, key: tuple[str, int], answer: DnsAnswer) -> float:
        """When *answer*, cached for *key*, expires (loop time); 0 when the cache holds another or none."""
        entry = self._data.peek(key)
        return entry[0] if entry is not None and entry[1] is answer else 0.0

    def put(self, key: tuple[str, int], answer: DnsAnswer, now: float) -> None:
        if self.max_entries <= 0 or answer.status.failed or answer.status is DnsStatus.BUDGET:
            return
        ttl = answer.ttl
        if answer.status is not DnsStatus.OK:
            ttl = self.negative_ttl if ttl is None else min(ttl, self.max_negative_ttl)
        elif ttl is None:
            return
        ttl = min(ttl, self.max_ttl)
        if ttl <= 0:
            return
        self._data.put(key, (now + ttl, answer))


# -- resolver --------------------------------------------------------------------------------


@dataclass
class Stats:
    """Counters of one resolver, for logs and metrics."""

    questions: int = 0  # asked of a DNS server (after cache and coalescing)
    coalesced: int = 0  # answered by a question already in flight
    local: int = 0  # answered from a zone file
    failures: dict[str, int] = field(default_factory=dict)


class Resolver:
    """The shared part of the DNS layer: routes, cache and coalescing.

    A question on the wire costs no task: the transport calls back, and the
    answer goes to each waiter's own future (so a waiter that gives up, its
    check cancelled, leaves the question and the other waiters alone).
    """

    def __init__(
        self,
        default: Transport | None,
        cache: Cache | None = None,
        local_zones: Sequence[LocalZone] = (),
        routes: Iterable[tuple[str, Transport]] = (),
        max_inflight: int = 1000,
    ):
        self._default = default
        self.cache = cache if cache is not None else Cache()
        self._local = sorted(local_zones, key=lambda z: z.origin.count("."), reverse=True)
        self._routes = sorted(
            ((normalise_name(zone), t) for zone, t in routes), key=lambda r: r[0].count("."), reverse=True
        )
        self._inflight: dict[tuple[str, int], list[asyncio.Future[DnsAnswer]]] = {}
        self._max_inflight = max(1, max_inflight)  # questions on the wire at once
        self._active = 0
        self._queued: deque[tuple[tuple[str, int], str, RType, Transport]] = deque()
        self._draining = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[None]] = set()  # transports without `start` (test doubles)
        # The longest any question can take: its transport's timeout (waiting for a slot aside).
        self.max_wait = max((t.timeout for t in self._all_transports()), default=0.0)
        self.stats = Stats()

    def _local_zone(self, name: str) -> LocalZone | None:
        for zone in self._local:
            if name == zone.origin or name.endswith("." + zone.origin):
                return zone
        return None

    def _transport(self, name: str) -> Transport | None:
        for zone, transport in self._routes:
            if name == zone or name.endswith("." + zone):
                return transport
        return self._default

    def cached(self, name: str, rtype: RType) -> DnsAnswer | None:
        """The answer a local zone or the cache holds now, without asking DNS; None if neither."""
        name = name.rstrip(".").lower()  # normalise_name, inline: three calls per question
        local = self._local_zone(name) if self._local else None
        if local is not None:
            self.stats.local += 1
            return local.answer(name, rtype)
        return self.cache.get((name, int(rtype)), time.monotonic())

    def valid_until(self, name: str, rtype: RType, answer: DnsAnswer) -> float:
        """Until when *answer*, just given for (*name*, *rtype*), stays the answer (`time.monotonic()`).

        A zone file's answers never change while it is loaded; a cached answer
        holds until it expires; anything else (a failure, an answer the cache
        no longer holds) holds for no time.
        """
        name = name.rstrip(".").lower()  # normalise_name
        if self._local and self._local_zone(name) is not None:
            return math.inf
        return self.cache.expires((name, int(rtype)), answer)

    async def query(self, name: str, rdtype: str | RType) -> DnsAnswer:
        """Answer (*name*, *rdtype*) from a local zone, the cache, or DNS."""
        try:
            rtype = rdtype if isinstance(rdtype, RType) else RType.make(rdtype)
        except ValueError as exc:
            return DnsAnswer(DnsStatus.ERROR, detail=str(exc))
        cached = self.cached(name, rtype)
        if cached is not None:
            return cached
        return await self.fetch(name, rtype)

    def fetch(self, name: str, rtype: RType) -> asyncio.Future[DnsAnswer]:
        """Ask DNS (one question in flight per name and type), without looking in the cache first.

        The question is sent before this returns (or queued, past
        ``max_inflight``); the future is the caller's alone.
        """
        name = name.rstrip(".").lower()  # normalise_name
        key = (name, int(rtype))
        loop = self._loop
        if loop is None or not loop.is_running():  # (asking asyncio each time costs a getpid() system call)
            loop = asyncio.get_running_loop()
            if loop is not self._loop:
                self._adopt(loop)
        fut: asyncio.Future[DnsAnswer] = loop.create_future()
        waiters = self._inflight.get(key)
        if waiters is not None:
            self.stats.coalesced += 1
            waiters.append(fut)
            return fut
        transport = self._transport(name) if self._routes else self._default
        if transport is None:
            fut.set_result(DnsAnswer(DnsStatus.ERROR, detail="no nameserver configured"))
            return fut
        self._inflight[key] = [fut]
        if self._active < self._max_inflight:
            self._send(key, name, rtype, transport)
        else:
            self._queued.append((key, name, rtype, transport))
        return fut

    def _adopt(self, loop: asyncio.AbstractEventLoop) -> None:
        """A new event loop (``asyncio.run`` again): questions of the old one are gone with it."""
        self._loop = loop
        self._inflight = {}
        self._active = 0
        self._queued.clear()
        self._tasks = set()

    @property
    def queued(self) -> int:
        """Questions waiting for a slot on the wire (``max_inflight`` reached)."""
        return len(self._queued)

    def _send(self, key: tuple[str, int], name: str, rtype: RType, transport: Transport) -> None:
        self._active += 1
        self.stats.questions += 1
        if isinstance(transport, Transport):
            transport.start(name, rtype, self._answered, key)
        else:
            task = asyncio.get_running_loop().create_task(self._ask(transport, key, name, rtype))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _ask(self, transport: Transport, key: tuple[str, int], name: str, rtype: RType) -> None:
        self._answered(key, await transport.ask(name, rtype))

    def _answered(self, key: tuple[str, int], answer: DnsAnswer) -> None:
        self._active -= 1
        if answer.status.failed:
            self.stats.failures[answer.status.value] = self.stats.failures.get(answer.status.value, 0) + 1
        self.cache.put(key, answer, time.monotonic())
        for fut in self._inflight.pop(key, ()):
            if not fut.done():
                fut.set_result(answer)
        if self._draining:  # a queued question that ended at once, inside the loop below
            return
        self._draining = True
        try:
            while self._queued and self._active < self._max_inflight:
                self._send(*self._queued.popleft())
        finally:
            self._draining = False

    def transport_counts(self) -> dict[str, int]:
        """What the transports saw of forgery: replies dropped, ICMP errors (cumulative)."""
        transports = [t for t in self._all_transports() if isinstance(t, Transport)]
        return {
            "reply_dropped": sum(t.dropped for t in transports),
            "icmp_error": sum(t.refusals for t in transports),
        }

    def _all_transports(self) -> list[Transport]:
        transports = {id(t): t for _, t in self._routes}
        if self._default is not None:
            transports[id(self._default)] = self._default
        return list(transports.values())

    def close(self) -> None:
        for t in self._all_transports():
            t.close()


# -- per check -------------------------------------------------------------------------------


class Session:
    """One check's view of DNS: counts questions, enforces budgets and the deadline.

    Every question counts, cache hits and local answers included.  A spent
    budget or cap is answered with status BUDGET (a fact, not an exception);
    past the deadline every question is answered TIMEOUT.
    """

    def __init__(
        self,
        resolver: Resolver,
        cap: int,
        deadline: float | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
    ):
        """*loop*: the running event loop, when the caller has it at hand (else asked for when needed)."""
        self._resolver = resolver
        self.cap = cap
        self.deadline = deadline  # loop time
        self._loop = loop
        self.count = 0
        # Until when every answer this check saw stays valid: its result can be reused till then.
        self.valid_until = math.inf

    def _seen(self, name: str, rtype: RType, answer: DnsAnswer) -> DnsAnswer:
        if answer.status is not DnsStatus.BUDGET:  # a spent budget does not depend on DNS
            self.valid_until = min(self.valid_until, self._resolver.valid_until(name, rtype, answer))
        return answer

    def _spend(self, budget: Budget | None) -> DnsAnswer | None:
        """Count one question; a BUDGET answer instead when the budget or the cap is spent."""
        if self.count >= self.cap:
            return DnsAnswer(DnsStatus.BUDGET, detail=f"check query cap {self.cap} reached")
        if budget is not None:
            if budget.spent >= budget.limit:
                return DnsAnswer(DnsStatus.BUDGET, detail=f"method budget of {budget.limit} queries spent")
            budget.spent += 1
        self.count += 1
        return None

    def cached(self, name: str, rtype: RType, budget: Budget | None = None) -> DnsAnswer | None:
        """An answer available now (local zone or cache), counted; None when DNS must be asked.

        Nothing is counted when it returns None: the `query` that follows counts.
        """
        if self.count >= self.cap or (budget is not None and budget.spent >= budget.limit):
            return self._spend(budget)
        answer = self._resolver.cached(name, rtype)
        if answer is not None:
            self._spend(budget)
            self._seen(name, rtype, answer)
        return answer

    async def query(self, name: str, rdtype: str | RType, budget: Budget | None = None) -> DnsAnswer:
        return await self.end(self.begin(name, rdtype, budget))

    def begin(self, name: str, rdtype: str | RType, budget: Budget | None = None) -> Asked:
        """Count the question and send it now; `end` gives its answer.

        Questions begun one after another are in flight together, without a task each.
        """
        try:
            rtype = rdtype if isinstance(rdtype, RType) else RType.make(rdtype)
        except ValueError as exc:
            return Asked(name, RType.A, DnsAnswer(DnsStatus.ERROR, detail=str(exc)))
        spent = self._spend(budget)
        if spent is not None:
            return Asked(name, rtype, spent)
        cached = self._resolver.cached(name, rtype)  # the common case, without a future
        if cached is not None:
            return Asked(name, rtype, self._seen(name, rtype, cached))
        return Asked(name, rtype, self._resolver.fetch(name, rtype))

    async def end(self, asked: Asked) -> DnsAnswer:
        """The answer to a question from `begin` (a DNS failure once the check's deadline passes)."""
        pending = asked.answer
        if isinstance(pending, DnsAnswer):
            return pending
        if not pending.done() and self.deadline is not None:
            remaining = self.deadline - (self._loop or asyncio.get_running_loop()).time()
            if remaining <= 0:
                pending.cancel()
                return self._seen(asked.name, asked.rtype, _PAST_DEADLINE)
            # The transport gives up within max_wait once a question is sent: a timer of our own
            # is needed only when that is too late, or when questions wait for a slot to be sent.
            if remaining < self._resolver.max_wait or self._resolver._queued:
                try:
                    async with asyncio.timeout(remaining):
                        answer = await pending  # our own future: cancelling it leaves the question alone
                except TimeoutError:
                    answer = _PAST_DEADLINE
                return self._seen(asked.name, asked.rtype, answer)
        return self._seen(asked.name, asked.rtype, await pending)


_PAST_DEADLINE = DnsAnswer(DnsStatus.TIMEOUT, detail="check deadline passed")


@dataclass(frozen=True, slots=True)
class Asked:
    """A question `Session.begin` sent (or answered at once)."""

    name: str
    rtype: RType
    answer: DnsAnswer | asyncio.Future[DnsAnswer]  # an answer now, or one on its way


def system_nameservers() -> list[str]:
    """The nameservers of /etc/resolv.conf (as dnspython reads it); empty if none."""
    try:
        return [str(ns) for ns in dns.resolver.Resolver(configure=True).nameservers]
    except (dns.resolver.NoResolverConfiguration, OSError):
        return []
