"""Async DNS clients side by side against one knot: which one the worker should use.

    .venv/bin/python bench/dns_clients.py [N] [C] [RUNS] [asyncio|uvloop]

N TXT questions, each for a name of its own, at most C in flight, after a
warm-up of 100; every question answered by the server (c-ares keeps a cache
of its own: a name asked twice would be answered from it).  Prints
queries/s and CPU microseconds per query (process time / N) for each client,
min / median / max over RUNS.  aiodns is measured only when installed
(pip install aiodns): it is a comparison, not a dependency.
"""

from __future__ import annotations

import asyncio
import importlib.util
import statistics
import sys
import time

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _knot import knot

from rspamd_regcheck._transport import Transport
from rspamd_regcheck._wire import RType

ORIGIN = "reg.bench.test"
WARM_UP = 100


def name(i: int) -> str:
    return f"h{i:06d}.{ORIGIN}"


def zone(count: int) -> str:
    head = (
        f"$ORIGIN {ORIGIN}.\n$TTL 300\n@ IN SOA ns1 hostmaster 1 3600 600 86400 300\n@ IN NS ns1\nns1 IN A 127.0.0.1\n"
    )
    return head + "".join(
        f'h{i:06d} IN TXT "v=reg1 svc=S1:A,M2:A,H1:B ip4=192.0.2.{i % 256}/32"\n' for i in range(count)
    )


async def drive(ask, n: int, c: int) -> tuple[float, float]:
    sem = asyncio.Semaphore(c)
    errors = 0

    async def one(i: int) -> None:
        nonlocal errors
        async with sem:
            if not await ask(name(i)):
                errors += 1

    for i in range(WARM_UP):
        await one(i)
    cpu0, t0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(WARM_UP, WARM_UP + n)))
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    if errors:
        raise RuntimeError(f"{errors} failed questions")
    return n / wall, cpu / n * 1e6


async def ours(port: int, n: int, c: int) -> tuple[float, float]:
    t = Transport([("127.0.0.1", port)], timeout=2.0, recursion=False)

    async def ask(name: str) -> bool:
        return bool((await t.ask(name, RType.TXT)).records)

    try:
        return await drive(ask, n, c)
    finally:
        t.close()


async def dnspython(port: int, n: int, c: int) -> tuple[float, float]:
    import dns.asyncresolver

    r = dns.asyncresolver.Resolver(configure=False)
    r.nameservers = ["127.0.0.1"]
    r.port = port

    async def ask(name: str) -> bool:
        return bool((await r.resolve(name + ".", "TXT")).rrset)

    return await drive(ask, n, c)


async def aiodns_client(port: int, n: int, c: int) -> tuple[float, float]:
    import aiodns

    r = aiodns.DNSResolver(nameservers=["127.0.0.1"], udp_port=port, tcp_port=port, timeout=2, tries=1)

    async def ask(name: str) -> bool:
        return bool((await r.query_dns(name, "TXT")).answer)

    return await drive(ask, n, c)


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
    c = int(sys.argv[2]) if len(sys.argv) > 2 else 100
    runs = int(sys.argv[3]) if len(sys.argv) > 3 else 3
    loop = sys.argv[4] if len(sys.argv) > 4 else "asyncio"
    run = asyncio.run
    if loop == "uvloop":
        import uvloop

        run = uvloop.run
    clients = {"regcheck Transport": ours, "dnspython asyncresolver": dnspython}
    if importlib.util.find_spec("aiodns") is not None:
        clients["aiodns (c-ares)"] = aiodns_client
    else:
        print("aiodns not installed: skipped")
    with knot({ORIGIN: zone(WARM_UP + n)}) as (_, port, _):
        print(f"N={n} C={c} runs={runs} loop={loop}, knot on 127.0.0.1:{port}")
        print(f"{'client':26} {'qps min/median/max':>26} {'CPU us/query (median)':>22}")
        for label, fn in clients.items():
            rows = [run(fn(port, n, c)) for _ in range(runs)]
            qps = sorted(r[0] for r in rows)
            cpu = statistics.median(r[1] for r in rows)
            print(f"{label:26} {qps[0]:8.0f} / {statistics.median(qps):6.0f} / {qps[-1]:6.0f} {cpu:22.0f}")


if __name__ == "__main__":
    main()
