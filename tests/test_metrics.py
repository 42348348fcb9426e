"""The worker's counters (rspamd_regcheck/_metrics.py): what one check adds, by protocol, from tables.

The counting is handed to prometheus_client's own Counter and Histogram,
registered here in a registry of the test's own (the worker's are in its
multiprocess directory; tests/test_serve.py and test_policy_server.py read
those from a real worker's /metrics).
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram

from rspamd_regcheck import symbols as S
from rspamd_regcheck._metrics import LATENCY_BUCKETS, MAX_VERDICT_KEYS, Metrics, verdict_keys
from rspamd_regcheck._types import Action, SeedVerdict, SymbolHit, Verdict


def verdict(action: Action, *symbols: str) -> Verdict:
    return Verdict(symbols=tuple(SymbolHit(s) for s in symbols), seed=SeedVerdict(action, 250, "2.0.0", "ok"))


KEYS = [
    pytest.param(verdict(Action.ACCEPT), "http", [("checks", "http", "ACCEPT")], id="no-symbols"),
    pytest.param(
        verdict(Action.REJECT, "REGCHECK_QR1_FAIL", S.DNSBL),
        "policy",
        [("checks", "policy", "REJECT"), ("symbols", "REGCHECK_QR1_FAIL", ""), ("symbols", S.DNSBL, "")],
        id="symbols",
    ),
    pytest.param(
        verdict(Action.TEMPFAIL, "REGCHECK_BUDGET", "REGCHECK_BUDGET"),
        "spamc",
        [
            ("checks", "spamc", "TEMPFAIL"),
            ("symbols", "REGCHECK_BUDGET", ""),
            ("symbols", "REGCHECK_BUDGET", ""),
            ("budget", "", ""),
        ],
        id="budget-counted-once-per-check",
    ),
]


@pytest.mark.parametrize(("v", "protocol", "expected"), KEYS)
def test_verdict_keys(v: Verdict, protocol: str, expected: list[tuple[str, str, str]]) -> None:
    assert list(verdict_keys(v, protocol)) == expected


def metrics() -> tuple[Metrics, CollectorRegistry]:
    registry = CollectorRegistry()
    m = Metrics(enabled=False)
    m.enabled = True  # as under serve, with instruments of our own registry
    m._m = {
        "requests": Counter("regcheck_requests", "x", ["path", "status"], registry=registry),
        "checks": Counter("regcheck_checks", "x", ["protocol", "verdict"], registry=registry),
        "symbols": Counter("regcheck_symbols", "x", ["symbol"], registry=registry),
        "latency": Histogram("regcheck_check_seconds", "x", ["protocol"], buckets=LATENCY_BUCKETS, registry=registry),
        "budget": Counter("regcheck_budget_stops", "x", registry=registry),
    }
    return m, registry


NO_DNS: Any = SimpleNamespace(
    resolver=SimpleNamespace(
        stats=SimpleNamespace(questions=0, coalesced=0, local=0, failures={}),
        cache=SimpleNamespace(hits=0, misses=0),
        transport_counts=dict,
    ),
    result_hits=0,
)
ACCEPT = verdict(Action.ACCEPT, "REGCHECK_QR1_ALLOW")
REJECT = verdict(Action.REJECT, "REGCHECK_QR1_FAIL")
# (verdict, seconds, protocol) per check -> the series expected after one flush
CHECKS = [
    pytest.param(
        [(ACCEPT, 0.0001, "http"), (ACCEPT, 0.0001, "http"), (ACCEPT, 0.003, "policy")],
        {
            ("regcheck_checks_total", (("protocol", "http"), ("verdict", "ACCEPT"))): 2,
            ("regcheck_checks_total", (("protocol", "policy"), ("verdict", "ACCEPT"))): 1,
            ("regcheck_symbols_total", (("symbol", "REGCHECK_QR1_ALLOW"),)): 3,
            ("regcheck_check_seconds_count", (("protocol", "http"),)): 2,
            ("regcheck_check_seconds_count", (("protocol", "policy"),)): 1,
            ("regcheck_check_seconds_bucket", (("le", "0.0005"), ("protocol", "http"))): 2,
            ("regcheck_check_seconds_bucket", (("le", "0.0025"), ("protocol", "policy"))): 0,
            ("regcheck_check_seconds_bucket", (("le", "0.005"), ("protocol", "policy"))): 1,
        },
        id="one-verdict-two-protocols",
    ),
    pytest.param(
        [(ACCEPT, 0.0, "rspamc"), (REJECT, 0.0, "rspamc"), (REJECT, 0.0, "spamc")],
        {
            ("regcheck_checks_total", (("protocol", "rspamc"), ("verdict", "ACCEPT"))): 1,
            ("regcheck_checks_total", (("protocol", "rspamc"), ("verdict", "REJECT"))): 1,
            ("regcheck_checks_total", (("protocol", "spamc"), ("verdict", "REJECT"))): 1,
            ("regcheck_checks_total", (("protocol", "http"), ("verdict", "REJECT"))): None,
            ("regcheck_symbols_total", (("symbol", "REGCHECK_QR1_FAIL"),)): 2,
        },
        id="verdicts-apart",
    ),
]


@pytest.mark.parametrize(("checks", "expected"), CHECKS)
def test_checks_counted_by_protocol(checks: list[tuple[Verdict, float, str]], expected: dict[Any, Any]) -> None:
    m, registry = metrics()

    async def count() -> None:  # in a loop, as in the worker: counted now, handed over at the flush
        for v, seconds, protocol in checks:
            m.check(v, seconds, NO_DNS, protocol)
        assert registry.get_sample_value("regcheck_check_seconds_count", {"protocol": checks[0][2]}) is None
        m.flush()

    asyncio.run(count())
    got = {k: registry.get_sample_value(k[0], dict(k[1])) for k in expected}
    assert got == expected


def test_counts_survive_many_verdicts() -> None:
    """Past MAX_VERDICT_KEYS distinct verdicts the per-verdict counts are folded in, never lost."""
    m, registry = metrics()
    n = MAX_VERDICT_KEYS + 10

    async def count() -> None:
        for _ in range(n):
            m.check(verdict(Action.ACCEPT), 0.0, NO_DNS, "policy")  # a new verdict object each time
        m.flush()

    asyncio.run(count())
    assert registry.get_sample_value("regcheck_checks_total", {"protocol": "policy", "verdict": "ACCEPT"}) == n
    assert registry.get_sample_value("regcheck_check_seconds_count", {"protocol": "policy"}) == n


def test_no_verdict_is_held_after_a_flush() -> None:
    """The per-verdict counts hold their verdicts only until the flush (a soak with ever new
    verdicts must not grow the worker's memory)."""
    import gc
    import weakref

    m, _ = metrics()

    async def count() -> weakref.ref[Verdict]:
        v = verdict(Action.ACCEPT, "REGCHECK_QR1_ALLOW")
        m.check(v, 0.0, NO_DNS, "http")
        m.flush()
        return weakref.ref(v)

    ref = asyncio.run(count())
    gc.collect()
    assert ref() is None
