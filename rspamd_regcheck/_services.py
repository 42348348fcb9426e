"""Rating services that answer for themselves (the network shell around `_ratings`).

The seed read every rating from the registry record's ``svc`` list: the
registry's copy of what each service thinks.  A service configured here
is asked directly instead, and its copy in the record is ignored:

- a DNS list (``zone``): ``<ID>.<zone>``, ``<HELO>.<zone>`` or the client
  IP's reversed octets or nibbles, type A; return codes map to ratings
  (DNSWL's domain and IP lists, Spamhaus DBL, a list of your own);
- VBR (``vouchers``): the vouchers the sender names (record ``svc=VX:``
  claims, the message's ``VBR-Info:`` header) that the receiver trusts,
  asked at ``<ID>._vouch.<voucher>`` (RFC 5518, `_vbr`);
- a local file (``file``): lines ``ID-or-CIDR RATING [# comment]``, read
  again on SIGHUP and when the file changes.

Questions go out with the registry's (`Services.begin`), through the
check's `Session`: counted against ``dns.max_queries``, cached and
coalesced like every other.  `Services.rate` reads the answers once the
registry has spoken and weighs everything with `_ratings.rate`.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import os
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from ._dns import Asked, Session
from ._names import reverse_name
from ._ratings import (
    DEFAULT_REFUSALS,
    CodePattern,
    RatingPolicy,
    Reading,
    first_hand,
    rate,
    read_codes,
)
from ._types import IPAddress, IPNetwork, RatingSummary, Record
from ._vbr import Claim, header_claims, read_vouch, vouch_name
from ._wire import RType
from .errors import ConfigError

log = logging.getLogger("rspamd_regcheck.services")

ASK_MODES = ("id", "helo", "ip")
RELOAD_CHECK_INTERVAL = 1.0  # seconds between looks at a local list file's modification time
_LIST_NAME = re.compile(r"(?:[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9])?\.)+[a-z0-9-]{1,63}")


@dataclass(frozen=True)
class DnsService:
    """A DNS list that rates the ID, the HELO or the client IP itself."""

    code: str
    zone: str
    codes: tuple[tuple[CodePattern, str], ...]
    ask: str = "id"
    unlisted: str | None = None
    blocked: tuple[CodePattern, ...] = DEFAULT_REFUSALS
    ipv6: bool = True

    def name(self, ip: IPAddress, ident: str, helo: str) -> str | None:
        """The name to ask for this check, or None when the list has nothing to say (IPv6 unasked)."""
        if self.ask == "ip":
            return reverse_name(ip, self.zone) if ip.version == 4 or self.ipv6 else None
        return f"{helo if self.ask == 'helo' else ident}.{self.zone}"


@dataclass(frozen=True)
class VbrService:
    """Vouch By Reference: the vouchers this receiver trusts, each with the rating its word is worth."""

    code: str
    vouchers: Mapping[str, str]  # voucher domain -> rating


@dataclass(frozen=True)
class LocalEntry:
    """One line of a local list."""

    line: int
    rating: str
    ident: str | None = None
    network: IPNetwork | None = None


@dataclass(frozen=True)
class LocalService:
    """An operator's own list, read from a file."""

    code: str
    path: str
    entries: tuple[LocalEntry, ...] = field(default=(), compare=False)  # as read when the config was loaded
    # the file's (mtime, size, inode) just before *entries* were read: a worker started later
    # compares the file with this, not with what it finds when it starts
    signature: tuple[int, int, int] | None = field(default=None, compare=False)


ServiceSpec = DnsService | VbrService | LocalService


# -- the local list --------------------------------------------------------------------------


def parse_local_list(text: str, path: str, ratings: Mapping[str, float]) -> tuple[LocalEntry, ...]:
    """Read a local list: ``ID-or-CIDR RATING [# comment]`` per line; blank lines and comments skipped.

    :raises ConfigError: naming ``path:line`` for the first bad line.
    """
    entries: list[LocalEntry] = []
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.partition("#")[0].strip()
        if not line:
            continue
        where = f"{path}:{n}"
        words = line.split()
        if len(words) != 2:
            raise ConfigError(where, f"expected 'ID-or-CIDR RATING', got {line!r}")
        subject, rating = words
        if rating not in ratings:
            raise ConfigError(where, f"rating {rating!r} is not one of this service's ratings ({', '.join(ratings)})")
        if any(c in subject for c in ":/") or subject.replace(".", "").isdigit():
            try:
                network = ipaddress.ip_network(subject, strict=False)
            except ValueError as exc:
                raise ConfigError(where, f"{subject!r} is not an IP address or network") from exc
            entries.append(LocalEntry(n, rating, network=network))
            continue
        ident = subject.lower().rstrip(".")
        if not _LIST_NAME.fullmatch(ident):
            raise ConfigError(where, f"{subject!r} is not a domain name, IP address or network")
        entries.append(LocalEntry(n, rating, ident=ident))
    return tuple(entries)


def read_local_list(path: str, ratings: Mapping[str, float]) -> tuple[LocalEntry, ...]:
    """`parse_local_list` on the file at *path*.

    :raises ConfigError: when the file cannot be read or a line is bad.
    """
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(path, f"cannot read the list: {getattr(exc, 'strerror', None) or exc}") from exc
    return parse_local_list(text, path, ratings)


def local_service(code: str, path: str, ratings: Mapping[str, float]) -> LocalService:
    """A local list as the configuration loads it: read now, with the file's signature from before.

    :raises ConfigError: as `read_local_list`.
    """
    signature = _signature(path)
    return LocalService(code, path, read_local_list(path, ratings), signature)


def _signature(path: str) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size, st.st_ino


class LocalList:
    """A local list kept current: read again when the file changes; a bad new version is logged and skipped."""

    def __init__(self, spec: LocalService, ratings: Mapping[str, float]):
        self.spec = spec
        self._ratings = ratings
        self.entries = spec.entries
        self.generation = 0  # changes with every successful reload: cached results depend on it
        self._seen = spec.signature
        self._looked = -math.inf  # the first check looks: the file may have changed since the load

    def refresh(self, now: float) -> None:
        """Look at the file at most every `RELOAD_CHECK_INTERVAL` seconds; load it again if it changed."""
        if now - self._looked < RELOAD_CHECK_INTERVAL:
            return
        self._looked = now
        sig = _signature(self.spec.path)
        if sig == self._seen:
            return
        self._seen = sig
        try:
            self.entries = read_local_list(self.spec.path, self._ratings)
        except ConfigError as exc:
            log.error("local list %s not reloaded, keeping the previous one: %s", self.spec.code, exc)
            return
        self.generation += 1
        log.warning("local list %s reloaded: %d entries", self.spec.code, len(self.entries))

    def reading(self, ident: str, ip: IPAddress) -> Reading:
        """The list's rating: a line naming the ID wins, else the narrowest network holding the client."""
        best: LocalEntry | None = None
        longest = -1  # the prefix length of the narrowest network found so far
        for entry in self.entries:
            if entry.ident is not None and entry.ident == ident:
                return Reading(self.spec.code, entry.rating)
            if entry.network is not None and ip in entry.network and entry.network.prefixlen > longest:
                best, longest = entry, entry.network.prefixlen
        return Reading(self.spec.code, best.rating if best is not None else None)


# -- asking ----------------------------------------------------------------------------------


@dataclass
class Pending:
    """The questions one check sent to the services, keyed by what they ask about."""

    ident: str
    dns: dict[str, Asked] = field(default_factory=dict)  # service code -> question
    vouch: dict[str, tuple[Claim, Asked]] = field(default_factory=dict)  # voucher -> claim, question


class Services:
    """The configured services that answer for themselves, shared by every check of one `Checker`."""

    def __init__(self, specs: Sequence[ServiceSpec], policy: RatingPolicy):
        self.policy = policy
        self.dns = tuple(s for s in specs if isinstance(s, DnsService))
        self.vbr = tuple(s for s in specs if isinstance(s, VbrService))
        self.local = tuple(LocalList(s, policy.services[s.code].scores) for s in specs if isinstance(s, LocalService))
        self.answering = frozenset(s.code for s in specs)
        # readings in this order: local lists first (an operator's word), then the others as configured
        self._order = tuple(s.code for s in specs if isinstance(s, LocalService)) + tuple(
            s.code for s in specs if not isinstance(s, LocalService)
        )

    def __bool__(self) -> bool:
        return bool(self.answering)

    def key(self, headers: Sequence[tuple[str, str]]) -> tuple[object, ...]:
        """What a check's result depends on here besides DNS: the local lists' versions, the VBR-Info headers."""
        now = time.monotonic()
        for lst in self.local:
            lst.refresh(now)
        vbr = tuple(v for n, v in headers if n.lower() == "vbr-info") if self.vbr else ()
        return (tuple(lst.generation for lst in self.local), vbr)

    def begin(
        self, session: Session, ip: IPAddress, ident: str, helo: str, headers: Sequence[tuple[str, str]]
    ) -> Pending:
        """Send every question that needs only the HELO and the client: before the registry answers."""
        pending = Pending(ident)
        for svc in self.dns:
            name = svc.name(ip, ident, helo)
            if name is not None:
                pending.dns[svc.code] = session.begin(name, RType.A)
        self._vouch(session, pending, header_claims(headers, ident) if self.vbr else ())
        return pending

    def _vouch(self, session: Session, pending: Pending, claims: Sequence[Claim]) -> None:
        for claim in claims:
            if claim.voucher in pending.vouch or not any(claim.voucher in s.vouchers for s in self.vbr):
                continue
            asked = session.begin(vouch_name(pending.ident, claim.voucher), RType.TXT)
            pending.vouch[claim.voucher] = (claim, asked)

    async def rate(
        self,
        session: Session,
        pending: Pending,
        record: Record,
        ip: IPAddress,
        ident: str,
        helo: str,
        headers: Sequence[tuple[str, str]],
    ) -> RatingSummary:
        """Weigh the services' own ratings and the record's copies of the others'.

        The order and the weighing: docs/scoring.md ("Ratings") and docs/rating-services.md.
        """
        if ident != pending.ident:  # the record's IDlevel named a deeper ID: ask about that one
            deeper = Pending(ident, dict(pending.dns))
            for svc in self.dns:
                if svc.ask == "id":
                    deeper.dns[svc.code] = session.begin(f"{ident}.{svc.zone}", RType.A)
            self._vouch(session, deeper, header_claims(headers, ident) if self.vbr else ())
            pending = deeper
        if self.vbr:
            self._vouch(session, pending, [Claim(v) for v in record.vouches])
        readings: dict[str, Reading] = {}
        for lst in self.local:
            readings[lst.spec.code] = lst.reading(ident, ip)
        for svc in self.dns:
            asked = pending.dns.get(svc.code)
            if asked is not None:
                answer = await session.end(asked)
                scale = self.policy.services.get(svc.code)
                readings[svc.code] = read_codes(svc.code, answer, svc.codes, scale, svc.blocked, svc.unlisted)
        for vbr in self.vbr:
            readings[vbr.code] = await self._vbr_reading(session, pending, vbr)
        ordered = [readings[c] for c in self._order if c in readings]
        used, notes = first_hand(ordered, record.ratings, self.answering)
        return replace(rate(used, self.policy), notes=notes)

    async def _vbr_reading(self, session: Session, pending: Pending, vbr: VbrService) -> Reading:
        """The best rating among the trusted vouchers that vouch; notes on those that could not be asked."""
        scores = self.policy.services[vbr.code].scores
        best: Reading | None = None
        notes: list[str] = []
        for voucher, (claim, asked) in pending.vouch.items():
            rating = vbr.vouchers.get(voucher)
            if rating is None:
                continue
            reading = read_vouch(vbr.code, claim, await session.end(asked), rating)
            if reading.note:
                notes.append(reading.note)
            elif reading.rating is not None and (best is None or scores[reading.rating] > scores[best.rating or ""]):
                best = reading
        if best is not None:
            return best
        return Reading(vbr.code, None, "; ".join(notes))
