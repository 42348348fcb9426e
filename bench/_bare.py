"""Bare servers for bench/rspamd_cost.py's floor rows: the plugin's HTTP exchange with nothing checked.

    python bench/_bare.py PORT none                 # read a request, write a fixed slim reply at once
    python bench/_bare.py PORT socket KNOT_PORT     # first ask knot a cold QR1 check's two questions
    python bench/_bare.py PORT pool KNOT_PORT
    python bench/_bare.py PORT none 0 MAX_AGE       # the reply says max_age MAX_AGE (0 by default)

With a knot port, each request asks the two questions the worker asks for a
cold QR1 check of the bench's senders (the registry TXT of the HELO's ID and
the DNSBL A of the client address), waits for both answers and then writes
the same fixed reply: no answer is parsed, nothing is decided, no timeout is
armed.  It is the floor under any worker of this design (Python on uvloop,
asking over UDP), so it asks the way the worker must (issue 15, RFC 5452):
a random query ID from the OS's CSPRNG, a source port the kernel drew, and a
reply taken only on that socket with that ID.

- ``socket``: a connected socket of its own per question, closed on the answer;
- ``pool``: the worker's way, 64 connected sockets drawn at random per
  question, one replaced by a new one every 4 questions (its defaults).

The sockets are plain ones read through the loop's ``add_reader`` (no
transport, task or future per question), as the worker's DNS client reads
them: the cheapest way asyncio offers.
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import sys
from collections.abc import Callable
from typing import cast

import msgpack
import uvloop

REGISTRY, DNSBL = "registry.bench", "bl.bench"  # bench/run.py's zones
SOCKETS, ROTATE_EVERY = 64, 4  # the worker's dns.sockets and dns.rotate_every defaults
OPT = b"\x00" + struct.pack("!HHIH", 41, 1232, 0, 0)  # EDNS0, as the worker sends (RFC 6891)

REPLY = {
    "symbols": [["REGCHECK_QR1_ALLOW", 1.0, ["id0.test", "198.18.0.0/15"]],
                ["REGCHECK_RATING_HIGH", 1.0, ["id0.test", "ratings=S1:A,M2:A,H1:B"]]],
    "milter": {"add_headers": {"X-Regcheck": "198.18.0.0 id0.test QR1 pass"}, "remove_headers": {"X-Regcheck": 0}},
    "enforce": {"action": "no action"},
    "max_age": 0,
}


def answer(max_age: int) -> bytes:
    """The whole HTTP reply, as the worker frames it."""
    body = msgpack.packb({**REPLY, "max_age": max_age})
    return (b"HTTP/1.1 200 OK\r\nContent-Type: application/msgpack\r\nConnection: keep-alive\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body)) + body


ANSWER = answer(0)

Done = Callable[[], None]


class Ids:
    """Random 16-bit query IDs from os.urandom, read 4 KiB at a time (as the worker draws them)."""

    def __init__(self) -> None:
        self.buf, self.at = b"", 0

    def next(self) -> int:
        if self.at >= len(self.buf):
            self.buf, self.at = os.urandom(4096), 0
        self.at += 2
        return (self.buf[self.at - 2] << 8) | self.buf[self.at - 1]


IDS = Ids()


def question(name: str, rtype: int) -> bytes:
    """The query after its ID: RD set, one question of class IN, one OPT record."""
    labels = b"".join(bytes([len(x)]) + x for x in name.encode().split(b".")) + b"\x00"
    return struct.pack("!HHHHH", 0x0100, 1, 0, 0, 1) + labels + struct.pack("!HH", rtype, 1) + OPT


class Sock:
    """A connected UDP socket (the kernel draws its port) and the questions waiting on it."""

    def __init__(self, loop: asyncio.AbstractEventLoop, server: tuple[str, int], owner: Asker) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self.sock.connect(server)
        self.fd = self.sock.fileno()
        self.loop, self.owner = loop, owner
        self.pending: dict[int, Done] = {}
        self.retired = False
        loop.add_reader(self.fd, self.readable)

    def ask(self, query: bytes, done: Done) -> None:
        qid = IDS.next()
        while qid in self.pending:
            qid = IDS.next()
        self.pending[qid] = done
        self.sock.send(struct.pack("!H", qid) + query)

    def readable(self) -> None:
        try:
            data = self.sock.recv(1232)
        except (BlockingIOError, InterruptedError):
            return
        done = self.pending.pop((data[0] << 8) | data[1], None) if len(data) >= 12 else None
        if done is None:
            return  # not an answer to a question asked here: keep waiting
        if self.retired and not self.pending:
            self.close()
        done()

    def close(self) -> None:
        self.loop.remove_reader(self.fd)
        self.sock.close()


class Asker:
    """Sends a question and calls back when its answer comes: a socket per question, or a pool."""

    def __init__(self, loop: asyncio.AbstractEventLoop, server: tuple[str, int], pooled: bool) -> None:
        self.loop, self.server, self.pooled = loop, server, pooled
        self.live = [Sock(loop, server, self) for _ in range(SOCKETS)] if pooled else []
        self.tries = 0

    def ask(self, query: bytes, done: Done) -> None:
        if not self.pooled:
            sock = Sock(self.loop, self.server, self)
            sock.retired = True  # closed on its answer
            sock.ask(query, done)
            return
        self.live[IDS.next() % len(self.live)].ask(query, done)
        self.tries += 1
        if self.tries >= ROTATE_EVERY:  # a new port in, the oldest out of the draw
            self.tries = 0
            old = self.live.pop(0)
            old.retired = True
            if not old.pending:
                old.close()
            self.live.append(Sock(self.loop, self.server, self))


def header(head: bytes, name: bytes) -> str:
    """The value of header *name* (lower case, with its colon) in a request head, '' when absent."""
    at = head.find(b"\r\n" + name)
    if at < 0:
        return ""
    at += 2 + len(name)
    end = head.find(b"\r\n", at)
    return head[at:end if end >= 0 else len(head)].strip().decode()


class Http(asyncio.Protocol):
    """Reads requests on a kept-alive connection and answers each with the fixed reply."""

    asker: Asker | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.t = cast(asyncio.Transport, transport)  # a stream server's (uvloop's is no subclass)
        self.buf = b""
        self.waiting = 0

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.waiting:
            self.next()

    def next(self) -> None:
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end].lower()
            at = head.find(b"content-length:")
            length = int(head[at + 15 : head.find(b"\r\n", at) if head.find(b"\r\n", at) >= 0 else end]) if at >= 0 else 0
            if len(self.buf) < end + 4 + length:
                return
            self.buf = self.buf[end + 4 + length :]
            if self.asker is None:
                self.t.write(ANSWER)
                continue
            ident = header(head, b"helo:").split(".", 1)[-1]  # mx.idN.test -> idN.test
            ip = header(head, b"ip:").split(".")
            self.waiting = 2
            self.asker.ask(question(f"{ident}.{REGISTRY}", 16), self.answered)  # TXT
            self.asker.ask(question(".".join(reversed(ip)) + "." + DNSBL, 1), self.answered)  # A
            return

    def answered(self) -> None:
        self.waiting -= 1
        if not self.waiting:
            self.t.write(ANSWER)
            if self.buf:
                self.next()


async def main(port: int, mode: str, knot_port: int, max_age: int) -> None:
    global ANSWER  # one reply for the process, set once before serving
    loop = asyncio.get_running_loop()
    ANSWER = answer(max_age)
    if mode != "none":
        Http.asker = Asker(loop, ("127.0.0.1", knot_port), mode == "pool")
    server = await loop.create_server(Http, "127.0.0.1", port)
    await server.serve_forever()


if __name__ == "__main__":
    args = [*sys.argv[1:], "0", "0"]
    uvloop.run(main(int(args[0]), args[1], int(args[2]), int(args[3])))
