"""Bounded load on loopback for the soak and fault tests: a steady rate that stops by itself."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import msgpack


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def open_fds(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


def udp_sockets(pid: int) -> int:
    """How many of *pid*'s open files are UDP sockets (the DNS client's pool, by design not flat)."""
    inodes = set()
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                inodes.add(line.split()[9])
    count = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            link = os.readlink(fd)
            count += link.startswith("socket:[") and link[8:-1] in inodes
    return count


async def _one(port: int, request: bytes, timeout: float) -> tuple[int, dict | None]:
    """One request on a new connection (so a restarted worker is reached); (status, reply) or (0, None)."""
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    (int(line[15:]) for line in head.split(b"\r\n") if line[:15].lower() == b"content-length:"), 0
                )
                body = await reader.readexactly(length)
            finally:
                writer.close()
    except (OSError, TimeoutError, asyncio.IncompleteReadError):
        return 0, None
    status = int(head.split(b" ", 2)[1])
    if status != 200:
        return status, None
    reply = msgpack.unpackb(body) if b"application/msgpack" in head else json.loads(body)
    return status, reply


async def steady(
    port: int,
    make: Callable[[int], bytes],
    rate: float,
    seconds: float,
    timeout: float = 5.0,
    on_tick: Callable[[float], None] | None = None,
) -> tuple[Counter[str], list[str]]:
    """Send *rate* requests a second for *seconds*; count outcomes by verdict (or failure kind)."""
    outcomes: Counter[str] = Counter()
    details: list[str] = []
    tasks: set[asyncio.Task[None]] = set()

    async def run(i: int) -> None:
        status, reply = await _one(port, make(i), timeout)
        if reply is None:
            outcomes["no answer" if status == 0 else f"HTTP {status}"] += 1
            return
        outcomes[reply["regcheck"]["verdict"]["action"]] += 1
        details.append(",".join(sorted(reply["symbols"])))

    start = time.monotonic()
    sent = 0
    while (elapsed := time.monotonic() - start) < seconds:
        while sent < int(elapsed * rate):
            task = asyncio.ensure_future(run(sent))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            sent += 1
        if on_tick is not None:
            on_tick(elapsed)
        await asyncio.sleep(0.005)
    if tasks:
        await asyncio.wait(tasks, timeout=timeout + 5)
    return outcomes, details
