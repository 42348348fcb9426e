"""The worker alone at the rate mail arrives: CPU per cold QR1 check, and latency one at a time.

    .venv/bin/python bench/worker_rate.py                     # 500/s and 1000/s, 3 rounds (~1 minute)
    .venv/bin/python bench/worker_rate.py --rate 500 --scans 2500 --rounds 1 --hold 20   # to profile

`rspamd_cost.py` measures what the plugin costs a whole rspamd scan; this
script leaves rspamd out and measures the worker's share of a cold scan only,
quickly enough to try a change and measure it again.  One knot serves the
benchmark's registry (bench/run.py: 100,000 IDs, QR1, SPF and a DNSBL); one
worker (`rspamd-regcheck serve`, the check log on as by default) answers
from it.  The client sends what the plugin sends (``POST /checkv2`` with the
envelope headers, ``Accept: application/msgpack``, ``Regcheck-Reply: slim``
and the message's header block) on kept-alive connections, as rspamd's
``keepalive = true`` does: a request goes on an idle connection, or on a
new one when all are busy.

Each block sends scans at a fixed rate, every one for an ID (host, sender
domain and client address) never asked before: a cold QR1 check, two DNS
questions (the registry's TXT and the DNSBL's A).  The worker's CPU per
check is read from /proc/PID/task/*/schedstat of the worker and its
supervisor, before and after the block.  After each block, checks sent one
at a time give the p50 latency, beside the same client against a bare
server that reads the request and writes a fixed slim reply (the floor of
any worker over HTTP) and beside one bare DNS round trip to knot.  A
quarter block at the same rate against the bare server gives its CPU per
request: what one wake-up of a Python (uvloop) server costs at that rate,
on this machine, with nothing done.

``--against DIR`` starts a second worker from another checkout (say
``git worktree add /tmp/base HEAD~3``) beside this one and takes their
blocks in turns, so both see the same machine; it prints the ratio of
each round's figures, which moves far less than either figure alone.

``--hold S`` keeps sending at the first rate for S seconds more after the
blocks, printing the worker's pid first: attach a profiler then
(``py-spy record --rate 1000 --pid PID``, ``perf record -g -p PID``).
Nothing is written: the script prints its figures (bench/README.md).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import rspamd_cost as cost  # noqa: E402
import run as bench  # noqa: E402
from _knot import knot  # noqa: E402

HEADER_BLOCK = cost.MESSAGE.split(b"\r\n\r\n")[0] + b"\r\n\r\n"  # what the plugin sends of the message


def request(i: int) -> bytes:
    """ID *i*'s scan as the plugin sends it (rspamd's HTTP client: HTTP/1.1, kept alive)."""
    return (
        f"POST /checkv2 HTTP/1.1\r\nConnection: keep-alive\r\nContent-Length: {len(HEADER_BLOCK)}\r\n"
        f"Accept: application/msgpack\r\nIP: {bench.ip_of(i)}\r\nHelo: mx.id{i}.test\r\n"
        f"From: user@id{i}.test\r\nRcpt: rcpt@receiver.test\r\nHostname: mx.id{i}.test\r\n"
        f"Queue-Id: Q{i}\r\nRegcheck-Reply: slim\r\nHost: 127.0.0.1\r\nContent-Type: text/plain\r\n\r\n"
    ).encode() + HEADER_BLOCK


class Conn(asyncio.Protocol):
    """One kept-alive client connection: one request at a time, its reply read by Content-Length."""

    def __init__(self, pool: Pool):
        self.pool = pool
        self.buf = b""
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[float] | None = None
        self.sent = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def send(self, data: bytes) -> asyncio.Future[float]:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.sent = time.perf_counter()
        self.transport.write(data)
        return self.waiter

    def data_received(self, data: bytes) -> None:
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return
        head = self.buf[:end].lower()
        at = head.find(b"content-length:")
        stop = head.find(b"\r\n", at)
        length = int(head[at + 15 : stop if stop >= 0 else len(head)]) if at >= 0 else 0
        if len(self.buf) < end + 4 + length:
            return
        status = self.buf[9:12]
        self.buf = self.buf[end + 4 + length :]
        waiter, self.waiter = self.waiter, None
        if waiter is None or waiter.done():
            return
        if status != b"200":
            waiter.set_exception(RuntimeError(f"the server answered {status!r}"))
        else:
            waiter.set_result(time.perf_counter() - self.sent)
        self.pool.idle.append(self)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(RuntimeError(f"connection lost: {exc}"))
        if self in self.pool.idle:
            self.pool.idle.remove(self)


class Pool:
    """Kept-alive connections to one server, opened as needed."""

    def __init__(self, port: int):
        self.port = port
        self.idle: deque[Conn] = deque()

    async def scan(self, data: bytes) -> float:
        if self.idle:
            conn = self.idle.pop()  # the most recently used, as rspamd's keep-alive pool does
        else:
            _, conn = await asyncio.get_running_loop().create_connection(lambda: Conn(self), "127.0.0.1", self.port)
        return await conn.send(data)

    def close(self) -> None:
        for conn in self.idle:
            if conn.transport is not None:
                conn.transport.close()
        self.idle.clear()


async def paced(pool: Pool, ids: list[int], rate: float) -> list[float]:
    """A scan of each of *ids* started at *rate* per second; their latencies."""
    tasks = []
    start = time.perf_counter()
    for n, i in enumerate(ids):
        delay = start + n / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(pool.scan(request(i))))
    return list(await asyncio.gather(*tasks))


async def alone(pool: Pool, ids: list[int]) -> list[float]:
    return [await pool.scan(request(i)) for i in ids]


class Fresh:
    """IDs never asked before: the even ones (netblocks, a QR1 check)."""

    def __init__(self, first: int, last: int):
        self.next, self.last = first, last

    def take(self, n: int) -> list[int]:
        ids = list(range(self.next, self.next + 2 * n, 2))
        self.next += 2 * n
        if self.next > self.last:
            raise SystemExit("out of fresh IDs: fewer --scans or --rounds")
        return ids


async def block(
    pool: Pool, floor: Pool, pids: list[int], bare_pid: int, fresh: Fresh, rate: float, scans: int, one: int
) -> Row:
    """One block at *rate*, then *one* checks one at a time; the bare server's share of both."""
    ids = fresh.take(scans)
    c0 = cost.cpu_ns(pids)
    lat = await paced(pool, ids, rate)
    us = (cost.cpu_ns(pids) - c0) / len(ids) / 1000
    alone_ms = statistics.median(await alone(pool, fresh.take(one))) * 1000
    b0 = cost.cpu_ns([bare_pid])
    await paced(floor, list(range(scans // 4)), rate)  # a quarter block: its CPU per request moves little
    bare_us = (cost.cpu_ns([bare_pid]) - b0) / (scans // 4) / 1000
    bare_ms = statistics.median(await alone(floor, list(range(one)))) * 1000
    return Row(us, statistics.median(lat) * 1000, alone_ms, bare_ms, bare_us)


@dataclass
class Row:
    cpu_us: float  # worker CPU per check at the rate
    p50_ms: float  # at the rate
    alone_ms: float  # p50 one at a time
    bare_ms: float  # the bare server's, one at a time
    bare_us: float  # the bare server's CPU per request at the rate


def start_worker(work: Path, name: str, kport: int, dns: list[str], tree: Path | None) -> bench.Worker:
    """`serve` from this checkout, or from *tree* (another checkout: its package comes first on the path)."""
    here = Path.cwd()
    if tree is not None:
        os.chdir(tree)  # `python -m rspamd_regcheck` imports the package of the directory it starts in
    try:
        return bench.Worker(work, name, kport, dns_extra="\n".join(dns))
    finally:
        os.chdir(here)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rate", type=float, action="append", help="checks/s (repeat; default 500 and 1000)")
    p.add_argument("--scans", type=int, default=2000, help="checks per block")
    p.add_argument("--rounds", type=int, default=3, help="blocks per rate")
    p.add_argument("--alone", type=int, default=200, help="checks sent one at a time after each block")
    p.add_argument("--hold", type=float, default=0.0, help="seconds more at the first rate, for a profiler")
    p.add_argument(
        "--dns",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a line added to the worker's [dns] table (repeat), e.g. rotate_every=1000000",
    )
    p.add_argument(
        "--against",
        type=Path,
        metavar="DIR",
        help="another checkout (git worktree or archive): its worker beside this one, blocks taken in turns",
    )
    args = p.parse_args()
    rates = args.rate or [500.0, 1000.0]
    import uvloop

    sizes = bench.SIZES["default"]
    work = Path(tempfile.mkdtemp(prefix="regcheck-rate-"))
    fresh = Fresh(1000, sizes.ids - 2)
    trees: list[Path | None] = [None] if args.against is None else [None, args.against.resolve()]
    names = ["this checkout"] + ([str(args.against)] if args.against is not None else [])
    with knot(bench.zones(sizes)) as (_, kport, _):
        workers = []
        bare_port = bench.free_port()
        bare = subprocess.Popen([sys.executable, str(HERE / "_bare.py"), str(bare_port), "none"])
        try:
            for n, tree in enumerate(trees):
                workers.append(start_worker(work, f"worker{n}", kport, args.dns, tree))
            bench.wait_port(bare_port, bare, 30)  # the bare server answers any request: /ping too
            pids = [bench.descendants(w.proc.pid) for w in workers]
            rtt = cost.dns_rtt(kport) * 1000
            print(f"worker pids {pids[0]}; one DNS round trip (p50) {rtt:.3f} ms", flush=True)

            async def session() -> None:
                pools, floor = [Pool(w.port) for w in workers], Pool(bare_port)
                for pool in pools:
                    await alone(pool, fresh.take(50))  # connections and the worker's first-use costs
                await alone(floor, list(range(50)))
                table: dict[tuple[int, float], list[Row]] = {}
                for rate in rates:
                    for r in range(args.rounds):
                        order = list(range(len(pools)))
                        if r % 2:
                            order.reverse()  # neither worker always goes first
                        for w in order:
                            row = await block(pools[w], floor, pids[w], bare.pid, fresh, rate, args.scans, args.alone)
                            table.setdefault((w, rate), []).append(row)
                            print(
                                f"{names[w]}: {rate:.0f}/s round {r + 1}: worker {row.cpu_us:.0f} us CPU per "
                                f"check, p50 at the rate {row.p50_ms:.3f} ms; one at a time p50 "
                                f"{row.alone_ms:.3f} ms (bare server {row.bare_ms:.3f} ms, {row.bare_us:.0f} us CPU)",
                                flush=True,
                            )
                print(
                    "\n| worker | rate | worker CPU per cold check | p50 at the rate | p50 one at a time | "
                    "bare server, one at a time | bare server CPU per request |\n|---|---|---|---|---|---|---|"
                )
                for (w, rate), rows in table.items():
                    med = [statistics.median(getattr(x, f) for x in rows) for f in Row.__dataclass_fields__]
                    print(
                        f"| {names[w]} | {rate:.0f}/s | {med[0]:.0f} us | {med[1]:.3f} ms | {med[2]:.3f} ms | "
                        f"{med[3]:.3f} ms | {med[4]:.0f} us |"
                    )
                if len(pools) > 1:
                    for rate in rates:
                        cpu = [a.cpu_us / b.cpu_us for a, b in zip(table[(0, rate)], table[(1, rate)], strict=True)]
                        one = [a.alone_ms / b.alone_ms for a, b in zip(table[(0, rate)], table[(1, rate)], strict=True)]
                        print(
                            f"\n{rate:.0f}/s, this checkout / {names[1]}, median of the rounds' ratios: CPU per check "
                            f"{statistics.median(cpu):.3f}, p50 one at a time {statistics.median(one):.3f}"
                        )
                print(
                    f"\none DNS round trip to knot (p50): {rtt:.3f} ms; medians of {args.rounds} rounds of "
                    f"{args.scans} checks",
                    flush=True,
                )
                if args.hold > 0:
                    print(f"holding {rates[0]:.0f}/s for {args.hold:.0f} s; worker pids {pids[0]}", flush=True)
                    ids = fresh.take(int(args.hold * rates[0]))
                    c0 = cost.cpu_ns(pids[0])
                    await paced(pools[0], ids, rates[0])
                    print(f"held: worker {(cost.cpu_ns(pids[0]) - c0) / len(ids) / 1000:.0f} us CPU per check")
                for pool in pools:
                    pool.close()
                floor.close()

            uvloop.run(session())
        finally:
            for w in workers:
                w.stop()
            bare.send_signal(signal.SIGTERM)
            bare.wait(10)
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
