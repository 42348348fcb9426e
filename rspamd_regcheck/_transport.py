"""An asyncio DNS stub client: UDP on one connected socket per server, TCP on truncation.

Why not dnspython's or c-ares' client: dnspython's async resolver spends
about 0.35 ms of CPU per question and opens a socket per query; aiodns
(c-ares) is fast but keeps its own unbounded query cache that cannot be
turned off from Python, which would defeat our bounded cache and the query
counts of the budgets.  This client builds and reads messages with
`_wire` and answers `DnsAnswer` facts; measurements are in ``bench/``.

The common case costs no task, coroutine or timer of its own: `start`
sends the question and returns; the reply callback reads it and calls the
caller back.  Timeouts are kept in buckets of a few milliseconds, swept by
one timer per transport.  Only the rare paths (opening a socket, TCP after
truncation) run as tasks.

Safety: a reply is accepted only from the server asked (connected socket),
with the query's random ID, and with the same question (name, type, class);
anything else is dropped and the question keeps waiting.  A malformed reply
to a pending question ends that try as an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import os
import secrets
import socket
import struct
from collections.abc import Callable, Sequence
from typing import Any, cast

from ._answer import DnsAnswer, DnsStatus, answer_from_reply
from ._types import hostport
from ._wire import MalformedReply, Rcode, Reply, RType, build_query, parse_reply

log = logging.getLogger("rspamd_regcheck.dns")

EDNS_PAYLOAD = 1232  # bytes; the DNS flag day 2020 value, avoids IP fragmentation
MAX_TCP_REPLY = 65535

Done = Callable[[Any, DnsAnswer], None]  # called once with (token, answer)


def _edns_opt() -> bytes:
    # RFC 6891 6.1.2: root owner, type OPT (41), class = UDP payload size, TTL 0, no options
    return b"\x00" + struct.pack("!HHIH", 41, EDNS_PAYLOAD, 0, 0)


_OPT = _edns_opt()
_TIMEOUT = DnsAnswer(DnsStatus.TIMEOUT, detail="timeout")
_CLOSED = DnsAnswer(DnsStatus.ERROR, detail="DNS client closed")


class _Ids:
    """Random 16-bit query IDs from the OS's CSPRNG, read 4 KiB at a time (not one syscall per ID).

    A forked child starts with an empty buffer: no two processes send the same IDs.
    """

    def __init__(self) -> None:
        self._buf = b""
        self._pos = 0
        os.register_at_fork(after_in_child=self._forget)

    def _forget(self) -> None:
        self._buf, self._pos = b"", 0

    def next(self) -> int:
        pos = self._pos
        if pos >= len(self._buf):
            self._buf, pos = os.urandom(4096), 0
        self._pos = pos + 2
        return (self._buf[pos] << 8) | self._buf[pos + 1]


_IDS = _Ids()


class _Question:
    """One question on its way: which try it is on, and where it waits."""

    __slots__ = (
        "asked",
        "attempt",
        "base",
        "bucket",
        "deadline",
        "done",
        "edns",
        "finished",
        "first",
        "last",
        "name",
        "qid",
        "rtype",
        "server",
        "token",
    )

    def __init__(self, name: str, rtype: int, base: bytes, done: Done, token: Any, deadline: float, first: int):
        self.name = name
        self.rtype = rtype
        self.base = base
        self.done = done
        self.token = token
        self.deadline = deadline
        self.first = first  # the index of the server asked first
        self.attempt = 0
        self.edns = True
        self.server: _Server | None = None
        self.qid = -1  # >= 0 while waiting for a UDP reply
        self.bucket = 0
        self.last = _TIMEOUT
        self.finished = False
        # The question as sent, to save decoding its echo; not for a name with a backslash,
        # which reads back escaped (as dnspython writes it).
        self.asked = (base[12:], name) if "\\" not in name else None


class _Endpoint(asyncio.DatagramProtocol):
    """The protocol of one socket; forwards to its server only while it is that server's socket."""

    def __init__(self, server: _Server):
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: object) -> None:
        self.server.owner._reply(self.server, data)

    def error_received(self, exc: Exception) -> None:
        if self.server.endpoint is self:
            detail = f"{hostport(self.server.host, self.server.port)}: {getattr(exc, 'strerror', None) or exc}"
            self.server.fail_pending(detail)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.server.endpoint is self:
            self.server.endpoint = None
            self.server.transport = None
            self.server.fail_pending("socket closed")


class _Server:
    """A connected UDP socket to one server, with its questions in flight."""

    def __init__(self, host: str, port: int, index: int, owner: Transport):
        self.host = host
        self.port = port
        self.index = index
        self.owner = owner
        self.transport: asyncio.DatagramTransport | None = None
        self.endpoint: _Endpoint | None = None
        self.pending: dict[int, _Question] = {}
        self.lock = asyncio.Lock()

    def reset(self) -> None:
        """Forget sockets and questions of an event loop that is gone."""
        self.transport = self.endpoint = None
        self.pending = {}
        self.lock = asyncio.Lock()

    async def open(self) -> None:
        async with self.lock:
            if self.transport is None or self.transport.is_closing():
                loop = asyncio.get_running_loop()
                family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
                endpoint = _Endpoint(self)
                await loop.create_datagram_endpoint(lambda: endpoint, remote_addr=(self.host, self.port), family=family)
                self.endpoint, self.transport = endpoint, endpoint.transport

    def new_id(self) -> int:
        while True:
            qid = _IDS.next()
            if qid not in self.pending:
                return qid

    def fail_pending(self, detail: str) -> None:
        """Every question waiting here has failed this try (an ICMP error, a closed socket)."""
        waiting = list(self.pending.values())
        self.pending.clear()
        answer = DnsAnswer(DnsStatus.ERROR, detail=detail)
        for q in waiting:
            self.owner._unwait(q)
            self.owner._try_failed(q, answer)

    def close(self) -> None:
        if self.transport is not None:
            with contextlib.suppress(RuntimeError):  # its event loop is closed already: nothing to do there
                self.transport.close()


class Transport:
    """Asks one set of servers, in turn, within a per-question timeout.

    A question gets *tries* tries of ``timeout / tries`` seconds each, on the
    servers in turn, and ends within *timeout* seconds (TCP included).
    """

    def __init__(
        self,
        servers: Sequence[tuple[str, int]],
        timeout: float = 2.0,
        tries: int = 2,
        recursion: bool = True,
    ):
        if not servers:
            raise ValueError("no DNS server to ask")
        self._servers = [_Server(host, port, i, self) for i, (host, port) in enumerate(servers)]
        self._timeout = timeout
        self.timeout = timeout  # the longest a question takes (UDP tries and TCP together)
        self._tries = max(1, tries)
        self._per_try = timeout / self._tries
        # Timeouts fire up to this late: one timer sweeps a bucket of them at a time.
        self._grain = max(0.001, min(0.02, self._per_try / 20))
        self._recursion = recursion
        self._next = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._buckets: dict[int, set[_Question]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._timer_bucket = math.inf
        self._tasks: set[asyncio.Task[None]] = set()
        self._held: set[_Question] = set()  # questions a task holds (TCP, opening a socket)
        self._closed = False
        self.sent = 0  # UDP questions sent, retries included
        self.tcp = 0  # questions re-asked over TCP

    async def ask(self, name: str, rtype: RType) -> DnsAnswer:
        """Ask for *rtype* at *name* (lower case, no trailing dot)."""
        fut: asyncio.Future[DnsAnswer] = asyncio.get_running_loop().create_future()
        self.start(name, rtype, _resolve, fut)
        return await fut

    def start(self, name: str, rtype: int, done: Done, token: Any) -> None:
        """Send the question; ``done(token, answer)`` is called once when it ends (maybe before this returns)."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # first use, or a new event loop (asyncio.run again)
            self._adopt(loop)
        if self._closed:
            done(token, _CLOSED)
            return
        try:
            base = build_query(0, name, rtype, self._recursion)
        except (ValueError, UnicodeEncodeError) as exc:
            done(token, DnsAnswer(DnsStatus.ERROR, detail=f"cannot ask for {name!r}: {exc}"))
            return
        q = _Question(name, rtype, base, done, token, loop.time() + self._timeout, self._next)
        self._send(q, self._servers[q.first % len(self._servers)], self._per_try)

    # -- trying --------------------------------------------------------------------------------

    def _send(self, q: _Question, server: _Server, wait: float) -> None:
        if self._closed:
            self._finish(q, _CLOSED)
            return
        loop = cast(asyncio.AbstractEventLoop, self._loop)
        now = loop.time()
        wait = min(wait, q.deadline - now)
        if wait <= 0:
            self._finish(q, q.last)
            return
        transport = server.transport
        if transport is None or transport.is_closing():
            self._spawn(q, self._open_then_send(q, server))
            return
        qid = server.new_id()
        query = struct.pack("!H", qid) + q.base[2:]
        if q.edns:
            query = query[:10] + b"\x00\x01" + query[12:] + _OPT  # ARCOUNT 1, then the OPT record
        server.pending[qid] = q
        q.server, q.qid = server, qid
        bucket = math.ceil((now + wait) / self._grain)
        q.bucket = bucket
        waiting = self._buckets.get(bucket)
        if waiting is None:
            waiting = self._buckets[bucket] = set()
        waiting.add(q)
        if bucket < self._timer_bucket:
            self._arm(bucket)
        transport.sendto(query)
        self.sent += 1

    async def _open_then_send(self, q: _Question, server: _Server) -> None:
        try:
            await server.open()
        except OSError as exc:
            failed: DnsAnswer | None = DnsAnswer(
                DnsStatus.ERROR, detail=f"{hostport(server.host, server.port)}: {exc.strerror or exc}"
            )
        else:
            failed = None
        finally:
            self._held.discard(q)
        if self._closed:  # closed while the socket opened: it must not stay open
            server.close()
        if q.finished:  # closed meanwhile
            return
        if failed is not None:
            self._try_failed(q, failed)
        else:
            self._send(q, server, self._per_try)

    def _reply(self, server: _Server, data: bytes) -> None:
        if len(data) < 2:
            return
        q = server.pending.get((data[0] << 8) | data[1])
        if q is None:
            return
        try:
            reply = parse_reply(data, q.asked)
        except MalformedReply as exc:
            del server.pending[q.qid]
            self._unwait(q)
            self._try_failed(q, DnsAnswer(DnsStatus.ERROR, detail=f"malformed reply: {exc}"))
            return
        if reply.qname != q.name or reply.qtype != q.rtype or reply.qclass != 1:
            return  # not the answer to our question: keep waiting
        del server.pending[q.qid]
        self._unwait(q)
        if reply.rcode == Rcode.FORMERR and q.edns:
            q.edns = False  # an old server that does not speak EDNS (RFC 6891 7): the rest of the time, no EDNS
            self._send(q, server, math.inf)
            return
        if reply.truncated:
            self.tcp += 1
            self._spawn(q, self._tcp_then(q, server))
            return
        self._next = server.index
        self._finish(q, answer_from_reply(reply, q.name, q.rtype))

    async def _tcp_then(self, q: _Question, server: _Server) -> None:
        loop = cast(asyncio.AbstractEventLoop, self._loop)
        try:
            if q.finished:
                return
            result = await self._tcp(server, q.base, q.name, q.rtype, q.deadline - loop.time())
        finally:
            self._held.discard(q)
        if q.finished:  # closed meanwhile
            return
        if isinstance(result, DnsAnswer):
            self._try_failed(q, result)
        else:
            self._next = server.index
            self._finish(q, answer_from_reply(result, q.name, q.rtype))

    def _try_failed(self, q: _Question, answer: DnsAnswer) -> None:
        q.last = answer
        q.attempt += 1
        loop = cast(asyncio.AbstractEventLoop, self._loop)
        if q.attempt < self._tries and loop.time() < q.deadline:
            self._send(q, self._servers[(q.first + q.attempt) % len(self._servers)], self._per_try)
            return
        self._next = (self._next + 1) % len(self._servers)
        self._finish(q, answer)

    def _finish(self, q: _Question, answer: DnsAnswer) -> None:
        if q.finished:
            return
        q.finished = True
        done, token = q.done, q.token
        q.done = q.token = None  # type: ignore[assignment]
        self._held.discard(q)
        try:
            done(token, answer)
        except Exception:  # a caller's bug must not stop a sweep or a reply half way
            log.exception("DNS answer callback failed for %s", q.name)

    # -- timeouts ------------------------------------------------------------------------------

    def _unwait(self, q: _Question) -> None:
        """*q* no longer waits for a UDP reply."""
        q.qid = -1
        waiting = self._buckets.get(q.bucket)
        if waiting is not None:
            waiting.discard(q)
            if not waiting:
                del self._buckets[q.bucket]

    def _arm(self, bucket: int) -> None:
        if self._timer is not None:
            self._timer.cancel()
        loop = cast(asyncio.AbstractEventLoop, self._loop)
        self._timer_bucket = bucket
        self._timer = loop.call_at(bucket * self._grain, self._sweep)

    def _sweep(self) -> None:
        self._timer, self._timer_bucket = None, math.inf
        loop = cast(asyncio.AbstractEventLoop, self._loop)
        # uvloop's clock and timers count whole milliseconds: a timer may fire a little early
        now_bucket = math.floor((loop.time() + 0.001) / self._grain)
        for bucket in sorted(b for b in self._buckets if b <= now_bucket):
            for q in self._buckets.pop(bucket, ()):
                server = q.server
                if q.finished or q.bucket != bucket or server is None or server.pending.get(q.qid) is not q:
                    continue  # moved on while this bucket was swept (an ICMP error re-sent it)
                del server.pending[q.qid]
                q.qid = -1
                self._try_failed(q, _TIMEOUT)
        if self._buckets:
            first = min(self._buckets)
            if first < self._timer_bucket:
                self._arm(first)

    # -- housekeeping --------------------------------------------------------------------------

    def _spawn(self, q: _Question, coro: Any) -> None:
        """Run *coro*, which holds *q* until it ends (`close` ends what tasks hold)."""
        self._held.add(q)
        loop = cast(asyncio.AbstractEventLoop, self._loop)
        task = loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(functools.partial(self._task_done, q))

    def _task_done(self, q: _Question, task: asyncio.Task[None]) -> None:
        """A task that ends by surprise (a bug, or cancelled) still ends its question."""
        self._tasks.discard(task)
        self._held.discard(q)
        if task.cancelled():
            failure = "DNS question cancelled"
        else:
            exc = task.exception()
            if exc is None:
                return
            log.error("DNS client failed on %s", q.name, exc_info=exc)
            failure = f"DNS client failed: {type(exc).__name__}"
        if not q.finished:
            if q.server is not None and q.qid >= 0:
                q.server.pending.pop(q.qid, None)
                self._unwait(q)
            self._finish(q, DnsAnswer(DnsStatus.ERROR, detail=failure))

    def _adopt(self, loop: asyncio.AbstractEventLoop) -> None:
        had_loop = self._loop is not None
        self._loop = loop
        for server in self._servers:
            server.reset()
        # What belonged to the old loop is gone with it (its callers too): dropped, not answered.
        self._buckets = {}
        self._timer, self._timer_bucket = None, math.inf
        self._tasks = set()
        self._held = set()
        if had_loop:  # closed in an event loop that is gone: open again in this one
            self._closed = False

    async def _tcp(self, server: _Server, base: bytes, name: str, rtype: int, timeout: float) -> Reply | DnsAnswer:
        """RFC 7766: re-ask a truncated question over TCP on the same server."""
        if timeout <= 0:
            return DnsAnswer(DnsStatus.TIMEOUT, detail="timeout")
        qid = secrets.randbits(16)
        query = struct.pack("!H", qid) + base[2:]
        query = query[:10] + b"\x00\x01" + query[12:] + _OPT
        writer = None
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_connection(server.host, server.port)
                sock = writer.get_extra_info("socket")
                if sock is not None:
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                writer.write(struct.pack("!H", len(query)) + query)
                await writer.drain()
                (length,) = struct.unpack("!H", await reader.readexactly(2))
                data = await reader.readexactly(length)
        except TimeoutError:
            return DnsAnswer(DnsStatus.TIMEOUT, detail="timeout over TCP")
        except (OSError, asyncio.IncompleteReadError) as exc:
            return DnsAnswer(DnsStatus.ERROR, detail=f"TCP to {hostport(server.host, server.port)}: {exc}")
        finally:
            if writer is not None:
                writer.close()
        try:
            reply = parse_reply(data)
        except MalformedReply as exc:
            return DnsAnswer(DnsStatus.ERROR, detail=f"malformed reply over TCP: {exc}")
        if reply.id != qid or reply.qname != name or reply.qtype != rtype:
            return DnsAnswer(DnsStatus.ERROR, detail="TCP reply does not match the question")
        return reply

    def close(self) -> None:
        """Close the sockets; questions still waiting end as errors, and no more are sent.

        (A transport used again from a new event loop opens new sockets.)
        """
        self._closed = True
        for server in self._servers:
            waiting = list(server.pending.values())
            server.pending.clear()
            for q in waiting:
                self._unwait(q)
                self._finish(q, _CLOSED)
            server.close()
        for q in list(self._held):  # over TCP, or waiting for a socket
            self._finish(q, _CLOSED)
        for task in list(self._tasks):
            task.cancel()
        if self._timer is not None:
            self._timer.cancel()
            self._timer, self._timer_bucket = None, math.inf


def _resolve(fut: asyncio.Future[DnsAnswer], answer: DnsAnswer) -> None:
    if not fut.done():
        fut.set_result(answer)
