"""The async shell around the decision core: gather facts with DNS, then evaluate.

`Checker.check(envelope)` runs DESIGN section 2's steps: skip, identity,
registry (with the ``IDlevel`` re-ask), ratings, plan, methods, verdict.
Only the fetching awaits; every decision is made by `_evaluate`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, replace

from ._dns import CountingFetcher, DnsStatus, Fetcher, ResolverFetcher, ZoneOverlay
from ._evaluate import Facts, Planned, Policy, RegistryFacts, RegistryStatus, evaluate, plan, wants_methods
from ._identity import BadHelo, id_at_level, identify
from ._qr1 import client_address, qr1
from ._ratings import rate
from ._record import parse_record, select_record
from ._types import IPAddress, Method, MethodOutcome, Record, Verdict
from .config import Config
from .errors import InvalidRecord

# Methods this build can run.  The others are planned but reported as not available.
AVAILABLE_METHODS = frozenset({Method.QR1})


@dataclass(frozen=True)
class Envelope:
    """What the MTA knows of one SMTP session (DESIGN section 2)."""

    ip: IPAddress | None
    helo: str | None = None
    mail_from: str | None = None
    rcpts: tuple[str, ...] = ()
    hostname: str | None = None
    queue_id: str | None = None
    user: str | None = None


@dataclass(frozen=True)
class CheckResult:
    """A verdict and the number of DNS questions asked to reach it."""

    verdict: Verdict
    queries: int


def parse_ip(text: str | None) -> IPAddress | None:
    """Parse a client IP header value; None for a missing one.

    :raises ValueError: when the text is not an IPv4 or IPv6 address.
    """
    if text is None or not text.strip():
        return None
    return ipaddress.ip_address(text.strip())


def make_fetcher(config: Config) -> Fetcher:
    """The DNS fetcher *config* asks for: its nameservers, under its zone files."""
    fetcher: Fetcher = ResolverFetcher(config.nameservers, config.dns_port, config.dns_timeout)
    if config.zone_files:
        fetcher = ZoneOverlay(config.zone_files, fetcher)
    return fetcher


async def lookup_record(fetcher: Fetcher, ident: str, zones: Sequence[str]) -> RegistryFacts:
    """Fetch and parse the record of *ident* from the registry *zones*, in order.

    NXDOMAIN (or no TXT at the name) falls through to the next zone; a DNS
    failure stops the walk.
    """
    for zone in zones:
        answer = await fetcher.query(f"{ident}.{zone}", "TXT")
        if answer.status in (DnsStatus.NXDOMAIN, DnsStatus.NODATA):
            continue
        if answer.status.failed:
            return RegistryFacts(RegistryStatus.DNSFAIL, reasons=(answer.detail or answer.status.value,), zone=zone)
        try:
            record = parse_record(select_record(answer.records))
        except InvalidRecord as exc:
            return RegistryFacts(RegistryStatus.INVALID, reasons=exc.reasons, zone=zone)
        return RegistryFacts(RegistryStatus.FOUND, record=record, zone=zone)
    return RegistryFacts(RegistryStatus.NO_RECORD)


class Checker:
    """Runs checks with one configuration and one DNS fetcher."""

    def __init__(self, config: Config, fetcher: Fetcher | None = None):
        self.config = config
        self.fetcher = fetcher if fetcher is not None else make_fetcher(config)
        self.policy = Policy(
            ratings=config.ratings,
            method_order=config.method_order,
            method_limits=config.method_limits,
            authent_header=config.authent_header,
        )

    def skip_reason(self, env: Envelope) -> str | None:
        """Why this session is not checked at all (DESIGN step 1), or None."""
        if env.ip is None:
            return "no client IP"
        ip = client_address(env.ip)
        if any(ip in net for net in self.config.local_networks):
            return "local client address"
        if env.user and self.config.skip_authenticated:
            return "authenticated session"
        return None

    async def check(self, env: Envelope) -> CheckResult:
        """Check one session.  Never raises for anything the sender controls."""
        counter = CountingFetcher(self.fetcher)
        facts = await self._facts(env, counter)
        return CheckResult(evaluate(facts, self.policy), counter.count)

    async def _run(self, step: Planned, record: Record, ip: IPAddress, fetcher: Fetcher) -> MethodOutcome:
        """Run one planned method within its query budget."""
        if step.method is Method.QR1:
            return qr1(record, ip)
        raise AssertionError(f"{step.method.value} was planned but is not available")

    async def _facts(self, env: Envelope, fetcher: Fetcher) -> Facts:
        skipped = self.skip_reason(env)
        if skipped is not None or env.ip is None:
            return Facts(ip=env.ip, skipped=skipped or "no client IP")
        ip = client_address(env.ip)
        found = identify(env.helo)
        if isinstance(found, BadHelo):
            return Facts(ip=ip, helo=found)
        facts = Facts(ip=ip, helo=found.helo, id=found.id)
        zones = self.config.registry_zones
        registry = await lookup_record(fetcher, found.id, zones)
        record = registry.record
        if record is not None and record.idlevel is not None:
            # A name the public suffix list does not split: the real IDs are
            # IDlevel labels deep.  Ask once more, never again (no chains).
            deeper = id_at_level(found.helo, record.idlevel)
            if deeper is not None and len(deeper) > len(found.id):
                facts = replace(facts, id=deeper)
                registry = await lookup_record(fetcher, deeper, zones)
                record = registry.record
        facts = replace(facts, registry=registry)
        if record is None or record.stop:
            return facts
        ratings = rate(record.ratings, self.config.ratings)
        facts = replace(facts, ratings=ratings)
        if not wants_methods(ratings):
            return facts
        planned, budget_skips, unavailable = plan(record, ip, self.policy, AVAILABLE_METHODS)
        outcomes: list[MethodOutcome] = list(budget_skips)
        for step in planned:
            outcome = await self._run(step, record, ip, fetcher)
            outcomes.append(outcome)
            if outcome.result is not None and outcome.result.final:
                break
        return replace(facts, methods=tuple(outcomes), unavailable=unavailable)
