"""A DNS responder of the tests' own, for what no real server does on demand.

It serves names under ``hostile.test`` over UDP and TCP from a background
thread.  The first label under the zone decides how it misbehaves:

    late       answers after `LATE` seconds          never      never answers
    servfail   SERVFAIL                              truncated  TC over UDP, the record over TCP
    oversized  a 5,000-byte TXT record (TC, then TCP) malformed  a TXT string longer than its record
    cnameloop  a CNAME chain that loops               wrongid    the answer under another query ID
    wrongname  the answer to another question (a record for ``good``: poison, if it were cached)
    good / anything else   an ordinary record

Registry names are ``<id>.reg.hostile.test``; SPF names ``<behaviour>.spf.hostile.test``.
"""

from __future__ import annotations

import asyncio
import struct
import threading

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.rrset

ZONE = "hostile.test"
LATE = 3.0
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
        self.responder.count(query)
        wire, delay = answer(query, over_tcp=False)
        if wire is not None:
            asyncio.get_running_loop().call_later(delay, self.transport.sendto, wire, addr)


class HostileResponder:
    """Runs in its own thread; `port` is the same for UDP and TCP."""

    def __init__(self) -> None:
        self.port = 0
        self.questions: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def count(self, query: dns.message.Message) -> None:
        q = query.question[0]
        with self._lock:
            self.questions.append((q.name.to_text().rstrip(".").lower(), dns.rdatatype.to_text(q.rdtype)))

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
