"""Prometheus metrics, correct across worker processes (prometheus_client's multiprocess mode).

The supervisor points ``PROMETHEUS_MULTIPROC_DIR`` at an empty directory
before it starts the workers; each worker writes its counters to files
there, and ``GET /metrics`` in any worker adds up all of them, those of dead
workers included (counters never go back).  prometheus_client reads the
variable when it is imported, so this module imports it lazily.

A worker counts in plain dicts and hands the sums to prometheus_client at
most once a second (and before it answers /metrics): each of its updates
takes a lock and writes a file mapping, which per check would cost about as
much as a warm check.  So another worker's figures can be a second late.
DNS counters live in the resolver as plain integers; the worker adds what
changed.
"""

from __future__ import annotations

import asyncio
import bisect
import os
from collections import Counter as Tally
from typing import Any

from ._types import Verdict

ENV = "PROMETHEUS_MULTIPROC_DIR"
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
FLUSH_SECONDS = 1.0
# The front ends, as regcheck_checks_total{protocol} and regcheck_check_seconds{protocol} name them:
# rspamd's HTTP protocol, its legacy RSPAMC and SpamAssassin's SPAMC (`_legacy`), Postfix's policy service.
PROTOCOLS = ("http", "rspamc", "spamc", "policy")
MAX_VERDICT_KEYS = 1024  # verdicts counted between two flushes (a reused result's verdict is the same object)

_instruments: dict[str, Any] = {}  # one set per process: prometheus_client refuses duplicates


def _make_instruments() -> dict[str, Any]:
    if not _instruments:
        from prometheus_client import Counter, Histogram

        _instruments.update(
            requests=Counter("regcheck_requests", "HTTP requests answered", ["path", "status"]),
            checks=Counter("regcheck_checks", "Checks by front end and seed verdict", ["protocol", "verdict"]),
            symbols=Counter("regcheck_symbols", "Symbols given", ["symbol"]),
            latency=Histogram(
                "regcheck_check_seconds", "Time to answer a check", ["protocol"], buckets=LATENCY_BUCKETS
            ),
            dns=Counter("regcheck_dns", "DNS events: questions sent, cache hits and misses, failures", ["event"]),
            budget=Counter("regcheck_budget_stops", "Checks with a method or the check stopped by a query budget"),
            legacy=Counter(
                "regcheck_legacy_requests", "RSPAMC and SPAMC requests answered", ["protocol", "command", "code"]
            ),
        )
    return _instruments


class Metrics:
    """The worker's metrics; a no-op unless *enabled* and under `serve` (the variable is set)."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled and bool(os.environ.get(ENV))
        self._last: dict[str, int] = {}
        self._tally: Tally[tuple[str, str, str]] = Tally()  # (instrument, label 1, label 2) -> count
        # protocol -> the bucket counts, then the sum of the seconds (the list's last item)
        self._latency: dict[str, list[float]] = {}
        # (id(verdict), protocol) -> [verdict, the tally keys one check of it adds 1 to, checks not
        # yet added]: a check is one increment; the flush adds them up per key and lets the
        # verdicts go (`_fold`), so no verdict is held longer than a second
        self._checks: dict[tuple[int, str], list[Any]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._dns_source: Any = None  # where the DNS counters are read at the next flush
        if self.enabled:
            self._m = _make_instruments()

    def _soon(self) -> None:
        if self._timer is None:
            try:
                self._timer = asyncio.get_running_loop().call_later(FLUSH_SECONDS, self.flush)
            except RuntimeError:  # no loop (a test calling directly): hand over now
                self.flush()

    def request(self, path: str, status: int | str) -> None:
        if self.enabled:
            self._tally["requests", path, str(status)] += 1
            if self._timer is None:
                self._soon()

    def legacy(self, protocol: str, command: str, code: int) -> None:
        """Count a request of the legacy text protocols (`_legacy`), by its reply's sysexits code."""
        if self.enabled:
            self._tally["legacy", f"{protocol}\0{command}", str(code)] += 1
            self._soon()

    def check(self, verdict: Verdict, seconds: float, dns_source: Any, protocol: str = "http") -> None:
        """Count one check, asked in *protocol* (one of `PROTOCOLS`).  *dns_source* (a Checker:
        ``resolver``, ``result_hits``) is read at the next flush: its counters are cumulative, so
        reading them once a second loses nothing."""
        if not self.enabled:
            return
        self._dns_source = dns_source
        entry = self._checks.get((id(verdict), protocol))
        if entry is None:
            if len(self._checks) >= MAX_VERDICT_KEYS:
                self._fold()
                self._checks.clear()
            # holding the verdict keeps its id from being another's
            entry = self._checks[id(verdict), protocol] = [verdict, verdict_keys(verdict, protocol), 0]
        entry[2] += 1
        latency = self._latency.get(protocol)
        if latency is None:
            latency = self._latency[protocol] = [0.0] * (len(LATENCY_BUCKETS) + 2)
        latency[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        latency[-1] += seconds
        if self._timer is None:
            self._soon()

    def _fold(self) -> None:
        """Add the checks counted per verdict to the tally of each of their keys."""
        tally = self._tally
        for entry in self._checks.values():
            n = entry[2]
            if n:
                for key in entry[1]:
                    tally[key] += n
                entry[2] = 0

    def _dns_deltas(self) -> None:
        source, self._dns_source = self._dns_source, None
        if source is None:
            return
        for event, total in dns_counts(source.resolver, source.result_hits).items():
            delta = total - self._last.get(event, 0)
            if delta > 0:
                self._tally["dns", event, ""] += delta
                self._last[event] = total

    def flush(self) -> None:
        """Hand the sums over to prometheus_client (its files are what /metrics reads)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self.enabled:
            return
        self._dns_deltas()
        self._fold()
        self._checks.clear()
        m = self._m
        for (kind, a, b), n in self._tally.items():
            if kind == "requests":
                m["requests"].labels(a, b).inc(n)
            elif kind == "budget":
                m["budget"].inc(n)
            elif kind == "legacy":
                m["legacy"].labels(*a.split("\0"), b).inc(n)
            elif kind == "checks":
                m["checks"].labels(a, b).inc(n)
            else:
                m[kind].labels(a).inc(n)
        self._tally.clear()
        for protocol, latency in self._latency.items():
            _add_to_histogram(m["latency"].labels(protocol), [int(n) for n in latency[:-1]], latency[-1])
        self._latency.clear()

    def exposition(self) -> tuple[bytes, str]:
        """The text format of every worker's metrics added up."""
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest, multiprocess

        self.flush()
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST


def verdict_keys(verdict: Verdict, protocol: str) -> tuple[tuple[str, str, str], ...]:
    """The tally keys one check with *verdict* adds 1 to: its verdict, its symbols, a budget stop."""
    keys = [("checks", protocol, verdict.seed.action.value)]
    keys += [("symbols", hit.name, "") for hit in verdict.symbols]
    if any(hit.name == "REGCHECK_BUDGET" for hit in verdict.symbols):
        keys.append(("budget", "", ""))
    return tuple(keys)


def _add_to_histogram(histogram: Any, counts: list[int], total: float) -> None:
    """Add bucketed observations at once (prometheus_client has no bulk observe)."""
    buckets = getattr(histogram, "_buckets", None)
    total_value = getattr(histogram, "_sum", None)
    if buckets is not None and total_value is not None and len(buckets) == len(counts):
        for value, n in zip(buckets, counts, strict=True):
            if n:
                value.inc(n)
        total_value.inc(total)
        return
    # another prometheus_client layout: one observation per count, at each bucket's bound
    bounds = (*LATENCY_BUCKETS, LATENCY_BUCKETS[-1] * 2)
    for bound, n in zip(bounds, counts, strict=True):
        for _ in range(n):
            histogram.observe(bound)


def mark_dead(pid: int) -> None:
    """Tell prometheus_client a worker is gone (its live gauges stop counting)."""
    if os.environ.get(ENV):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)


def dns_counts(resolver: Any, result_hits: int = 0) -> dict[str, int]:
    """The resolver's cumulative DNS counters, by event name (and reused check results)."""
    stats = resolver.stats
    counts = {
        "question": stats.questions,
        "coalesced": stats.coalesced,
        "local": stats.local,
        "cache_hit": resolver.cache.hits,
        "cache_miss": resolver.cache.misses,
        "result_reused": result_hits,
    }
    for status, n in stats.failures.items():
        counts[status] = n
    counts.update(resolver.transport_counts())  # forged or stray replies, ICMP errors
    return counts
