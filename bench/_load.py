"""Load generation and latency sampling over keep-alive HTTP (asyncio, one process).

wrk gives the throughput ceilings (it is C); this module gives rates that are
held steady and every request's latency, for percentiles and plots.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


async def _connection(host: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(host, port)


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> int:
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    await reader.readexactly(length)
    return status


async def sequential(host: str, port: int, make: Callable[[int], bytes], n: int) -> list[float]:
    """*n* requests one after another on one connection; their latencies in seconds."""
    reader, writer = await _connection(host, port)
    out = []
    try:
        for i in range(n):
            t0 = time.perf_counter()
            status = await _exchange(reader, writer, make(i))
            out.append(time.perf_counter() - t0)
            if status != 200:
                raise RuntimeError(f"HTTP {status}")
    finally:
        writer.close()
    return out


async def paced(host: str, port: int, make: Callable[[int], bytes], rate: float, seconds: float,
                connections: int = 32) -> tuple[int, int]:
    """Send requests at *rate* per second for *seconds* over a pool of connections.

    Returns (answered, late): late counts requests that had no free connection when due.
    """
    pool: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
    for _ in range(connections):
        pool.put_nowait(await _connection(host, port))
    answered = late = 0
    tasks: set[asyncio.Task[None]] = set()

    async def one(i: int) -> None:
        nonlocal answered
        conn = await pool.get()
        try:
            if await _exchange(*conn, make(i)) == 200:
                answered += 1
        finally:
            pool.put_nowait(conn)

    start = time.perf_counter()
    i = 0
    while True:
        now = time.perf_counter() - start
        if now >= seconds:
            break
        due = int(now * rate)
        while i < due:
            if pool.empty():
                late += 1
            task = asyncio.ensure_future(one(i))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            i += 1
        await asyncio.sleep(0.001)
    if tasks:
        await asyncio.wait(tasks, timeout=10)
    while not pool.empty():
        pool.get_nowait()[1].close()
    return answered, late


async def pings(host: str, port: int, seconds: float, every: float = 0.005) -> list[float]:
    """GET /ping on one connection every *every* seconds; the latencies."""
    reader, writer = await _connection(host, port)
    out = []
    end = time.perf_counter() + seconds
    try:
        while time.perf_counter() < end:
            t0 = time.perf_counter()
            await _exchange(reader, writer, b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
            out.append(time.perf_counter() - t0)
            await asyncio.sleep(every)
    finally:
        writer.close()
    return out


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]
