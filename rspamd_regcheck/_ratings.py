"""Weighing a record's ratings (docs/scoring.md, "Ratings"; the seed's ``get_ratings``).  Pure.

Over the record's ``svc`` list in order: skip services the receiver does not
trust and ratings it has no score for (the seed raised KeyError on both),
add ``score * weight``, and stop once the weight gathered exceeds
``enough_weight``.  The weighted mean, the lowest and the highest score then
classify the ID as bad, low or high.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

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
