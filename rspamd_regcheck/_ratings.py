"""Weighing a record's ratings (docs/scoring.md, "Ratings"; the seed's ``get_ratings``).  Pure.

Over the record's ``svc`` list in order: skip services the receiver does not
trust and ratings it has no score for (the seed raised KeyError on both),
add ``score * weight``, and stop once the weight gathered exceeds
``enough_weight``.  The weighted mean, the lowest and the highest score then
classify the ID as bad, low or high.

Services that answer for themselves (`_services.py`) are read here too, by
pure functions: `parse_code_pattern` reads a configured return code (a
code, a range, a network, octet wildcards); `read_codes` turns one DNS
answer into a rating, a refusal or a failure, as rspamd's rbl module reads
return codes; `first_hand` puts the ratings they gave before the record's
second-hand copies.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

from ._answer import DnsAnswer, DnsStatus
from ._types import Rating, RatingClass, RatingSummary


@dataclass(frozen=True)
class ServiceScale:
    """How much the receiver trusts one rating service and what each rating is worth."""

    weight: float
    scores: Mapping[str, float]


SEED_SCALE = {"A": 9.0, "B": 7.0, "C": 5.0, "D": 0.0}
SEED_SERVICES: Mapping[str, ServiceScale] = {
    code: ServiceScale(weight=5.0, scores=SEED_SCALE) for code in ("S1", "M2", "H1")
}


@dataclass(frozen=True)
class RatingPolicy:
    """The receiver's thresholds, with the seed's values as defaults."""

    enough_weight: float = 14.0  # stop reading ratings once more weight than this is gathered
    reject_below: float = 3.0  # weighted mean below this: bad
    min_allowed: float = 1.0  # any used score below this: bad
    high_min: float = 4.0  # high needs every used score above this ...
    high_max: float = 8.0  # ... and some used score above this
    services: Mapping[str, ServiceScale] = field(default_factory=lambda: dict(SEED_SERVICES))
    answering: frozenset[str] = frozenset()  # services asked directly (`_services`), not read from the record

    @functools.cached_property  # a policy never changes: worked out once
    def top(self) -> float:
        """The best score any trusted service can give."""
        return max((s for svc in self.services.values() for s in svc.scores.values()), default=0.0)

    @functools.cached_property
    def bottom(self) -> float:
        """The worst score any trusted service can give."""
        return min((s for svc in self.services.values() for s in svc.scores.values()), default=0.0)


def rate(ratings: Sequence[Rating], policy: RatingPolicy) -> RatingSummary:
    """Weigh *ratings* by *policy*; `RatingClass.NONE` when none is trusted and scored."""
    used: list[Rating] = []
    total_score = total_weight = 0.0
    low = high = None
    for rating in ratings:
        scale = policy.services.get(rating.service)
        if scale is None or scale.weight <= 0:
            continue
        score = scale.scores.get(rating.value)
        if score is None:
            continue
        used.append(rating)
        total_score += score * scale.weight
        total_weight += scale.weight
        low = score if low is None else min(low, score)
        high = score if high is None else max(high, score)
        if total_weight > policy.enough_weight:
            break
    if not used or low is None or high is None:
        return RatingSummary(RatingClass.NONE)
    mean = total_score / total_weight
    if mean < policy.reject_below or low < policy.min_allowed:
        klass = RatingClass.BAD
    elif low > policy.high_min and high > policy.high_max:
        klass = RatingClass.HIGH
    else:
        klass = RatingClass.LOW
    return RatingSummary(klass, tuple(used), mean, low, high)


def listed_bad(summary: RatingSummary, policy: RatingPolicy) -> tuple[Rating, ...]:
    """The ratings used that a service asked directly gave below ``min_allowed``: a live listing."""
    return tuple(
        r
        for r in summary.used
        if r.service in policy.answering
        and policy.services[r.service].scores.get(r.value, policy.min_allowed) < policy.min_allowed
    )


def rating_weight(summary: RatingSummary, policy: RatingPolicy) -> float:
    """The dynamic weight in [0, 1] of the rating symbol for *summary*.

    - high: ``(mean - high_min) / (top - high_min)``, 1.0 at the best score;
    - low:  ``(top - mean) / (top - reject_below)``, 1.0 at the reject line;
    - bad:  ``0.5 + 0.5 * (reject_below - mean) / (reject_below - bottom)``,
      0.5 at the reject line (or when only one score is under ``min_allowed``),
      1.0 at the worst score.

    Each is monotonic in the weighted mean (top and bottom are the best and
    worst scores any trusted service gives: 9 and 0 with the seed's tables).
    """
    if summary.mean is None:
        return 1.0
    mean = summary.mean
    if summary.klass is RatingClass.HIGH:
        return _ratio(mean - policy.high_min, policy.top - policy.high_min)
    if summary.klass is RatingClass.LOW:
        return _ratio(policy.top - mean, policy.top - policy.reject_below)
    if summary.klass is RatingClass.BAD:
        return 0.5 + 0.5 * _ratio(policy.reject_below - mean, policy.reject_below - policy.bottom)
    return 1.0


def _ratio(num: float, den: float) -> float:
    if den <= 0:
        return 1.0
    return round(min(1.0, max(0.0, num / den)), 4)


# -- services that answer for themselves ----------------------------------------------------

LOOPBACK_NET = ipaddress.IPv4Network("127.0.0.0/8")  # RFC 5782 2.1: return codes live here
WILDCARD = "*"


@dataclass(frozen=True)
class CodePattern:
    """A configured return code: ``127.0.1.2``, ``127.0.1.4-127.0.1.6``, ``127.0.1.0/24``,
    or with octet wildcards ``127.0.*.3`` and ``127.0.*.0-127.0.*.1``.

    Octets written ``*`` match anything; the others, read as one number,
    must lie between the two ends (a range's ends have their wildcards in
    the same places).
    """

    text: str
    fixed: tuple[int, ...]  # the octet positions that are not wildcards
    lo: tuple[int, ...]
    hi: tuple[int, ...]

    def matches(self, code: ipaddress.IPv4Address) -> bool:
        octets = code.packed
        value = tuple(octets[i] for i in self.fixed)
        return self.lo <= value <= self.hi

    def __str__(self) -> str:
        return self.text


def _octets(text: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(positions, values) of the octets of ``a.b.c.d`` that are not ``*``."""
    parts = text.strip().split(".")
    if len(parts) != 4:
        raise ValueError(f"{text.strip()!r} is not four octets")
    fixed, values = [], []
    for i, part in enumerate(parts):
        if part == WILDCARD:
            continue
        if not part.isdigit() or not part.isascii() or int(part) > 255:
            raise ValueError(f"octet {part!r} is not 0-255 or *")
        fixed.append(i)
        values.append(int(part))
    return tuple(fixed), tuple(values)


def parse_code_pattern(text: str) -> CodePattern:
    """Read a return code, a range ``LO-HI``, a network ``A.B.C.D/N``, each maybe with ``*`` octets.

    :raises ValueError: for anything else.
    """
    if "/" in text and WILDCARD not in text:
        net = ipaddress.IPv4Network(text.strip(), strict=False)
        return CodePattern(text, (0, 1, 2, 3), tuple(net.network_address.packed), tuple(net.broadcast_address.packed))
    lo_text, dash, hi_text = text.partition("-")
    fixed, lo = _octets(lo_text)
    hi = lo
    if dash:
        hi_fixed, hi = _octets(hi_text)
        if hi_fixed != fixed:
            raise ValueError(f"the ends of {text!r} have their wildcards in different places")
        if hi < lo:
            raise ValueError(f"range {text!r} ends before it starts")
    return CodePattern(text, fixed, lo, hi)


# Resolver-refusal codes (RFC 5782 leaves them to each list): Spamhaus 127.255.255.252-255
# (252 a typo in the zone name, 254 a public resolver, 255 too many questions), Spamhaus DBL
# 127.0.1.255 (an IP address asked of a domain list), DNSWL 127.0.0.255 (over the free limit).
DEFAULT_REFUSALS: tuple[CodePattern, ...] = tuple(
    parse_code_pattern(t) for t in ("127.255.255.252-127.255.255.255", "127.0.1.255", "127.0.0.255")
)


@dataclass(frozen=True)
class Reading:
    """What one service said of the ID: a rating, or none and why (the note)."""

    service: str
    rating: str | None = None
    note: str = ""  # "DNSWL:refused 127.0.0.255", "DBL:dnsfail timeout"; empty when it simply answered


def read_codes(
    service: str,
    answer: DnsAnswer,
    codes: Sequence[tuple[CodePattern, str]],
    scale: ServiceScale | None,
    refusals: Sequence[CodePattern] = DEFAULT_REFUSALS,
    unlisted: str | None = None,
) -> Reading:
    """Read a DNS list's answer the way rspamd's rbl module does.

    NXDOMAIN or NODATA: not listed (*unlisted*, or no rating).  A DNS
    failure, a spent budget, an answer that is not a 127/8 code: no rating,
    and the note says why.  A refusal code anywhere in the answer: no
    rating (the list is refusing our resolver, it says nothing of the ID).
    Codes the table lacks are ignored, as rbl ignores unknown return codes;
    of several known codes the one worth least counts, so an ID never gains
    from being listed twice.
    """
    if answer.status in (DnsStatus.NXDOMAIN, DnsStatus.NODATA):
        return Reading(service, unlisted)
    if answer.status is DnsStatus.BUDGET:
        return Reading(service, None, f"{service}:budget {answer.detail}")
    if answer.status is not DnsStatus.OK:
        return Reading(service, None, f"{service}:dnsfail {answer.detail or answer.status.value}")
    found: list[str] = []
    for value in answer.records:
        try:
            code = ipaddress.IPv4Address(value)
        except ValueError:
            return Reading(service, None, f"{service}:dnsfail not an IPv4 answer {value!r}")
        if code not in LOOPBACK_NET:
            return Reading(service, None, f"{service}:dnsfail {code} is not a 127/8 code")
        if any(p.matches(code) for p in refusals):
            return Reading(service, None, f"{service}:refused {code}")
        rating = next((r for p, r in codes if p.matches(code)), None)
        if rating is not None:
            found.append(rating)
    if not found:
        return Reading(service, unlisted)
    scores = scale.scores if scale is not None else {}
    return Reading(service, min(found, key=lambda r: (scores.get(r, float("inf")), r)))


def first_hand(
    readings: Sequence[Reading], record: Sequence[Rating], answering: Collection[str]
) -> tuple[tuple[Rating, ...], tuple[str, ...]]:
    """The ratings to weigh, in order, and the notes on services that gave none.

    Ratings the services gave us themselves come first (in *readings*'
    order), then the record's ``svc`` copies of services that do not
    answer for themselves: a service in *answering* speaks only for itself.
    """
    ratings = [Rating(r.service, r.rating) for r in readings if r.rating is not None]
    ratings += [r for r in record if r.service not in answering]
    return tuple(ratings), tuple(r.note for r in readings if r.note)
