"""The async shell around the decision core: gather facts with DNS, then evaluate.

`Checker.check(envelope)` runs the steps of docs/scoring.md: skip, identity,
registry (with the ``IDlevel`` re-ask), ratings, plan, methods, verdict.
Only the fetching awaits; every decision is made by `_evaluate`.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import ipaddress
import math
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, replace

from ._answer import DnsAnswer, DnsStatus
from ._context import MethodContext
from ._dns import Budget, Cache, Fetcher, LocalZone, Resolver, Session, system_nameservers
from ._enforce import EnforcePolicy
from ._evaluate import Facts, Planned, Policy, RegistryFacts, RegistryStatus, evaluate, plan, wants_methods
from ._fallback import fallback_registry
from ._headers import fields_of
from ._identity import BadHelo, Identity, id_at_level, identify
from ._lru import TwoGenerationLRU, memo
from ._methods import RUNNERS
from ._names import reverse_name
from ._prescreen import classify
from ._qr1 import client_address
from ._ratings import rate
from ._record import parse_record, select_record
from ._services import Pending, Services
from ._sid import pra, rests_on_pra
from ._transport import Transport
from ._types import IPAddress, MethodOutcome, Record, Verdict
from ._wire import RType
from .config import Config
from .errors import InvalidRecord


@dataclass(frozen=True)
class Envelope:
    """What the MTA knows of one SMTP session (docs/protocol.md, "Requests")."""

    ip: IPAddress | None
    helo: str | None = None
    mail_from: str | None = None
    rcpts: tuple[str, ...] = ()
    hostname: str | None = None
    queue_id: str | None = None
    user: str | None = None
    headers: tuple[tuple[str, str], ...] = ()  # the message's header block (Sender ID's PRA)
    dkim_domains: tuple[str, ...] = ()  # d= of the DKIM signatures rspamd verified
    raw_headers: bytes = b""  # the header block as sent, parsed only when needed (`header_fields`)

    @functools.cached_property
    def header_fields(self) -> tuple[tuple[str, str], ...]:
        """The header block's fields: *headers*, else *raw_headers* parsed (once, and only if asked).

        Parsing a header block costs more than a warm check (100-250 us); only
        Sender ID and a result resting on it need the fields.
        """
        return fields_of(self.headers, self.raw_headers)


@dataclass(frozen=True)
class CheckResult:
    """A verdict, the number of DNS questions asked to reach it, and until when it holds.

    *valid_until* (`time.monotonic()`) is when the first DNS answer it rested
    on expires: 0 when one was a failure, infinity when none came from DNS.
    """

    verdict: Verdict
    queries: int
    valid_until: float = math.inf


def parse_ip(text: str | None) -> IPAddress | None:
    """Parse a client address (an ``IP`` header value, ``--ip``); None for a missing or empty one.

    Only an address written as `ipaddress` writes it is taken (hex digits in
    either case): no zone ID (``%eth0``), brackets, whitespace, leading zeros or
    uncompressed IPv6.  What reaches a header we add is then exactly what was
    given.  An IPv4-mapped IPv6 address (``::ffff:192.0.2.1``) is the IPv4
    address, as rspamd and postfix take it.

    :raises ValueError: when the text is anything else.
    """
    if text is None or text == "":
        return None
    return _parse_ip(text)


@memo(8192)
def _parse_ip(text: str) -> IPAddress:
    ip = ipaddress.ip_address(text)  # ValueError is not cached: bad input is parsed again
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.scope_id is not None:
            raise ValueError(f"{text!r} has a zone ID")
        if ip.ipv4_mapped is not None and text.lower() == f"::ffff:{ip.ipv4_mapped}":
            return ip.ipv4_mapped
    if str(ip) != text.lower():
        raise ValueError(f"{text!r} is not written as {ip}")
    return ip


def _result_key(env: Envelope) -> tuple[object, ...]:
    """What a check's result depends on (besides DNS): not the recipients, queue id or host name.

    Nor the header block, unless Sender ID ran: a result that rests on the
    PRA is kept under this key plus the PRA (`_pra_key`), and this key holds
    a marker saying so.
    """
    return (env.ip, env.helo, env.mail_from, env.user, env.dkim_domains)


def _pra_key(key: tuple[object, ...], env: Envelope) -> tuple[object, ...]:
    return (*key, pra(env.header_fields) if env.header_fields else None)


def make_resolver(config: Config) -> Resolver:
    """The shared DNS layer *config* asks for.

    :raises InvalidZoneFile: when a zone file cannot be loaded.
    """
    servers = config.dns_servers or tuple((s, config.dns_port) for s in system_nameservers())

    def transport(to: list[tuple[str, int]]) -> Transport:
        return Transport(
            to,
            config.dns_timeout,
            config.dns_tries,
            sockets=config.dns_sockets,
            rotate_every=config.dns_rotate_every,
            case_randomise=config.case_randomise,
            authentic=config.require_dnssec,  # the AD bit asked for (RFC 6840 5.7)
            trusted=config.trusted_validators,
        )

    default = transport(list(servers)) if servers else None
    routes = [(z.zone, transport([z.nameserver])) for z in config.prescreen if z.nameserver is not None]
    return Resolver(
        default,
        Cache(config.cache_size, config.max_ttl, config.negative_ttl, config.max_negative_ttl),
        [LocalZone(path) for path in config.zone_files],
        routes,
        config.max_inflight,
    )


UNVALIDATED_REASON = "registry answer not validated"
_ANSWERED = frozenset({DnsStatus.OK, DnsStatus.NXDOMAIN, DnsStatus.NODATA})  # what DNSSEC can vouch for


@functools.lru_cache(maxsize=8192)
def _parse_answer(texts: tuple[str, ...]) -> Record | InvalidRecord:
    """The record in a registry answer, parsed once per distinct answer (records are immutable)."""
    try:
        return parse_record(select_record(texts))
    except InvalidRecord as exc:
        return exc


async def lookup_record(
    fetcher: Fetcher,
    ident: str,
    zones: Sequence[str],
    first: Awaitable[DnsAnswer] | None = None,
    require_dnssec: bool = False,
) -> RegistryFacts:
    """Fetch and parse the record of *ident* from the registry *zones*, in order.

    NXDOMAIN (or no TXT at the name) falls through to the next zone; a DNS
    failure stops the walk.  *first*, when given, is the answer from the first
    zone, already asked for.  With *require_dnssec*, an answer (found or not)
    that a trusted validator did not mark authentic stops the walk as
    UNVALIDATED.
    """
    for i, zone in enumerate(zones):
        if i == 0 and first is not None:
            answer = await first
        else:
            answer = await fetcher.query(f"{ident}.{zone}", "TXT")
        if require_dnssec and not answer.authentic and answer.status in _ANSWERED:
            return RegistryFacts(RegistryStatus.UNVALIDATED, reasons=(UNVALIDATED_REASON,), zone=zone)
        if answer.status in (DnsStatus.NXDOMAIN, DnsStatus.NODATA):
            continue
        if answer.status is DnsStatus.BUDGET:
            return RegistryFacts(RegistryStatus.BUDGET, reasons=(answer.detail,), zone=zone)
        if answer.status is not DnsStatus.OK:
            return RegistryFacts(RegistryStatus.DNSFAIL, reasons=(answer.detail or answer.status.value,), zone=zone)
        parsed = _parse_answer(answer.records)
        if isinstance(parsed, InvalidRecord):
            return RegistryFacts(RegistryStatus.INVALID, reasons=parsed.reasons, zone=zone)
        return RegistryFacts(RegistryStatus.FOUND, record=parsed, zone=zone)
    return RegistryFacts(RegistryStatus.NO_RECORD)


# Settings of `Config.to_toml` that change no result: how the worker listens, logs and asks
# DNS, and the Postfix listener's own.  Workers that differ only in these (another port,
# another host name in spf.receiver's default) must give one fingerprint, or a plugin asking
# them in turn would drop its cache at every reply.
_NOT_DECIDING = ("server", "log", "policy_server")
_DNS_DECIDING = ("zone_files", "trusted_validators", "max_queries")


def deciding_settings(toml: str) -> list[str]:
    """The lines of *toml* (as `Config.to_toml` writes it) that can change a check's result."""
    kept: list[str] = []
    section = ""
    for line in toml.splitlines():
        if line.startswith("["):
            section = line.strip("[] ")
        key = line.partition("=")[0].strip()
        top = section.partition(".")[0]
        if top in _NOT_DECIDING or (section, key) == ("spf", "receiver"):
            continue
        if section == "dns" and not line.startswith("[") and key not in _DNS_DECIDING:
            continue
        kept.append(line)
    return kept


class Checker:
    """Runs checks with one configuration and one shared DNS layer."""

    def __init__(self, config: Config, resolver: Resolver | None = None):
        """:raises InvalidZoneFile: when a configured zone file cannot be loaded."""
        self.config = config
        self.resolver = resolver if resolver is not None else make_resolver(config)
        self.policy = Policy(
            ratings=config.ratings,
            method_order=config.method_order,
            method_limits=config.method_limits,
            authent_header=config.authent_header,
        )
        self.enforce_policy = EnforcePolicy.of(config)
        # key -> (valid until, result); a result None marks a key whose results rest on the PRA
        self._results: TwoGenerationLRU[tuple[object, ...], tuple[float, CheckResult | None]] = TwoGenerationLRU(
            config.result_cache_size
        )
        self.result_hits = 0
        self.services = Services(config.rating_services, config.ratings)
        digest = hashlib.sha256("\n".join(deciding_settings(config.to_toml())).encode())
        for path in config.zone_files:  # as loaded now (a changed file is read again on reload)
            try:
                with open(path, "rb") as f:
                    digest.update(hashlib.sha256(f.read()).digest())
            except OSError:
                digest.update(b"unreadable")
        self._config_digest = digest.digest()
        self._fingerprint: tuple[str, tuple[int, ...]] = ("", ())

    @property
    def fingerprint(self) -> str:
        """A digest of what results rest on besides DNS: the effective configuration, the zone
        files' contents and the local lists as loaded.  The same in every worker process with
        the same files; the plugin empties its result cache when it changes (a reload)."""
        versions = tuple(lst.generation for lst in self.services.local)
        if not self._fingerprint[0] or self._fingerprint[1] != versions:
            digest = hashlib.sha256(self._config_digest)
            for lst in self.services.local:  # what the list says, not where (a comment moves lines)
                digest.update(repr([(e.rating, e.ident, str(e.network)) for e in lst.entries]).encode())
            self._fingerprint = (digest.hexdigest()[:16], versions)
        return self._fingerprint[0]

    def _service_headers(self, env: Envelope) -> tuple[tuple[str, str], ...]:
        """The header fields the rating services read (VBR-Info): parsed only when one reads them."""
        return env.header_fields if self.services.vbr else ()

    def close(self) -> None:
        """Close the DNS sockets."""
        self.resolver.close()

    def skip_reason(self, env: Envelope) -> str | None:
        """Why this session is not checked at all (docs/scoring.md, step 1), or None."""
        if env.ip is None:
            return "no client IP"
        ip = client_address(env.ip)
        if any(ip in net for net in self.config.local_networks):
            return "local client address"
        if env.user and self.config.skip_authenticated:
            return "authenticated session"
        return None

    async def check(self, env: Envelope) -> CheckResult:
        """Check one session.  Never raises for anything the sender or DNS controls.

        The check ends by its deadline (``dns.deadline``): questions still
        unanswered then count as DNS failures.  A result is reused for the
        same inputs while every DNS answer it rests on is still cached: a
        fresh check would find the same answers, count the same questions and
        decide the same.
        """
        reused = self.reused(env)
        if reused is not None:
            return reused
        key = base = self._key(env)
        loop = asyncio.get_running_loop()
        session = Session(self.resolver, self.config.max_queries, loop.time() + self.config.deadline, loop)
        facts = await self._facts(env, session)
        result = CheckResult(evaluate(facts, self.policy), session.count, session.valid_until)
        if session.valid_until > time.monotonic():
            if rests_on_pra(result.verdict.methods):
                self._results.put(base, (session.valid_until, None))
                key = _pra_key(base, env)
            self._results.put(key, (session.valid_until, result))
        return result

    def _key(self, env: Envelope) -> tuple[object, ...]:
        """What a stored result is found by: the envelope, and the rating services' headers."""
        return _result_key(env) + (self.services.key(self._service_headers(env)) if self.services else ())

    def reused(self, env: Envelope) -> CheckResult | None:
        """The result of an earlier check with the same inputs, while every DNS answer it rests
        on is still cached (what `check` would return at once, without awaiting); else None."""
        now = time.monotonic()  # the DNS cache's clock
        key = base = self._key(env)
        entry = self._results.get(key)
        if entry is not None and entry[1] is None and entry[0] > now:  # the result rests on the PRA
            key = _pra_key(base, env)
            entry = self._results.get(key)
        if entry is None:
            return None
        if entry[0] > now and entry[1] is not None:
            self.result_hits += 1
            return entry[1]
        self._results.discard(key)
        return None

    async def _facts(self, env: Envelope, session: Session) -> Facts:
        skipped = self.skip_reason(env)
        if skipped is not None or env.ip is None:
            return Facts(ip=env.ip, skipped=skipped or "no client IP")
        ip = client_address(env.ip)
        found = identify(env.helo)
        zones = self.config.registry_zones
        # The registry's first question goes out first (many DNSBL zones must not take the
        # per-check cap from it), then the pre-screen's, all in flight together (docs/scoring.md, step 2).
        registry = None
        if not isinstance(found, BadHelo) and zones:
            registry = session.begin(f"{found.id}.{zones[0]}", RType.TXT)
        dnsbl = [z for z in self.config.prescreen if ip.version == 4 or z.ipv6]
        asked = [session.begin(reverse_name(ip, z.zone), RType.A) for z in dnsbl]
        services = None
        if self.services and not isinstance(found, BadHelo):  # their questions fly beside the registry's
            services = self.services.begin(session, ip, found.id, found.helo, self._service_headers(env))
        first = session.end(registry) if registry is not None else None
        facts = await self._registry_facts(env, ip, session, found, first, services)
        if self.config.prescreen:
            answers = [await session.end(a) for a in asked]
            facts = replace(facts, prescreen=tuple(classify(z, a) for z, a in zip(dnsbl, answers, strict=True)))
        return facts

    async def _registry_facts(
        self,
        env: Envelope,
        ip: IPAddress,
        session: Session,
        found: Identity | BadHelo,
        first: Awaitable[DnsAnswer] | None,
        services: Pending | None = None,
    ) -> Facts:
        if isinstance(found, BadHelo):
            return Facts(ip=ip, helo=found)
        ident = found.id
        zones = self.config.registry_zones
        dnssec = self.config.require_dnssec
        registry = await lookup_record(session, ident, zones, first, dnssec)
        record = registry.record
        if record is not None and record.idlevel is not None:
            # A name the public suffix list does not split: the real IDs are
            # IDlevel labels deep.  Ask once more, never again (no chains).
            deeper = id_at_level(found.helo, record.idlevel)
            if deeper is not None and len(deeper) > len(ident):
                ident = deeper
                registry = await lookup_record(session, deeper, zones, require_dnssec=dnssec)
                record = registry.record
        if registry.status is RegistryStatus.NO_RECORD and self.config.registry_fallback == "authenticate":
            registry = await fallback_registry(session, found.helo, self.config.method_limits)
            record = registry.record
        if record is None or record.stop:
            return Facts(ip=ip, helo=found.helo, id=ident, registry=registry)
        if services is not None:
            ratings = await self.services.rate(
                session, services, record, ip, ident, found.helo, self._service_headers(env)
            )
        else:
            ratings = rate(record.ratings, self.config.ratings)
        if not wants_methods(ratings):
            return Facts(ip=ip, helo=found.helo, id=ident, registry=registry, ratings=ratings)
        planned, budget_skips = plan(record, ip, self.policy)
        outcomes: list[MethodOutcome] = list(budget_skips)
        for step in planned:
            outcome = await self._run(step, record, ip, found.helo, ident, env, session)
            outcomes.append(outcome)
            if outcome.result is not None and outcome.result.final:
                break
        return Facts(ip=ip, helo=found.helo, id=ident, registry=registry, ratings=ratings, methods=tuple(outcomes))

    async def _run(
        self, step: Planned, record: Record, ip: IPAddress, helo: str, ident: str, env: Envelope, session: Session
    ) -> MethodOutcome:
        """Run one planned method within its query budget, through the method table."""
        cfg = self.config
        ctx = MethodContext(
            record, ip, helo, ident, session, Budget(step.budget), env.mail_from, env.headers, env.dkim_domains,
            cfg.spf_alignment, cfg.spf_receiver, env.raw_headers,
        )  # fmt: skip
        return await RUNNERS[step.method](ctx)
