"""A cheap lock-step client for line protocols that end a request and an answer with an empty line
(the Postfix policy protocol), used by bench/policy.py.

One driver process per connection (forked: no two connections share a GIL), a blocking socket or a
pair of blocking pipe fds, every request built before the clock starts.  Per request the driver
sends, reads until the answer ends in an empty line and checks that the answer holds the expected
bytes: the least a Python client can do, so that on one connection the driver's own cost, which
every server pays alike, stays small.  Each driver reports its own CPU time, so the report can put
it beside the servers'.
"""

from __future__ import annotations

import multiprocessing
import os
import socket
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event
from pathlib import Path

_CTX = multiprocessing.get_context("fork")  # the request lists reach the drivers without pickling
HANG = 120.0  # seconds without a word from a driver: its server hangs (the slowest timed run takes ~10 s)


@dataclass(frozen=True)
class Tcp:
    port: int


@dataclass(frozen=True)
class Unix:
    path: str


@dataclass(frozen=True)
class Pipes:
    """A server on the other side of two pipes (one process per connection, as Postfix's spawn(8) runs one)."""

    read_fd: int  # its stdout
    write_fd: int  # its stdin


Target = Tcp | Unix | Pipes


@dataclass(frozen=True)
class Result:
    rate: float  # requests/s over all connections, first start to last end
    driver_us: float  # the drivers' own CPU time per request, microseconds
    server_us: float  # the CPU time of the processes named to run() per request, microseconds
    requests: int


def cpu_ns(pids: Iterable[int]) -> int:
    """CPU time the processes *pids* have run, all their threads, in nanoseconds."""
    total = 0
    for pid in pids:
        for stat in Path(f"/proc/{pid}/task").glob("*/schedstat"):
            try:
                total += int(stat.read_text().split()[0])
            except (OSError, ValueError, IndexError):  # a thread that just ended
                pass
    return total


def pin(pids: Iterable[int], cpus: set[int]) -> None:
    """Set the CPU affinity of every thread of the processes *pids*."""
    for pid in pids:
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                os.sched_setaffinity(int(task.name), cpus)
            except ProcessLookupError:  # a thread that just ended
                pass


Send = Callable[[bytes], object]
Recv = Callable[[int], bytes]


def _idle_ticks() -> dict[int, int]:
    ticks = {}
    for line in Path("/proc/stat").read_text().splitlines():
        name, *fields = line.split()
        if name.startswith("cpu") and name != "cpu":
            ticks[int(name[3:])] = int(fields[3]) + int(fields[4])  # idle, iowait (proc(5))
    return ticks


def idlest_cpu(among: set[int], seconds: float = 0.2) -> int:
    """The CPU of *among* that was idle the longest over the last *seconds*: on a machine others
    share, a run pinned to a CPU that someone else keeps busy would measure them too."""
    before = _idle_ticks()
    time.sleep(seconds)
    after = _idle_ticks()
    return max(sorted(among), key=lambda cpu: after.get(cpu, 0) - before.get(cpu, 0))


def _open(target: Target) -> tuple[Send, Recv, socket.socket | None]:
    """The send and receive functions for *target* (bound methods, so the loop looks nothing up)."""
    if isinstance(target, Pipes):
        rfd, wfd = target.read_fd, target.write_fd

        def send(data: bytes) -> None:
            os.write(wfd, data)  # a request is far below PIPE_BUF: written whole

        return send, lambda size: os.read(rfd, size), None
    if isinstance(target, Unix):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(target.path)
    else:
        sock = socket.create_connection(("127.0.0.1", target.port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock.sendall, sock.recv, sock


def _exchange(send: Send, recv: Recv, requests: Sequence[bytes], expect: bytes) -> int:
    """Ask each request in turn; the number of answers read (each checked)."""
    answered = 0
    for request in requests:
        send(request)
        answer = recv(65536)
        while not answer.endswith(b"\n\n"):
            more = recv(65536)
            if not more:
                raise RuntimeError(f"the server closed the connection; answer so far {answer!r}")
            answer += more
        if expect not in answer:
            raise RuntimeError(f"unexpected answer {answer!r} to {request[:300]!r}")
        answered += answer.count(b"\n\n")
    return answered


def _driver(
    target: Target,
    untimed: Sequence[bytes],
    timed: Sequence[bytes],
    expect: bytes,
    cpus: set[int] | None,
    conn: Connection,
    start: Event,
) -> None:
    try:
        if cpus is not None:
            os.sched_setaffinity(0, cpus)
        send, recv, sock = _open(target)
        _exchange(send, recv, untimed, b"action=")
        conn.send("ready")
        start.wait()
        c0, t0 = time.process_time(), time.perf_counter()
        answered = _exchange(send, recv, timed, expect)
        t1, c1 = time.perf_counter(), time.process_time()
        conn.send((t0, t1, c1 - c0, answered))
        conn.recv()  # closing waits until the servers' CPU time is read
        if sock is not None:
            sock.close()
    except BaseException as exc:  # handed to the parent, which raises it
        conn.send(f"driver for {target}: {type(exc).__name__}: {exc}")
        raise SystemExit(1) from None


def run(
    targets: Sequence[Target],
    untimed: Sequence[Sequence[bytes]],
    timed: Sequence[Sequence[bytes]],
    expect: bytes,
    server_pids: Sequence[int],
    cpus: set[int] | None = None,
) -> Result:
    """One driver process per target, all at once: each first sends its *untimed* requests, then
    (all together) its *timed* ones, checking that every timed answer holds *expect*.

    *cpus*: the drivers' CPU affinity (None: the OS places them).  The servers' CPU time is read
    from *server_pids* between the moment every driver is ready and the moment every one is done.
    :raises RuntimeError: naming the first driver that failed.
    """
    start = _CTX.Event()
    pairs = [_CTX.Pipe() for _ in targets]
    procs = [
        _CTX.Process(target=_driver, args=(t, u, w, expect, cpus, child, start), daemon=True)
        for t, u, w, (_, child) in zip(targets, untimed, timed, pairs, strict=True)
    ]
    for p, (_, child) in zip(procs, pairs, strict=True):
        p.start()
        child.close()  # the driver's end: a driver that dies unheard is an EOFError here, not a hang
    try:
        mine = [parent for parent, _ in pairs]

        def each() -> list[object]:
            got = []
            for c in mine:
                if not c.poll(HANG):
                    raise RuntimeError(f"a driver heard nothing for {HANG} s: the server hangs")
                got.append(c.recv())
            for g in got:
                if isinstance(g, str) and g != "ready":
                    raise RuntimeError(g)
            return got

        each()
        before = cpu_ns(server_pids)
        start.set()
        done = [d for d in each() if isinstance(d, tuple)]
        server = cpu_ns(server_pids) - before
        for c in mine:
            c.send("close")
    finally:
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.kill()
                p.join()
    n = sum(d[3] for d in done)  # answers read, one per request sent unless a server answered twice
    if n != sum(len(w) for w in timed):
        raise RuntimeError(f"{n} answers read for {sum(len(w) for w in timed)} requests")
    t0 = min(d[0] for d in done)
    t1 = max(d[1] for d in done)
    driver = sum(d[2] for d in done)
    return Result(n / (t1 - t0), driver * 1e6 / n, server / 1000 / n, n)
