"""SPF checks/s through our driver (pyspf + our DNS layer, no threads) vs stock pyspf.

    .venv/bin/python bench/spf_driver.py [DOMAINS] [C] [RUNS]

Zone as in shared/docs/peer-perf.md: sender domain dN has A, MX -> mx.dN,
mx.dN A 192.0.2.10, and one of three SPF records (2-4 counted lookups, 4-6
questions); the client 192.0.2.10 passes via ``mx``.  Rows:

- ours cold: every check a new domain, C checks in flight on one event loop;
- ours warm: the same domains again, every answer in our cache;
- pyspf check2 cold / warm: stock pyspf on one thread, dnspython's resolver
  (cold: no cache; warm: dnspython's LRUCache, filled by a first pass).

Under the rates, ours cold and warm again as the process's CPU time per
check (``time.process_time``: our DNS client and pyspf; knot is another
process), which moves less with the load of a shared machine than a rate.
"""

from __future__ import annotations

import asyncio
import ipaddress
import statistics
import sys
import time
import warnings

sys.path.insert(0, __file__.rsplit("/", 1)[0])
import dns.resolver
import spf
import uvloop
from _knot import knot

from rspamd_regcheck import Budget, Cache, Resolver, Session, Transport
from rspamd_regcheck._spf import check_host

ORIGIN = "spf.bench.test"
CLIENT = ipaddress.ip_address("192.0.2.10")
SHAPES = [
    "v=spf1 include:_spf.{o} mx -all",
    "v=spf1 include:_spf.{o} a mx -all",
    "v=spf1 include:_spf.{o} include:_spf2.{o} a mx -all",
]


def zone(n: int) -> str:
    out = [
        f"$ORIGIN {ORIGIN}.",
        "$TTL 3600",
        "@ IN SOA ns1 hostmaster 1 3600 600 86400 300",
        "@ IN NS ns1",
        "ns1 IN A 127.0.0.1",
        '_spf IN TXT "v=spf1 ip4:198.51.100.0/24 -all"',
        '_spf2 IN TXT "v=spf1 ip6:2001:db8:ff::/48 -all"',
    ]
    for i in range(n):
        d = f"d{i:05d}"
        out += [
            f"{d} IN A 192.0.2.1",
            f"{d} IN MX 10 mx.{d}",
            f"mx.{d} IN A 192.0.2.10",
            f'{d} IN TXT "{SHAPES[i % 3].format(o=ORIGIN)}"',
        ]
    return "\n".join(out) + "\n"


async def ours(port: int, domains: list[str], c: int) -> tuple[float, float, float, float]:
    """Checks/s cold and warm, then CPU microseconds per check cold and warm."""
    resolver = Resolver(Transport([("127.0.0.1", port)], timeout=2.0), Cache(200_000))
    sem = asyncio.Semaphore(c)

    async def one(domain: str) -> None:
        async with sem:
            session = Session(resolver, cap=100)
            ev = await check_host(session, Budget(30), CLIENT, f"user@{domain}", f"mx.{domain}")
            if ev.result != "pass":
                raise RuntimeError(f"{domain}: {ev.result} {ev.explanation}")

    try:
        t0, c0 = time.perf_counter(), time.process_time()
        await asyncio.gather(*(one(d) for d in domains))
        cold, cold_cpu = len(domains) / (time.perf_counter() - t0), time.process_time() - c0
        t0, c0 = time.perf_counter(), time.process_time()
        await asyncio.gather(*(one(d) for d in domains))
        warm, warm_cpu = len(domains) / (time.perf_counter() - t0), time.process_time() - c0
        return cold, warm, cold_cpu / len(domains) * 1e6, warm_cpu / len(domains) * 1e6
    finally:
        resolver.close()


def stock(port: int, domains: list[str]) -> tuple[float, float]:
    saved = spf.DNSLookup
    spf.DNSLookup = spf.DNSLookup_dnspython
    r = dns.resolver.Resolver(configure=False)
    r.nameservers = ["127.0.0.1"]
    r.port = port
    dns.resolver.default_resolver = r
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            t0 = time.perf_counter()
            for d in domains:
                assert spf.check2(str(CLIENT), f"user@{d}", f"mx.{d}")[0] == "pass"
            cold = len(domains) / (time.perf_counter() - t0)
            r.cache = dns.resolver.LRUCache(200_000)
            for d in domains:
                spf.check2(str(CLIENT), f"user@{d}", f"mx.{d}")
            t0 = time.perf_counter()
            for d in domains:
                spf.check2(str(CLIENT), f"user@{d}", f"mx.{d}")
            warm = len(domains) / (time.perf_counter() - t0)
        return cold, warm
    finally:
        spf.DNSLookup = saved


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 3000
    c = int(sys.argv[2]) if len(sys.argv) > 2 else 50
    runs = int(sys.argv[3]) if len(sys.argv) > 3 else 3
    with knot({ORIGIN: zone(n * runs)}) as (_, port, _):
        rows: dict[str, list[float]] = {k: [] for k in ("ours cold", "ours warm", "pyspf cold", "pyspf warm")}
        cpu: dict[str, list[float]] = {"ours cold": [], "ours warm": []}
        for run in range(runs):
            domains = [f"d{i:05d}.{ORIGIN}" for i in range(run * n, (run + 1) * n)]
            cold, warm, cold_cpu, warm_cpu = uvloop.run(ours(port, domains, c))
            rows["ours cold"].append(cold)
            rows["ours warm"].append(warm)
            cpu["ours cold"].append(cold_cpu)
            cpu["ours warm"].append(warm_cpu)
            fresh = [f"d{i:05d}.{ORIGIN}" for i in range(run * n, run * n + n // 3)]
            pcold, pwarm = stock(port, fresh)
            rows["pyspf cold"].append(pcold)
            rows["pyspf warm"].append(pwarm)
        print(f"domains/run={n} C={c} runs={runs} (pyspf on a third of the domains, one thread)")
        for label, values in rows.items():
            v = sorted(values)
            print(f"{label:12} checks/s min / median / max: {v[0]:8.0f} / {statistics.median(v):8.0f} / {v[-1]:8.0f}")
        for label, values in cpu.items():
            v = sorted(values)
            print(
                f"{label:12} CPU us/check min / median / max: {v[0]:6.0f} / {statistics.median(v):6.0f} / {v[-1]:6.0f}"
            )


if __name__ == "__main__":
    main()
