"""Weighing ratings (docs/scoring.md, "Ratings"; the seed's get_ratings)."""

from __future__ import annotations

import pytest

from rspamd_regcheck import Rating, RatingClass, RatingPolicy, ServiceScale, rate, rating_weight

SEED = RatingPolicy()


def ratings(text):
    return tuple(Rating(*item.split(":")) for item in text.split(",")) if text else ()


CASES = [
    # id, svc list, class, used, mean, min, max
    pytest.param("S1:A,M2:A,H1:B", RatingClass.HIGH, "S1:A,M2:A,H1:B", 25 / 3, 7, 9, id="seed-heaven-high"),
    pytest.param("S1:C,M2:C", RatingClass.LOW, "S1:C,M2:C", 5, 5, 5, id="seed-spammer-low"),
    pytest.param("S1:A,M2:A", RatingClass.HIGH, "S1:A,M2:A", 9, 9, 9, id="two-a-high"),
    pytest.param("S1:A,M2:B,H1:B", RatingClass.HIGH, "S1:A,M2:B,H1:B", 23 / 3, 7, 9, id="one-a-makes-max-above-8"),
    pytest.param("S1:B,M2:B", RatingClass.LOW, "S1:B,M2:B", 7, 7, 7, id="max-not-above-high-max"),
    pytest.param("S1:A,M2:D", RatingClass.BAD, "S1:A,M2:D", 4.5, 0, 9, id="min-below-min-allowed"),
    pytest.param("S1:D,M2:C", RatingClass.BAD, "S1:D,M2:C", 2.5, 0, 5, id="mean-below-reject"),
    pytest.param("X1:A,S2:A", RatingClass.NONE, "", None, None, None, id="untrusted-only"),
    pytest.param("S1:Z,M2:7", RatingClass.NONE, "", None, None, None, id="unscored-ratings-skipped"),
    pytest.param("X9:D,S1:A,M2:A", RatingClass.HIGH, "S1:A,M2:A", 9, 9, 9, id="untrusted-skipped"),
    pytest.param("", RatingClass.NONE, "", None, None, None, id="no-svc"),
    # enough_weight 14: after three weight-5 services (15 > 14) the rest is not read
    pytest.param("S1:A,M2:A,H1:A,S1:D", RatingClass.HIGH, "S1:A,M2:A,H1:A", 9, 9, 9, id="stops-after-enough"),
]


@pytest.mark.parametrize("svc,klass,used,mean,low,high", CASES)
def test_seed_policy(svc, klass, used, mean, low, high):
    s = rate(ratings(svc), SEED)
    assert s.klass is klass
    assert s.text == used
    assert s.mean == (None if mean is None else pytest.approx(mean))
    assert (s.low, s.high) == (low, high)


def test_configured_services_and_weights():
    policy = RatingPolicy(
        enough_weight=100,
        services={"Q7": ServiceScale(weight=1, scores={"B": 2.0}), "X1": ServiceScale(weight=3, scores={"A": 10.0})},
    )
    s = rate(ratings("X1:A,Q7:B,S1:A"), policy)
    assert s.text == "X1:A,Q7:B"
    assert s.mean == pytest.approx((30 + 2) / 4)
    assert s.klass is RatingClass.LOW  # min 2 is not above high_min 4


def test_zero_weight_service_is_not_trusted():
    policy = RatingPolicy(services={"S1": ServiceScale(weight=0, scores={"A": 9.0})})
    assert rate(ratings("S1:A"), policy).klass is RatingClass.NONE


WEIGHTS = [
    pytest.param("S1:A,M2:A", 1.0, id="high-best"),
    pytest.param("S1:A,M2:A,H1:B", (25 / 3 - 4) / 5, id="high-heaven"),
    pytest.param("S1:C,M2:C", (9 - 5) / 6, id="low-middle"),
    pytest.param("S1:C,M2:D,H1:D", 0.5 + 0.5 * (3 - 5 / 3) / 3, id="bad-low-mean"),
    pytest.param("S1:A,M2:D", 0.5, id="bad-by-min-only"),
    pytest.param("S1:D,M2:D", 1.0, id="bad-worst"),
]


@pytest.mark.parametrize("svc,weight", WEIGHTS)
def test_rating_weight(svc, weight):
    assert rating_weight(rate(ratings(svc), SEED), SEED) == pytest.approx(weight, abs=1e-4)


def test_rating_weight_is_monotonic():
    policy = RatingPolicy(services={"S1": ServiceScale(5, {str(n): float(n) for n in range(10)})})
    by_mean = {}
    for n in range(10):
        s = rate(ratings(f"S1:{n}"), policy)
        by_mean.setdefault(s.klass, []).append(rating_weight(s, policy))
    assert by_mean[RatingClass.BAD] == sorted(by_mean[RatingClass.BAD], reverse=True)
    assert by_mean[RatingClass.LOW] == sorted(by_mean[RatingClass.LOW], reverse=True)
    assert by_mean[RatingClass.HIGH] == sorted(by_mean[RatingClass.HIGH])
    assert all(0 <= w <= 1 for ws in by_mean.values() for w in ws)
