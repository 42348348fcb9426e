"""Prometheus metrics, correct across worker processes (prometheus_client's multiprocess mode).

The supervisor points ``PROMETHEUS_MULTIPROC_DIR`` at an empty directory
before it starts the workers; each worker writes its counters to files
there, and ``GET /metrics`` in any worker adds up all of them, those of dead
workers included (counters never go back).  prometheus_client reads the
variable when it is imported, so this module imports it lazily.

DNS counters live in the resolver as plain integers (the hot path stays
free of locks); after each check the worker adds what changed.
"""

from __future__ import annotations

import os
from typing import Any

from ._types import Verdict

ENV = "PROMETHEUS_MULTIPROC_DIR"
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Metrics:
    """The worker's metrics; a no-op unless *enabled* (tests and `check` leave it off)."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled and bool(os.environ.get(ENV))
        self._last: dict[str, int] = {}
        if not self.enabled:
            return
        from prometheus_client import Counter, Histogram

        self.requests = Counter("regcheck_requests", "HTTP requests answered", ["path", "status"])
        self.checks = Counter("regcheck_checks", "Checks by seed verdict", ["verdict"])
        self.symbols = Counter("regcheck_symbols", "Symbols given", ["symbol"])
        self.latency = Histogram("regcheck_check_seconds", "Time to answer a check", buckets=LATENCY_BUCKETS)
        self.dns = Counter("regcheck_dns", "DNS events: questions sent, cache hits and misses, failures", ["event"])
        self.budget = Counter("regcheck_budget_stops", "Checks with a method or the check stopped by a query budget")

    def request(self, path: str, status: int) -> None:
        if self.enabled:
            self.requests.labels(path, str(status)).inc()

    def check(self, verdict: Verdict, seconds: float, dns_counts: dict[str, int]) -> None:
        if not self.enabled:
            return
        self.checks.labels(verdict.seed.action.value).inc()
        self.latency.observe(seconds)
        budget = False
        for hit in verdict.symbols:
            self.symbols.labels(hit.name).inc()
            budget = budget or hit.name == "REGCHECK_BUDGET"
        if budget:
            self.budget.inc()
        for event, total in dns_counts.items():
            delta = total - self._last.get(event, 0)
            if delta > 0:
                self.dns.labels(event).inc(delta)
            self._last[event] = total

    @staticmethod
    def exposition() -> tuple[bytes, str]:
        """The text format of every worker's metrics added up."""
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest, multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST


def mark_dead(pid: int) -> None:
    """Tell prometheus_client a worker is gone (its live gauges stop counting)."""
    if os.environ.get(ENV):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)


def dns_counts(resolver: Any) -> dict[str, int]:
    """The resolver's cumulative DNS counters, by event name."""
    stats = resolver.stats
    counts = {
        "question": stats.questions,
        "coalesced": stats.coalesced,
        "local": stats.local,
        "cache_hit": resolver.cache.hits,
        "cache_miss": resolver.cache.misses,
    }
    for status, n in stats.failures.items():
        counts[status] = n
    return counts
