"""An asyncio DNS stub client: UDP from a pool of source ports per server, TCP on truncation.

Why not dnspython's or c-ares' client: dnspython's async resolver spends
about 0.35 ms of CPU per question and opens a socket per query; aiodns
(c-ares) is fast but keeps its own unbounded query cache that cannot be
turned off from Python, which would defeat our bounded cache and the query
counts of the budgets.  This client builds and reads messages with
`_wire` and answers `DnsAnswer` facts; measurements are in ``bench/``.

The common case costs no task, coroutine or timer of its own: `start`
sends the question and returns; the reply callback reads it and calls the
caller back.  Timeouts are kept in buckets of a few milliseconds, swept by
one timer per transport.  Only the rare path (TCP after truncation) runs as
a task; sockets open and close without one.

Forgery (RFC 5452): each server has a pool of ``sockets`` connected UDP
sockets, each on a port the kernel chose at random (RFC 6056).  A try
leaves from one drawn at random and its reply is accepted only on that
socket, from the server asked (the kernel drops anything else on a
connected socket), with the try's random ID and the question as sent (in
the same letter case when ``case_randomise`` is on).  A forger must guess
the port and the ID: 22 bits with 64 sockets.  Ports are replaced as they
serve: every ``rotate_every`` tries on a server (replies dropped count as
tries) a new socket opens and the oldest leaves the draw, closed once
nothing waits on it; so a port seen by an attacker lives ``sockets x
rotate_every`` tries at most (rotation waits while as many retired sockets
as the pool holds are still waited on: at most twice ``sockets`` are open).
The sockets owed are opened after the next answer is handed over (the
caller's reply goes out first), or by a sweep or the `MAX_DUE`-th owed:
a port may serve a few tries more than the bound, never ``MAX_DUE x
rotate_every`` more.
A malformed or mismatched reply is dropped and the question keeps waiting.

Errors stay local: an ICMP error (or any other error reading a socket)
retires that socket only, and the questions waiting on it are sent again on another
socket for the rest of their try.  A second refusal within the same try
ends the try: a server that really refuses is left for the next as before.
"""

from __future__ import annotations

import _socket
import asyncio
import contextlib
import functools
import ipaddress
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
from ._wire import MalformedReply, Rcode, Reply, RType, build_query, parse_reply, randomise_case

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


_FORKS = [0]  # bumped in a forked child: a transport there opens sockets of its own


def _forked() -> None:
    _FORKS[0] += 1


os.register_at_fork(after_in_child=_forked)

DEFAULT_SOCKETS = 64  # RFC 5452 9.2: with the 16-bit ID, at least 22 bits to guess
DEFAULT_ROTATE_EVERY = 4  # tries on a server between two new ports (a port lives 64 x 4 tries)
MAX_REFUSALS = 1  # ICMP errors a try survives (each costs a re-send on another socket)
MAX_UDP_REPLY = 65535  # bytes; a server should keep to EDNS_PAYLOAD, but a longer datagram is read whole
MAX_DUE = 8  # rotations a server may owe before the next try waits for them (see `Transport._owe`)
_DGRAM = socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC


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
        "note",
        "qid",
        "question",
        "refused",
        "rtype",
        "sock",
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
        self.sock: _Socket | None = None
        self.qid = -1  # >= 0 while waiting for a UDP reply
        self.bucket = 0
        self.last = _TIMEOUT
        self.note: DnsAnswer | None = None  # a malformed reply seen in this try: said if it times out
        self.refused = 0  # ICMP errors in this try
        self.finished = False
        self.question = base[12:]  # the question as sent, byte for byte
        # The question as sent, to save decoding its echo; not for a name with a backslash,
        # which reads back escaped (as dnspython writes it).
        self.asked = (self.question, name) if "\\" not in name else None


class _Socket:
    """One connected UDP socket of a server's pool, with the tries that left from it.

    A plain non-blocking socket read by the event loop's ``add_reader``, not
    an asyncio transport: it opens and closes without a task or an await, so
    a pool can be renewed as fast as it serves (about 10 us a socket).  The
    bare ``_socket`` type, made non-blocking by the flag it is created with:
    no Python wrapper and no ``fcntl`` call of its own.
    """

    __slots__ = ("closed", "fd", "owner", "pending", "recv", "retired", "send", "server", "sock")

    def __init__(self, server: _Server, loop: asyncio.AbstractEventLoop):
        """:raises OSError: when the socket cannot be opened."""
        sock = _socket.socket(server.family, _DGRAM)
        try:
            sock.connect((server.host, server.port))  # the kernel draws the port (RFC 6056)
            loop.add_reader(sock.fileno(), self._readable)
        except BaseException:
            sock.close()
            raise
        self.sock = sock
        self.fd = sock.fileno()
        self.send = sock.send
        self.recv = sock.recv
        self.server = server
        self.owner = server.owner
        self.pending: dict[int, _Question] = {}
        self.retired = False  # out of the draw; closed once nothing waits on it
        self.closed = False

    def _readable(self) -> None:
        # One datagram a wake-up, as asyncio's own transports read: the loop polls level-triggered,
        # so more waiting are read on the next turn, and the common case raises no BlockingIOError.
        try:
            data = self.recv(MAX_UDP_REPLY)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:  # an ICMP error the kernel queued on the socket
            server = self.server
            self.owner._refused(self, f"{hostport(server.host, server.port)}: {exc.strerror or exc}")
            return
        self.owner._reply(self, data)

    def close(self, loop: asyncio.AbstractEventLoop | None) -> None:
        """Close the socket; *loop* None: without touching an event loop (a forked child's inherited one)."""
        if self.closed:
            return
        self.closed = True
        if loop is not None:
            with contextlib.suppress(RuntimeError, ValueError, OSError):  # a loop closed already
                loop.remove_reader(self.fd)
        self.sock.close()


class _Server:
    """One server and its pool of sockets."""

    def __init__(self, host: str, port: int, index: int, owner: Transport, trusted: bool):
        self.host = host
        self.port = port
        self.index = index
        self.owner = owner
        self.trusted = trusted  # a validating resolver whose AD bit we believe
        self.family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.live: list[_Socket] = []  # in the draw, oldest first
        self.draining: set[_Socket] = set()  # retired, with tries still waiting on them
        self.tries = 0  # since the last new socket
        self.due = 0  # new sockets owed (`Transport._owe`)

    def sockets(self) -> list[_Socket]:
        return [*self.live, *self.draining]


class Transport:
    """Asks one set of servers, in turn, within a per-question timeout.

    A question gets *tries* tries of ``timeout / tries`` seconds each, on the
    servers in turn, and ends within *timeout* seconds (TCP included).

    :param sockets: UDP sockets (source ports) per server.
    :param rotate_every: tries on a server between two new sockets.
    :param case_randomise: ask in mixed letter case and want it echoed (0x20).
    :param authentic: set the AD bit in questions (RFC 6840 5.7).
    :param trusted: the servers whose AD bit is believed (loopback always is): an address
        (any port) or ``HOST:PORT`` / ``[V6]:PORT`` (that port only), as ``dns.trusted_validators``.
    """

    def __init__(
        self,
        servers: Sequence[tuple[str, int]],
        timeout: float = 2.0,
        tries: int = 2,
        recursion: bool = True,
        *,
        sockets: int = DEFAULT_SOCKETS,
        rotate_every: int = DEFAULT_ROTATE_EVERY,
        case_randomise: bool = False,
        authentic: bool = False,
        trusted: Sequence[str] = (),
    ):
        if not servers:
            raise ValueError("no DNS server to ask")
        trust = {_trust_entry(t) for t in trusted}
        self._servers = [
            _Server(host, port, i, self, _trusted(host, port, trust)) for i, (host, port) in enumerate(servers)
        ]
        self._timeout = timeout
        self.timeout = timeout  # the longest a question takes (UDP tries and TCP together)
        self._tries = max(1, tries)
        self._per_try = timeout / self._tries
        # Timeouts fire up to this late: one timer sweeps a bucket of them at a time.
        self._grain = max(0.001, min(0.02, self._per_try / 20))
        self._recursion = recursion
        self._size = max(1, sockets)
        self._rotate_every = max(1, rotate_every)
        self._case = case_randomise
        self._authentic = authentic
        self._next = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._fork = _FORKS[0]
        self._buckets: dict[int, set[_Question]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._timer_bucket = math.inf
        self._tasks: set[asyncio.Task[None]] = set()
        self._held: set[_Question] = set()  # questions a task holds (TCP)
        self._closed = False
        self._rotating = False  # a call to `_rotate_owed` is scheduled
        self.sent = 0  # UDP questions sent, retries included
        self.tcp = 0  # questions re-asked over TCP
        self.dropped = 0  # UDP replies not accepted: unknown ID, malformed, another question
        self.refusals = 0  # ICMP errors (and other errors reading a socket)
        self.opened = 0  # sockets opened

    async def ask(self, name: str, rtype: RType) -> DnsAnswer:
        """Ask for *rtype* at *name* (lower case, no trailing dot)."""
        fut: asyncio.Future[DnsAnswer] = asyncio.get_running_loop().create_future()
        self.start(name, rtype, _resolve, fut)
        return await fut

    def start(self, name: str, rtype: int, done: Done, token: Any) -> None:
        """Send the question; ``done(token, answer)`` is called once when it ends (maybe before this returns)."""
        loop = self._loop
        # The loop in use is still the one running (one loop runs in a thread at a time): no need to ask
        # asyncio, which costs a getpid() system call each time.
        if loop is None or self._fork != _FORKS[0] or not loop.is_running():
            loop = asyncio.get_running_loop()
            if loop is not self._loop or self._fork != _FORKS[0]:  # first use, a new event loop, a forked child
                self._adopt(loop)
        if self._closed:
            done(token, _CLOSED)
            return
        try:
            base = build_query(0, name, rtype, self._recursion, self._authentic)
        except (ValueError, UnicodeEncodeError) as exc:
            done(token, DnsAnswer(DnsStatus.ERROR, detail=f"cannot ask for {name!r}: {exc}"))
            return
        if self._case:
            base = randomise_case(base, os.urandom((len(base) + 7) // 8))
        q = _Question(name, rtype, base, done, token, loop.time() + self._timeout, self._next)
        try:
            self._send(q, self._servers[q.first % len(self._servers)], self._per_try)
        except Exception as exc:  # a bug: the question still ends (a caller waits on it), logged
            log.exception("DNS client failed on %s", name)
            if q.sock is not None and q.qid >= 0 and q.sock.pending.get(q.qid) is q:
                self._release(q)
            self._finish(q, DnsAnswer(DnsStatus.ERROR, detail=f"DNS client failed: {type(exc).__name__}"))

    @property
    def open_sockets(self) -> int:
        """UDP sockets open now (in the draw, and retired ones still waited on)."""
        return sum(len(s.live) + len(s.draining) for s in self._servers)

    # -- trying --------------------------------------------------------------------------------

    def _send(self, q: _Question, server: _Server, wait: float) -> None:
        if self._closed:
            self._finish(q, _CLOSED)
            return
        loop: asyncio.AbstractEventLoop = self._loop  # type: ignore[assignment]  # (no cast(): a call per try)
        now = loop.time()
        wait = min(wait, q.deadline - now)
        if wait <= 0:
            self._finish(q, q.last)
            return
        live = server.live
        if len(live) < self._size:
            failed = self._fill(server)
            if not live:
                self._try_failed(q, failed or _CLOSED)
                return
        qid = _IDS.next()
        sock = live[_IDS.next() % len(live)]  # a port drawn per try (RFC 5452 9.2)
        while qid in sock.pending:
            qid = _IDS.next()
        query = struct.pack("!H", qid) + q.base[2:]
        if q.edns:
            query = query[:10] + b"\x00\x01" + query[12:] + _OPT  # ARCOUNT 1, then the OPT record
        sock.pending[qid] = q
        q.sock, q.qid = sock, qid
        bucket = math.ceil((now + wait) / self._grain)
        q.bucket = bucket
        waiting = self._buckets.get(bucket)
        if waiting is None:
            waiting = self._buckets[bucket] = set()
        waiting.add(q)
        if bucket < self._timer_bucket:
            self._arm(bucket)
        self.sent += 1
        try:
            sock.send(query)
        except (BlockingIOError, InterruptedError):
            pass  # the send buffer is full: lost like a datagram on the way, the try times out
        except OSError as exc:  # an ICMP error queued by an earlier try on this socket
            self._refused(sock, f"{hostport(server.host, server.port)}: {exc.strerror or exc}")
        self._owe(server)

    def _release(self, q: _Question) -> None:
        """*q* no longer waits on its socket (closed now if it was retired and nothing else waits)."""
        sock = q.sock
        assert sock is not None
        del sock.pending[q.qid]
        self._unwait(q)
        if sock.retired and not sock.pending:
            sock.server.draining.discard(sock)
            sock.close(self._loop)

    def _reply(self, sock: _Socket, data: bytes) -> None:
        q = sock.pending.get((data[0] << 8) | data[1]) if len(data) >= 2 else None
        if q is None:
            self._dropped(sock.server)
            return
        if self._case and not data.startswith(q.question, 12):
            self._dropped(sock.server)  # not the question in the letter case it was asked in (0x20)
            return
        try:
            reply = parse_reply(data, q.asked)
        except MalformedReply as exc:
            q.note = DnsAnswer(DnsStatus.ERROR, detail=f"malformed reply: {exc}")
            self._dropped(sock.server)  # a forger's, maybe: the real reply may still come
            return
        if reply.qname != q.name or reply.qtype != q.rtype or reply.qclass != 1:
            self._dropped(sock.server)  # not the answer to our question: keep waiting
            return
        server = sock.server
        self._release(q)
        if reply.rcode == Rcode.FORMERR and q.edns and not reply.edns:
            q.edns = False  # an old server that does not speak EDNS (RFC 6891 7): the rest of the time, no EDNS
            self._send(q, server, math.inf)
            return
        if reply.truncated:
            self.tcp += 1
            self._spawn(q, self._tcp_then(q, server))
            return
        self._next = server.index
        self._finish(q, answer_from_reply(reply, q.name, q.rtype, server.trusted))
        if server.due and not self._rotating:
            # After the answer: its caller runs first (the loop calls back in order), so the
            # sockets open and close once the reply it was waiting for is written.
            self._rotating = True
            self._loop.call_soon(self._rotate_owed)  # type: ignore[union-attr]  # set: a question was in flight

    def _dropped(self, server: _Server) -> None:
        """A reply not accepted: it counts as a try towards the next new port."""
        self.dropped += 1
        self._owe(server)

    def _refused(self, sock: _Socket, detail: str) -> None:
        """An ICMP error (forged, maybe): retire the socket, send the tries waiting on it again from another."""
        self.refusals += 1
        server = sock.server
        waiting = list(sock.pending.values())
        sock.pending.clear()
        self._retire(sock)
        loop = cast(asyncio.AbstractEventLoop, self._loop)
        for q in waiting:
            self._unwait(q)
            left = q.bucket * self._grain - loop.time()  # the rest of this try
            q.refused += 1
            if q.refused > MAX_REFUSALS or left <= 0:
                self._try_failed(q, DnsAnswer(DnsStatus.ERROR, detail=detail))
            else:
                self._send(q, server, left)

    def _retire(self, sock: _Socket) -> None:
        """Take *sock* out of the draw; it closes once nothing waits on it."""
        if sock.retired:
            return
        sock.retired = True
        server = sock.server
        with contextlib.suppress(ValueError):
            server.live.remove(sock)
        if sock.pending:
            server.draining.add(sock)
        else:
            sock.close(self._loop)

    def _owe(self, server: _Server) -> None:
        """Count a try on *server*; every ``rotate_every`` tries it is owed a new socket.

        What is owed is paid after the next answer is delivered (`_reply`), by a sweep, or
        here once `MAX_DUE` are owed: opening and closing sockets (``socket``, ``connect``,
        the event loop's reader added and removed, ``close``) then costs no question and no
        reply any time.  A port lives ``MAX_DUE`` tries longer at most: the bound of
        docs/dns-security.md allows for it.
        """
        server.tries += 1
        if server.tries >= self._rotate_every:
            server.tries = 0
            server.due += 1
            if server.due >= MAX_DUE:
                self._rotate(server)

    def _rotate_owed(self) -> None:
        self._rotating = False
        self._pay()

    def _pay(self) -> None:
        """Open (and retire) the sockets every server is owed."""
        if self._closed:
            return
        for server in self._servers:
            if server.due:
                self._rotate(server)

    def _rotate(self, server: _Server) -> None:
        """The new ports *server* is owed in the draw, each then the oldest out of it (its
        replacement is ready first).

        Not while as many retired sockets as the pool holds still have tries waiting on them
        (a slow server under load): a server's sockets stay at most twice ``sockets``.
        """
        owed, server.due = server.due, 0
        for _ in range(owed):
            if len(server.draining) >= self._size:
                return
            if self._open(server) is None and len(server.live) > self._size:
                self._retire(server.live[0])

    def _fill(self, server: _Server) -> DnsAnswer | None:
        """Open the sockets *server* lacks; the failure, if one could not be opened."""
        while len(server.live) < self._size:
            failed = self._open(server)
            if failed is not None:
                return failed
        return None

    def _open(self, server: _Server) -> DnsAnswer | None:
        """One more socket in *server*'s draw; the failure if it could not be opened."""
        try:
            sock = _Socket(server, self._loop)  # type: ignore[arg-type]
        except OSError as exc:
            log.warning("cannot open a DNS socket to %s:%s: %s", server.host, server.port, exc)
            return DnsAnswer(DnsStatus.ERROR, detail=f"{hostport(server.host, server.port)}: {exc.strerror or exc}")
        server.live.append(sock)
        self.opened += 1
        return None

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
            self._finish(q, answer_from_reply(result, q.name, q.rtype, server.trusted))

    def _try_failed(self, q: _Question, answer: DnsAnswer) -> None:
        q.last = answer
        q.attempt += 1
        q.refused = 0
        q.note = None
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
                sock = q.sock
                if q.finished or q.bucket != bucket or sock is None or sock.pending.get(q.qid) is not q:
                    continue  # moved on while this bucket was swept (an ICMP error re-sent it)
                self._release(q)
                self._try_failed(q, q.note or _TIMEOUT)
        self._pay()  # what tries that were never answered owe
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
            if q.sock is not None and q.qid >= 0 and q.sock.pending.get(q.qid) is q:
                self._release(q)
            self._finish(q, DnsAnswer(DnsStatus.ERROR, detail=failure))

    def _adopt(self, loop: asyncio.AbstractEventLoop) -> None:
        had_loop = self._loop is not None
        # A forked child closes the parent's sockets without touching the event loop: the child
        # shares the parent's epoll set, and must not take the parent's sockets out of it.
        old = None if self._fork != _FORKS[0] else self._loop
        self._fork = _FORKS[0]
        for server in self._servers:
            for sock in server.sockets():
                sock.close(old)
            server.live, server.draining, server.tries, server.due = [], set(), 0, 0
        self._loop = loop
        self._rotating = False
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
            for sock in server.sockets():
                waiting = list(sock.pending.values())
                sock.pending.clear()
                for q in waiting:
                    self._unwait(q)
                    self._finish(q, _CLOSED)
                sock.close(self._loop)
            server.live, server.draining = [], set()
        for q in list(self._held):  # over TCP, or waiting for a socket
            self._finish(q, _CLOSED)
        for task in list(self._tasks):
            task.cancel()
        if self._timer is not None:
            self._timer.cancel()
            self._timer, self._timer_bucket = None, math.inf


_Trust = tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int | None]


def _trust_entry(text: str) -> _Trust:
    """``ADDRESS`` (any port), ``ADDRESS:PORT`` or ``[V6]:PORT`` as config.py normalised it.

    :raises ValueError: not one of these.
    """
    port: int | None = None
    if text.startswith("["):
        text, _, rest = text[1:].partition("]")
        port = int(rest.removeprefix(":")) if rest else None
    elif text.count(":") == 1:
        text, _, rest = text.partition(":")
        port = int(rest)
    return ipaddress.ip_address(text), port


def _trusted(host: str, port: int, listed: set[_Trust]) -> bool:
    """Whether the AD bit of *host*:*port* counts: a loopback address (nothing crossed a
    network), or one listed with no port or with this one."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.is_loopback or (address, None) in listed or (address, port) in listed


def _resolve(fut: asyncio.Future[DnsAnswer], answer: DnsAnswer) -> None:
    if not fut.done():
        fut.set_result(answer)
