"""A DNS responder of the tests' own, for what no real server does on demand.

It serves names under ``hostile.test`` over UDP and TCP from a background
thread.  The first label under the zone decides how it misbehaves:

    late       answers after `LATE` seconds          never      never answers
    servfail   SERVFAIL                              truncated  TC over UDP, the record over TCP
    oversized  a 5,000-byte TXT record (TC, then TCP) malformed  a TXT string longer than its record
    cnameloop  a CNAME chain that loops               wrongid    the answer under another query ID
    wrongname  the answer to another question (a record for ``good``: poison, if it were cached)
    forged     first the forgeries a spoofer aims at this very try (wrong ID, wrong question,
               from another port, malformed with the right ID), each saying ``stop=all``; the
               genuine answer `GENUINE_DELAY` later
    icmp       first two forged ICMP "port unreachable" errors at the port the question came
               from (once per name), the genuine answer `GENUINE_DELAY` later
    good / anything else   an ordinary record

Registry names are ``<id>.reg.hostile.test``; SPF names ``<behaviour>.spf.hostile.test``.

Every UDP question is logged with its source port and ID (`HostileResponder.seen`), and
`HostileResponder.spray` sends a forged answer under every one of the 65,536 IDs to a port,
from the server's own address and port: what a blind spoofer who once saw that port can do.
ICMP errors are forged with a raw socket (root, or CAP_NET_RAW).
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import threading
import time

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.rrset

ZONE = "hostile.test"
LATE = 3.0
GENUINE_DELAY = 0.15  # seconds the genuine answer waits behind the forgeries
SPRAY_CHUNK = 128  # forged answers sent back to back; then the receiver gets the processor
GOOD_RECORD = "v=reg1 svc=S1:A,M2:A,H1:B ip4=192.0.2.0/24 meth=SPF:10"
SPF_ONLY_RECORD = "v=reg1 svc=S1:A,M2:A,H1:B meth=SPF:10"
SPOOFED_RECORD = "stop=all"  # what a poisoner would like cached for good.example


def behaviour(qname: str) -> str:
    labels = qname.rstrip(".").lower().split(".")
    for label in labels:
        if label in (
            "late",
            "never",
            "servfail",
            "truncated",
            "oversized",
            "malformed",
            "cnameloop",
            "wrongid",
            "wrongname",
            "forged",
            "icmp",
        ):
            return label
    return "good"


def _txt_for(qname: str) -> list[str]:
    if ".spf." in qname:
        return ["v=spf1 ip4:192.0.2.0/24 -all"]
    if qname.startswith("spfid."):
        return [SPF_ONLY_RECORD]  # no netblocks: SPF decides
    return [GOOD_RECORD]


def answer(query: dns.message.Message, over_tcp: bool) -> tuple[bytes | None, float]:
    """The reply to send (None: none at all) and how long to wait first."""
    q = query.question[0]
    qname = q.name.to_text()
    kind = behaviour(qname)
    reply = dns.message.make_response(query)
    reply.flags |= dns.flags.AA
    if kind == "never":
        return None, 0.0
    if kind == "servfail":
        reply.set_rcode(dns.rcode.SERVFAIL)
        return reply.to_wire(max_size=65535), 0.0
    if kind in ("truncated", "oversized") and not over_tcp:
        reply.flags |= dns.flags.TC
        return reply.to_wire(max_size=65535), 0.0
    if kind == "cnameloop":
        a = dns.name.from_text(qname)
        b = dns.name.from_text("loop-b." + ZONE)
        reply.answer.append(dns.rrset.from_text(a, 60, "IN", "CNAME", b.to_text()))
        reply.answer.append(dns.rrset.from_text(b, 60, "IN", "CNAME", a.to_text()))
        return reply.to_wire(max_size=65535), 0.0
    if q.rdtype == dns.rdatatype.TXT:
        if kind == "oversized":
            text = "v=reg1 svc=S1:A pad=" + "x" * 5000
            strings = " ".join(f'"{text[i : i + 200]}"' for i in range(0, len(text), 200))
            reply.answer.append(dns.rrset.from_text(q.name, 60, "IN", "TXT", strings))
        elif kind == "wrongname":
            other = dns.name.from_text("good.example.reg." + ZONE)
            spoof = dns.message.make_query(other, "TXT")
            spoof.id = query.id
            reply = dns.message.make_response(spoof)
            reply.answer.append(dns.rrset.from_text(other, 3600, "IN", "TXT", f'"{SPOOFED_RECORD}"'))
        else:
            for text in _txt_for(qname):
                reply.answer.append(dns.rrset.from_text(q.name, 60, "IN", "TXT", f'"{text}"'))
    wire = reply.to_wire(max_size=65535)
    if kind == "malformed" and reply.answer:
        # the last byte of the message is inside the TXT string: claim the string is longer
        start = wire.rfind(b"\x00\x10\x00\x01")  # type TXT, class IN of the answer record
        rdlen_at = start + 8
        first_len_at = rdlen_at + 2
        wire = wire[:first_len_at] + bytes([min(255, wire[first_len_at] + 50)]) + wire[first_len_at + 1 :]
    if kind == "wrongid":
        wire = struct.pack("!H", (query.id + 1) % 65536) + wire[2:]
    return wire, LATE if kind == "late" else 0.0


def forged_answer(qname: str, qid: int, text: str = SPOOFED_RECORD) -> bytes:
    """A reply to (*qname*, TXT) under *qid* carrying *text*: what a spoofer wants believed."""
    query = dns.message.make_query(qname, "TXT")
    query.id = qid
    reply = dns.message.make_response(query)
    reply.flags |= dns.flags.AA
    reply.answer.append(dns.rrset.from_text(query.question[0].name, 86400, "IN", "TXT", f'"{text}"'))
    return reply.to_wire()


def targeted_forgeries(query: dns.message.Message) -> list[tuple[str, bytes]]:
    """What an attacker who sees this try sends at its port: (kind, wire), each saying stop=all."""
    qname = query.question[0].name.to_text()
    right = forged_answer(qname, query.id)
    other = forged_answer("good.example.reg." + ZONE + ".", query.id)
    # the answer's TXT string claims 50 bytes more than its record holds
    at = right.rfind(b"\x00\x10\x00\x01") + 10
    malformed = right[:at] + bytes([right[at] + 50]) + right[at + 1 :]
    return [
        ("wrong ID", forged_answer(qname, (query.id + 1) % 65536)),
        ("wrong question", other),
        ("malformed, right ID", malformed),
        ("from another port", right),  # sent from a socket of its own, not the server's
    ]


def icmp_unreachable(src_port: int, dst_port: int, host: str = "127.0.0.1") -> bytes:
    """An ICMP "port unreachable" (RFC 792) about a datagram from *src_port* to *dst_port* on *host*."""
    addr = socket.inet_aton(host)
    inner = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + 8 + 40, 0, 0, 64, 17, 0, addr, addr)
    inner += struct.pack("!HHHH", src_port, dst_port, 8 + 40, 0)
    head = struct.pack("!BBHI", 3, 3, 0, 0)
    data = head + inner
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return data[:2] + struct.pack("!H", ~total & 0xFFFF) + data[4:]


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, responder: HostileResponder):
        self.responder = responder

    def connection_made(self, transport):  # type: ignore[no-untyped-def]
        self.transport = transport

    def datagram_received(self, data, addr):  # type: ignore[no-untyped-def]
        try:
            query = dns.message.from_wire(data)
        except Exception:
            return
        self.responder.count(query, addr[1])
        wire, delay = answer(query, over_tcp=False)
        kind = behaviour(query.question[0].name.to_text())
        if kind == "forged":
            for what, forged in targeted_forgeries(query):
                if what == "from another port":
                    self.responder.other.sendto(forged, addr)
                else:
                    self.transport.sendto(forged, addr)
                self.responder.sent(what)
            delay = GENUINE_DELAY
        elif kind == "icmp" and self.responder.first_time(query.question[0].name.to_text()):
            for _ in range(2):
                self.responder.icmp(addr[1])
            delay = GENUINE_DELAY
        if wire is not None:
            asyncio.get_running_loop().call_later(delay, self.transport.sendto, wire, addr)


class HostileResponder:
    """Runs in its own thread; `port` is the same for UDP and TCP."""

    def __init__(self) -> None:
        self.port = 0
        self.questions: list[tuple[str, str]] = []
        self.seen: list[tuple[int, int, str]] = []  # (source port, ID, name) of every UDP question
        self.forgeries: dict[str, int] = {}  # what was sent, by kind
        self._icmp_names: set[str] = set()
        self._raw: socket.socket | None = None
        self.other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # "from another port"
        self.other.bind(("127.0.0.1", 0))
        self._udp_fd = -1
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def count(self, query: dns.message.Message, port: int | None = None) -> None:
        q = query.question[0]
        name = q.name.to_text().rstrip(".").lower()
        with self._lock:
            self.questions.append((name, dns.rdatatype.to_text(q.rdtype)))
            if port is not None:
                self.seen.append((port, query.id, name))

    def sent(self, kind: str, count: int = 1) -> None:
        with self._lock:
            self.forgeries[kind] = self.forgeries.get(kind, 0) + count

    def first_time(self, name: str) -> bool:
        with self._lock:
            fresh = name not in self._icmp_names
            self._icmp_names.add(name)
            return fresh

    def icmp(self, port: int) -> None:
        """Forge an ICMP "port unreachable" for the client's socket on *port*, as if from the server."""
        if self._raw is None:
            self._raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        self._raw.sendto(icmp_unreachable(port, self.port), ("127.0.0.1", 0))
        self.sent("ICMP port unreachable")

    def spray(self, port: int, qname: str, text: str = SPOOFED_RECORD) -> None:
        """A forged answer to (*qname*, TXT) under each of the 65,536 IDs, at the client's *port*,
        from the server's own address and port (a connected client socket takes nothing else)."""
        template = forged_answer(qname + ".", 0, text)[2:]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM, fileno=os.dup(self._udp_fd)) as sock:
            sendto, pack, addr = sock.sendto, struct.Struct("!H").pack, ("127.0.0.1", port)
            for start in range(0, 65536, SPRAY_CHUNK):
                for qid in range(start, start + SPRAY_CHUNK):
                    try:
                        sendto(pack(qid) + template, addr)
                    except ConnectionRefusedError:  # the port is closed: ICMP came back
                        pass
                time.sleep(0.0005)  # let the receiver read: the point is the IDs, not the kernel's buffers
        self.sent("spray (65,536 IDs)")

    async def _tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readexactly(2)
                query = dns.message.from_wire(await reader.readexactly(struct.unpack("!H", head)[0]))
                self.count(query)
                wire, delay = answer(query, over_tcp=True)
                if wire is None:
                    continue
                await asyncio.sleep(delay)
                writer.write(struct.pack("!H", len(wire)) + wire)
                await writer.drain()
        except (asyncio.IncompleteReadError, OSError):
            pass
        finally:
            writer.close()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)

        held: list = []

        async def start() -> None:
            # A port free for UDP may be taken for TCP (another test's connection): try a few.
            for _ in range(20):
                udp, _ = await self._loop.create_datagram_endpoint(lambda: _Udp(self), local_addr=("127.0.0.1", 0))
                port = udp.get_extra_info("sockname")[1]
                try:
                    tcp = await asyncio.start_server(self._tcp, "127.0.0.1", port)
                except OSError:
                    udp.close()
                    continue
                self.port = port
                self._udp_fd = udp.get_extra_info("socket").fileno()
                held.extend([udp, tcp])
                self._ready.set()
                return

        async def shutdown() -> None:
            for thing in held:
                thing.close()
            tasks = [t for t in asyncio.all_tasks(self._loop) if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        self._loop.run_until_complete(start())
        self._loop.run_forever()
        self._loop.run_until_complete(shutdown())
        self._loop.close()

    def __enter__(self) -> HostileResponder:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the hostile responder did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self.other.close()
        if self._raw is not None:
            self._raw.close()
