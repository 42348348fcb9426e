"""An asyncio DNS stub client: UDP on one connected socket per server, TCP on truncation.

Why not dnspython's or c-ares' client: dnspython's async resolver spends
about 0.35 ms of CPU per question and opens a socket per query; aiodns
(c-ares) is fast but keeps its own unbounded query cache that cannot be
turned off from Python, which would defeat our bounded cache and the query
counts of the budgets.  This client builds and reads messages with
`_wire` and answers `DnsAnswer` facts; measurements are in ``bench/``.

Safety: a reply is accepted only from the server asked (connected socket),
with the query's random ID, and with the same question (name, type, class);
anything else is dropped and the question keeps waiting.  A malformed reply
to a pending question ends it as an error.
"""

from __future__ import annotations

import asyncio
import secrets
import socket
import struct
from collections.abc import Sequence
from typing import cast

from ._answer import DnsAnswer, DnsStatus, answer_from_reply
from ._wire import MalformedReply, Rcode, Reply, RType, build_query, parse_reply

EDNS_PAYLOAD = 1232  # bytes; the DNS flag day 2020 value, avoids IP fragmentation
MAX_TCP_REPLY = 65535


def _edns_opt() -> bytes:
    # RFC 6891 6.1.2: root owner, type OPT (41), class = UDP payload size, TTL 0, no options
    return b"\x00" + struct.pack("!HHIH", 41, EDNS_PAYLOAD, 0, 0)


_OPT = _edns_opt()


def _with_edns(query: bytes) -> bytes:
    # ARCOUNT is the last 16-bit field of the header
    return query[:10] + b"\x00\x01" + query[12:] + _OPT


class _Server(asyncio.DatagramProtocol):
    """A connected UDP socket to one server, with its questions in flight."""

    def __init__(self, host: str, port: int):
        self.host = host
        self.port = port
        self.transport: asyncio.DatagramTransport | None = None
        self.pending: dict[int, tuple[asyncio.Future[Reply | DnsAnswer], str, int]] = {}
        self._lock = asyncio.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None

    async def ensure_open(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # first use, or a new event loop (asyncio.run again)
            self._loop = loop
            self.transport = None
            self.pending = {}
            self._lock = asyncio.Lock()
        if self.transport is not None and not self.transport.is_closing():
            return
        async with self._lock:
            if self.transport is None or self.transport.is_closing():
                loop = asyncio.get_running_loop()
                family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
                await loop.create_datagram_endpoint(lambda: self, remote_addr=(self.host, self.port), family=family)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        for fut, _, _ in self.pending.values():
            if not fut.done():
                fut.set_result(DnsAnswer(DnsStatus.ERROR, detail="socket closed"))
        self.pending.clear()

    def error_received(self, exc: Exception) -> None:
        # ICMP errors on a connected socket (port unreachable): every question here fails now.
        for fut, _, _ in self.pending.values():
            if not fut.done():
                fut.set_result(
                    DnsAnswer(
                        DnsStatus.ERROR, detail=f"{self.host}:{self.port}: {getattr(exc, 'strerror', None) or exc}"
                    )
                )

    def datagram_received(self, data: bytes, addr: object) -> None:
        if len(data) < 2:
            return
        qid = (data[0] << 8) | data[1]
        entry = self.pending.get(qid)
        if entry is None:
            return
        fut, qname, qtype = entry
        if fut.done():
            return
        try:
            reply = parse_reply(data)
        except MalformedReply as exc:
            fut.set_result(DnsAnswer(DnsStatus.ERROR, detail=f"malformed reply: {exc}"))
            return
        if reply.qname != qname or reply.qtype != qtype or reply.qclass != 1:
            return  # not the answer to our question: keep waiting
        fut.set_result(reply)

    def new_id(self) -> int:
        while True:
            qid = secrets.randbits(16)
            if qid not in self.pending:
                return qid

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def _expire(fut: asyncio.Future[Reply | DnsAnswer]) -> None:
    if not fut.done():
        fut.set_result(_TIMEOUT)


_TIMEOUT = DnsAnswer(DnsStatus.TIMEOUT, detail="timeout")


class Transport:
    """Asks one set of servers, in turn, within a per-question timeout."""

    def __init__(
        self,
        servers: Sequence[tuple[str, int]],
        timeout: float = 2.0,
        tries: int = 2,
        recursion: bool = True,
    ):
        if not servers:
            raise ValueError("no DNS server to ask")
        self._servers = [_Server(host, port) for host, port in servers]
        self._timeout = timeout
        self.timeout = timeout  # the longest ask() takes (UDP tries and TCP together)
        self._tries = max(1, tries)
        self._recursion = recursion
        self._next = 0
        self.sent = 0  # UDP questions sent, retries included
        self.tcp = 0  # questions re-asked over TCP

    async def ask(self, name: str, rtype: RType) -> DnsAnswer:
        """Ask for *rtype* at *name* (lower case, no trailing dot)."""
        try:
            base = build_query(0, name, rtype, self._recursion)
        except (ValueError, UnicodeEncodeError) as exc:
            return DnsAnswer(DnsStatus.ERROR, detail=f"cannot ask for {name!r}: {exc}")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout
        per_try = self._timeout / self._tries
        last = DnsAnswer(DnsStatus.TIMEOUT, detail="timeout")
        edns = True
        for attempt in range(self._tries):
            server = self._servers[(self._next + attempt) % len(self._servers)]
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            result = await self._udp(server, base, name, rtype, min(per_try, remaining), edns)
            if isinstance(result, DnsAnswer):
                last = result
                continue
            if result.rcode == Rcode.FORMERR and edns:
                edns = False  # an old server that does not speak EDNS (RFC 6891 7)
                result = await self._udp(server, base, name, rtype, max(0.0, deadline - loop.time()), edns)
                if isinstance(result, DnsAnswer):
                    last = result
                    continue
            if result.truncated:
                self.tcp += 1
                tcp = await self._tcp(server, base, name, rtype, deadline - loop.time())
                if isinstance(tcp, DnsAnswer):
                    last = tcp
                    continue
                result = tcp
            self._next = (self._next + attempt) % len(self._servers)
            return answer_from_reply(result, name, rtype)
        self._next = (self._next + 1) % len(self._servers)
        return last

    async def _udp(
        self, server: _Server, base: bytes, name: str, rtype: int, timeout: float, edns: bool
    ) -> Reply | DnsAnswer:
        if timeout <= 0:
            return DnsAnswer(DnsStatus.TIMEOUT, detail="timeout")
        try:
            await server.ensure_open()
        except OSError as exc:
            return DnsAnswer(DnsStatus.ERROR, detail=f"{server.host}:{server.port}: {exc.strerror or exc}")
        assert server.transport is not None
        qid = server.new_id()
        query = struct.pack("!H", qid) + base[2:]
        if edns:
            query = _with_edns(query)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Reply | DnsAnswer] = loop.create_future()
        server.pending[qid] = (fut, name, rtype)
        timer = loop.call_later(timeout, _expire, fut)
        try:
            server.transport.sendto(query)
            self.sent += 1
            return await fut
        finally:
            timer.cancel()
            server.pending.pop(qid, None)

    async def _tcp(self, server: _Server, base: bytes, name: str, rtype: int, timeout: float) -> Reply | DnsAnswer:
        """RFC 7766: re-ask a truncated question over TCP on the same server."""
        if timeout <= 0:
            return DnsAnswer(DnsStatus.TIMEOUT, detail="timeout")
        qid = secrets.randbits(16)
        query = _with_edns(struct.pack("!H", qid) + base[2:])
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
            return DnsAnswer(DnsStatus.ERROR, detail=f"TCP to {server.host}:{server.port}: {exc}")
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
        for server in self._servers:
            server.close()
