"""The DNS client's tries, EDNS fallback, dead servers and query IDs, against scripted responders.

A responder here answers the n-th question it gets with the n-th step of its
script (None: no answer at all), and keeps every query for the test to read.
"""

from __future__ import annotations

import asyncio
import gc
import os
import socket
import struct
import time

import pytest
import uvloop

from rspamd_regcheck import Cache, DnsStatus, Resolver, Session, Transport
from rspamd_regcheck._transport import _IDS, _trust_entry, _trusted
from rspamd_regcheck._wire import RType

NAME = "heaven.net.id.regcheck.test"


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request):
    """Each test under both event loops: the worker runs on uvloop (millisecond timers)."""
    if request.param == "uvloop":
        return uvloop.run
    return asyncio.run


def reply_to(query: bytes, rcode: int = 0, txt: bytes = b"v=reg1 svc=S1:A") -> bytes:
    """A reply to *query* with *rcode*; a NOERROR one carries one TXT record."""
    qid = struct.unpack("!H", query[:2])[0]
    end = query.index(b"\x00", 12) + 5
    question = query[12:end]
    if rcode:
        return struct.pack("!HHHHHH", qid, 0x8180 | rcode, 1, 0, 0, 0) + question
    rr = b"\xc0\x0c" + struct.pack("!HHIH", 16, 1, 60, len(txt) + 1) + bytes([len(txt)]) + txt
    return struct.pack("!HHHHHH", qid, 0x8180, 1, 1, 0, 0) + question + rr


def truncated_reply(query: bytes) -> bytes:
    """A reply with TC set and no records: ask again over TCP."""
    qid = struct.unpack("!H", query[:2])[0]
    question = query[12 : query.index(b"\x00", 12) + 5]
    return struct.pack("!HHHHHH", qid, 0x8380, 1, 0, 0, 0) + question


class Scripted(asyncio.DatagramProtocol):
    def __init__(self, script):
        self.script = list(script)
        self.queries: list[bytes] = []

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        self.queries.append(data)
        step = self.script[min(len(self.queries), len(self.script)) - 1]
        if step is not None:
            self.transport.sendto(step(data), addr)


async def responder(script) -> tuple[asyncio.DatagramTransport, Scripted, int]:
    loop = asyncio.get_running_loop()
    proto = Scripted(script)
    transport, _ = await loop.create_datagram_endpoint(lambda: proto, local_addr=("127.0.0.1", 0))
    return transport, proto, transport.get_extra_info("sockname")[1]


def arcount(query: bytes) -> int:
    return struct.unpack("!H", query[10:12])[0]


def closed_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def ask_once(script, **kw):  # type: ignore[no-untyped-def]
    """Ask NAME of a responder scripted with *script*, one try: (answer, the queries it got)."""
    server, proto, port = await responder(script)
    client = Transport([("127.0.0.1", port)], timeout=1.0, tries=1, **kw)
    try:
        return await client.ask(NAME, RType.TXT), proto.queries
    finally:
        client.close()
        server.close()


def test_formerr_is_asked_again_without_edns(run):
    answer, queries = run(ask_once([lambda q: reply_to(q, rcode=1), reply_to]))
    assert answer.status is DnsStatus.OK
    assert [arcount(q) for q in queries] == [1, 0]  # with the OPT record, then without


def no_records(query: bytes) -> bytes:
    """A NOERROR reply to *query* with no records."""
    reply = truncated_reply(query)
    return reply[:2] + b"\x81\x80" + reply[4:]


def with_opt(reply: bytes, extended: int = 0) -> bytes:
    """*reply* with an OPT record (RFC 6891 6.1.2), its TTL carrying the extended RCODE's upper bits."""
    count = struct.unpack("!H", reply[10:12])[0] + 1
    opt = b"\x00" + struct.pack("!HHIH", 41, 1232, extended << 24, 0)
    return reply[:10] + struct.pack("!H", count) + reply[12:] + opt


@pytest.mark.parametrize(
    "step,detail",
    [
        # FORMERR from a server that speaks EDNS (its reply has OPT): the question itself failed
        pytest.param(lambda q: with_opt(reply_to(q, rcode=1)), "FORMERR", id="formerr-with-opt"),
        # BADVERS (16): the header says NOERROR; read alone, it would be an empty answer, cached
        pytest.param(lambda q: with_opt(no_records(q), extended=1), "BADVERS", id="badvers"),
    ],
)
def test_edns_is_kept_when_the_server_speaks_it(run, step, detail):
    answer, queries = run(ask_once([step]))
    assert (answer.status, answer.detail) == (DnsStatus.ERROR, detail)
    assert [arcount(q) for q in queries] == [1]  # not asked again without EDNS


def test_a_lost_reply_is_asked_again_after_its_share_of_the_timeout(run):
    async def go():
        server, proto, port = await responder([None, reply_to])
        client = Transport([("127.0.0.1", port)], timeout=0.6, tries=2)
        try:
            started = time.monotonic()
            answer = await client.ask(NAME, RType.TXT)
            return answer, time.monotonic() - started, proto.queries
        finally:
            client.close()
            server.close()

    answer, elapsed, queries = run(go())
    assert answer.status is DnsStatus.OK
    assert len(queries) == 2 and queries[0][:2] != queries[1][:2]  # a new ID for the new try
    assert 0.3 <= elapsed < 0.6 * 3  # the first try waited its 0.3 s; generous upper bound


def test_a_dead_server_fails_at_once_and_the_next_one_answers(run):
    async def go():
        server, proto, port = await responder([reply_to])
        client = Transport([("127.0.0.1", closed_udp_port()), ("127.0.0.1", port)], timeout=4.0, tries=2)
        try:
            started = time.monotonic()
            answer = await client.ask(NAME, RType.TXT)
            return answer, time.monotonic() - started
        finally:
            client.close()
            server.close()

    answer, elapsed = run(go())
    assert answer.status is DnsStatus.OK
    assert elapsed < 2.0  # the refused first try did not wait out its 2 s share


def test_every_silent_question_ends_by_its_timeout(run):
    async def go():
        server, proto, port = await responder([None])
        client = Transport([("127.0.0.1", port)], timeout=0.3, tries=1)
        try:
            started = time.monotonic()
            answers = await asyncio.gather(*(client.ask(f"q{i}.example", RType.TXT) for i in range(300)))
            # sent at once from 64 ports: the responder's receive buffer may drop some of them
            return answers, time.monotonic() - started, client.sent
        finally:
            client.close()
            server.close()

    answers, elapsed, asked = run(go())
    assert {a.status for a in answers} == {DnsStatus.TIMEOUT}
    assert asked == 300
    assert 0.3 <= elapsed < 0.3 * 3


def test_close_ends_waiting_questions_at_once(run):
    async def go():
        server, _, port = await responder([None])
        client = Transport([("127.0.0.1", port)], timeout=10.0, tries=1)
        pending = asyncio.ensure_future(client.ask(NAME, RType.TXT))
        await asyncio.sleep(0.05)
        started = time.monotonic()
        client.close()
        answer = await pending
        server.close()
        return answer, time.monotonic() - started

    answer, elapsed = run(go())
    assert answer.status is DnsStatus.ERROR and "closed" in answer.detail
    assert elapsed < 1.0


def test_a_name_that_cannot_be_sent_is_an_error_not_a_hang(run):
    async def go():
        client = Transport([("127.0.0.1", closed_udp_port())], timeout=10.0)
        try:
            return await asyncio.wait_for(client.ask("x" * 70 + ".example", RType.TXT), 5)
        finally:
            client.close()

    answer = run(go())
    assert answer.status is DnsStatus.ERROR and "cannot ask" in answer.detail


def test_query_ids_are_spread_and_not_shared_with_a_forked_child():
    ids = [_IDS.next() for _ in range(2000)]
    assert len(set(ids)) > 1900  # 2,000 draws from 65,536: about 30 repeats expected
    assert max(ids) > 60000 and min(ids) < 5000

    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next IDs, from a buffer of its own
        os.write(write, struct.pack("!8H", *(_IDS.next() for _ in range(8))))
        os._exit(0)
    os.close(write)
    child = struct.unpack("!8H", os.read(read, 16))
    os.close(read)
    os.waitpid(pid, 0)
    parent = tuple(_IDS.next() for _ in range(8))
    assert child != parent


def test_a_retry_re_sent_during_a_timeout_sweep_keeps_its_full_try(run):
    """Server B starts refusing while questions wait on A and B.  The sweep that times
    them out re-sends some to B, whose refusal fails the questions still in the swept
    bucket at once; each must still get its full try on A (0.3 s), not be cut short."""

    async def go():
        a_server, _, a_port = await responder([None])
        b_server, _, b_port = await responder([None])
        client = Transport([("127.0.0.1", a_port), ("127.0.0.1", b_port)], timeout=0.9, tries=3)
        loop = asyncio.get_running_loop()
        ended: dict[int, list[float]] = {}
        try:
            await client.ask("warm.example", RType.TXT)  # open both sockets (A answers nothing)
            client._next = 1
            await client.ask("warm-b.example", RType.TXT)
            started = loop.time()
            for i in range(40):
                client._next = i % 2
                client.start(f"q{i}.example", RType.TXT, lambda i, _: ended.setdefault(i, []).append(loop.time()), i)
            b_server.close()  # B refuses from now on (ICMP port unreachable)
            await asyncio.sleep(1.5)
            return {i: [t - started for t in times] for i, times in ended.items()}
        finally:
            client.close()
            a_server.close()

    ended = run(go())
    assert sorted(ended) == list(range(40)) and all(len(times) == 1 for times in ended.values())
    early = {i: round(times[0], 3) for i, times in ended.items() if times[0] < 0.55}
    assert not early  # every question had two full tries on A (0.3 s each)


@pytest.mark.filterwarnings("ignore::ResourceWarning")  # the first loop's socket: see below
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_resolver_used_again_from_a_new_event_loop_answers():
    """A question left in flight when its event loop ended must not hold the name (or the
    only slot on the wire) for the next loop.  (The first loop ends with its socket open,
    which is the point; asyncio cannot close it once its loop is closed.)"""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        resolver = Resolver(Transport([silent.getsockname()], timeout=0.5, tries=1), Cache(), max_inflight=1)

        async def leave_in_flight():
            resolver.fetch("a.example", RType.A)
            await asyncio.sleep(0.05)

        async def ask(name):
            started = time.monotonic()
            try:
                answer = await asyncio.wait_for(resolver.query(name, RType.A), 5)
            finally:
                resolver.close()
            return answer, time.monotonic() - started

        asyncio.run(leave_in_flight())
        for name in ("a.example", "b.example"):
            answer, elapsed = asyncio.run(ask(name))
            assert answer.status is DnsStatus.TIMEOUT and elapsed < 0.5 * 3
    gc.collect()  # the first loop's socket goes here, under this test's warning filters


def test_close_during_tcp_fallback_ends_the_question_and_sends_nothing_more(run):
    async def go():
        loop = asyncio.get_running_loop()

        async def stall(reader, writer):
            await asyncio.sleep(0.3)
            writer.close()  # accepted, then dropped without an answer

        tcp = await asyncio.start_server(stall, "127.0.0.1", 0)
        port = tcp.sockets[0].getsockname()[1]
        udp, proto = await loop.create_datagram_endpoint(
            lambda: Scripted([truncated_reply]), local_addr=("127.0.0.1", port)
        )
        client = Transport([("127.0.0.1", port)], timeout=2.0, tries=2)
        answers = []
        client.start(NAME, RType.TXT, lambda _, answer: answers.append(answer), None)
        await asyncio.sleep(0.1)  # over TCP by now
        client.close()
        await asyncio.sleep(0.6)  # past the TCP drop: a second try would go out now
        udp.close()
        tcp.close()
        return answers, len(proto.queries), client.tcp

    answers, udp_queries, tcp = run(go())
    assert tcp == 1
    assert [a.detail for a in answers] == ["DNS client closed"]
    assert udp_queries == 1  # no try after close


def test_questions_waiting_for_a_slot_end_by_the_check_deadline(run):
    """One question on the wire at a time, 0.4 s each: the sixth would wait 2.4 s for its
    turn; a check's deadline of 1 s ends it first."""

    async def go():
        server, _, port = await responder([None])
        resolver = Resolver(Transport([("127.0.0.1", port)], timeout=0.4, tries=1), Cache(), max_inflight=1)
        loop = asyncio.get_running_loop()
        started = loop.time()

        async def check(i):
            session = Session(resolver, cap=10, deadline=started + 1.0)
            answer = await session.query(f"q{i}.example", RType.TXT)
            return answer.status, loop.time() - started

        try:
            return await asyncio.gather(*(check(i) for i in range(6)))
        finally:
            resolver.close()
            server.close()

    results = run(go())
    assert {status for status, _ in results} == {DnsStatus.TIMEOUT}
    assert max(elapsed for _, elapsed in results) < 1.0 * 1.8


def test_a_bug_while_opening_a_socket_ends_the_question(run, monkeypatch):
    """Not an OSError (a bug): the question still ends, and the next one for the name is asked."""
    from rspamd_regcheck._transport import _Socket

    real_init = _Socket.__init__

    def broken_init(self, server, loop):
        raise RuntimeError("a bug")

    async def go():
        server, _, port = await responder([reply_to])
        resolver = Resolver(Transport([("127.0.0.1", port)], timeout=0.5), Cache())
        try:
            monkeypatch.setattr(_Socket, "__init__", broken_init)
            first = await asyncio.wait_for(resolver.query(NAME, RType.TXT), 5)
            monkeypatch.setattr(_Socket, "__init__", real_init)
            second = await asyncio.wait_for(resolver.query(NAME, RType.TXT), 5)
            return first, second
        finally:
            resolver.close()
            server.close()

    first, second = run(go())
    assert first.status is DnsStatus.ERROR and "RuntimeError" in first.detail
    assert second.status is DnsStatus.OK


def test_a_transport_closed_before_use_sends_nothing(run):
    async def go():
        server, proto, port = await responder([reply_to])
        client = Transport([("127.0.0.1", port)], timeout=0.5)
        client.close()
        answer = await client.ask(NAME, RType.TXT)
        server.close()
        return answer, len(proto.queries)

    answer, asked = run(go())
    assert answer.status is DnsStatus.ERROR and "closed" in answer.detail
    assert asked == 0


# -- the pool of source ports (RFC 5452 9.2) -------------------------------------------------


class Logging(Scripted):
    """A scripted responder that also keeps each query's source address."""

    def __init__(self, script):
        super().__init__(script)
        self.addrs: list[tuple[str, int]] = []

    def datagram_received(self, data, addr):
        self.addrs.append(addr)
        super().datagram_received(data, addr)


async def logging_responder(script):
    loop = asyncio.get_running_loop()
    proto = Logging(script)
    transport, _ = await loop.create_datagram_endpoint(lambda: proto, local_addr=("127.0.0.1", 0))
    return transport, proto, transport.get_extra_info("sockname")[1]


def test_a_new_socket_opens_after_the_answer_is_handed_over(run):
    """Rotation is off the path of the reply waited for: when the answer of the try that makes a
    new socket due reaches its caller, nothing has been opened yet; one loop turn later it has."""

    async def go():
        server, proto, port = await logging_responder([reply_to])
        client = Transport([("127.0.0.1", port)], timeout=1.0, sockets=4, rotate_every=2)
        seen: list[tuple[int, int]] = []  # (tries sent, sockets opened) as each answer is handed over

        def handed_over(fut, answer):
            seen.append((client.sent, client.opened))
            fut.set_result(answer)

        try:
            for i in range(6):
                done = asyncio.get_running_loop().create_future()
                client.start(f"q{i}.example", RType.TXT, handed_over, done)
                assert (await done).status is DnsStatus.OK
            await asyncio.sleep(0)
            return seen, client.opened
        finally:
            client.close()
            server.close()

    seen, opened = run(go())
    # The pool of 4 opens with the first try; tries 2, 4 and 6 each owe one more socket.
    assert seen == [(1, 4), (2, 4), (3, 5), (4, 5), (5, 6), (6, 6)]
    assert opened == 7


def test_each_try_leaves_from_a_port_drawn_from_the_pool(run):
    async def go():
        server, proto, port = await logging_responder([reply_to])
        client = Transport([("127.0.0.1", port)], timeout=1.0, sockets=64, rotate_every=10_000)
        try:
            for i in range(640):
                await client.ask(f"q{i}.example", RType.TXT)
            return [p for _, p in proto.addrs], client.open_sockets
        finally:
            client.close()
            server.close()

    ports, open_sockets = run(go())
    assert open_sockets == 64
    counts = {p: ports.count(p) for p in set(ports)}
    assert len(counts) == 64  # every socket of the pool served; one port per socket
    assert max(counts.values()) < 640 / 64 * 3  # drawn evenly: ~10 tries each


@pytest.mark.parametrize("sockets,rotate_every", [(64, 4), (8, 2), (1, 3)])
def test_no_port_lives_longer_than_the_pool_size_times_rotate_every(run, monkeypatch, sockets, rotate_every):
    """A socket leaves the draw within sockets x rotate_every tries (+1: the try that rotates)
    of opening, and closes once idle.  (Counted at the client: the kernel may give a port
    number again to a later socket.)"""
    from rspamd_regcheck._transport import _Socket

    born: dict[int, int] = {}
    lives: list[int] = []
    real_open, real_retire = Transport._open, Transport._retire

    def open_(self, server):
        failed = real_open(self, server)
        born[id(server.live[-1])] = self.sent
        return failed

    def retire(self, sock: _Socket):
        if not sock.retired:
            lives.append(self.sent - born[id(sock)])
        real_retire(self, sock)

    monkeypatch.setattr(Transport, "_open", open_)
    monkeypatch.setattr(Transport, "_retire", retire)

    async def go():
        server, proto, port = await logging_responder([reply_to])
        client = Transport([("127.0.0.1", port)], timeout=5.0, sockets=sockets, rotate_every=rotate_every)
        try:
            for i in range(sockets * rotate_every * 4):
                await client.ask(f"q{i}.example", RType.TXT)
            await asyncio.sleep(0)  # the socket the last try owes opens once its answer is handed over
            return client.sent, client.open_sockets, client.opened
        finally:
            client.close()
            server.close()

    asked, open_sockets, opened = run(go())
    assert asked >= sockets * rotate_every * 4  # (a reply lost under load costs a retry)
    assert len(lives) >= asked // rotate_every - sockets
    assert max(lives) <= sockets * rotate_every + 1
    assert open_sockets == sockets  # retired sockets were closed once idle
    assert opened == sockets + asked // rotate_every


def test_a_reply_counts_only_on_the_socket_its_try_left_from(run):
    """The genuine reply, sent to another of the client's own ports, is dropped: the try waits."""

    async def go():
        sent_to = []

        def elsewhere(query):
            return reply_to(query)

        server, proto, port = await logging_responder([None])
        client = Transport([("127.0.0.1", port)], timeout=0.4, tries=1, sockets=4, rotate_every=10_000)
        try:
            task = asyncio.ensure_future(client.ask(NAME, RType.TXT))
            while not proto.queries:
                await asyncio.sleep(0.005)
            query, (_, asked_from) = proto.queries[0], proto.addrs[0]
            others = [s.sock.getsockname()[1] for s in client._servers[0].live]
            for other in others:
                if other != asked_from:
                    server.sendto(elsewhere(query), ("127.0.0.1", other))
                    sent_to.append(other)
            answer = await task
            return answer, len(sent_to), client.dropped
        finally:
            client.close()
            server.close()

    answer, sent, dropped = run(go())
    assert sent == 3 and dropped == 3
    assert answer.status is DnsStatus.TIMEOUT


def test_an_icmp_error_fails_nothing_but_costs_a_re_send(run):
    """A socket closed under the client (as an ICMP error does) retires only that socket; its tries
    go out again from another socket within their try, and the questions elsewhere wait on."""

    async def go():
        server, proto, port = await logging_responder([None])
        client = Transport([("127.0.0.1", port)], timeout=1.0, tries=1, sockets=8, rotate_every=10_000)
        try:
            tasks = [asyncio.ensure_future(client.ask(f"q{i}.example", RType.TXT)) for i in range(40)]
            while len(proto.queries) < 40:
                await asyncio.sleep(0.005)
            victim = client._servers[0].live[0]
            on_victim = len(victim.pending)
            client._refused(victim, "forged: port unreachable")
            await asyncio.sleep(0.05)
            for query, addr in zip(proto.queries, proto.addrs, strict=True):  # to the victim's port: dropped
                server.sendto(reply_to(query), addr)
            answers = await asyncio.gather(*tasks)
            return answers, on_victim, len(proto.queries), client.refusals, victim.closed
        finally:
            client.close()
            server.close()

    answers, on_victim, asked, refusals, closed = run(go())
    assert on_victim > 0 and refusals == 1 and closed
    assert asked == 40 + on_victim  # only the victim's questions were sent again
    assert {a.status for a in answers} == {DnsStatus.OK}


def test_case_randomised_questions_want_the_case_echoed(run):
    """0x20: a reply whose question is in another case than asked is dropped."""

    def lowered(query: bytes) -> bytes:
        end = query.index(b"\x00", 12) + 5
        return reply_to(query[:12] + query[12:end].lower() + query[end:])

    def echoed(query: bytes) -> bytes:
        return reply_to(query)

    lowered_answer, (query,) = run(ask_once([lowered], case_randomise=True))
    echoed_answer, _ = run(ask_once([echoed], case_randomise=True))
    assert query[12:].lower() != query[12:]  # asked in mixed case (22 letters: all lower has odds 2^-22)
    assert lowered_answer.status is DnsStatus.TIMEOUT
    assert echoed_answer.status is DnsStatus.OK


@pytest.mark.parametrize(
    "host,trusted,expected",
    [
        pytest.param("127.0.0.1", (), True, id="loopback"),
        pytest.param("127.0.0.53", (), True, id="loopback-net"),
        pytest.param("::1", (), True, id="loopback-v6"),
        pytest.param("192.0.2.53", (), False, id="remote"),
        pytest.param("192.0.2.53", ("192.0.2.53",), True, id="remote-listed"),
        pytest.param("2001:db8::53", ("2001:DB8::53",), True, id="remote-v6-listed"),
        pytest.param("192.0.2.54", ("192.0.2.53",), False, id="remote-not-listed"),
    ],
)
def test_whose_ad_bit_counts(host, trusted, expected):
    assert Transport([(host, 53)], trusted=trusted)._servers[0].trusted is expected


def test_a_forked_child_opens_sockets_of_its_own():
    def ports(client):
        return sorted(s.sock.getsockname()[1] for s in client._servers[0].live)

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        client = Transport([silent.getsockname()], timeout=0.2, tries=1, sockets=4)
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(client.ask(NAME, RType.TXT))  # opens the parent's sockets
            parent = ports(client)
            read, write = os.pipe()
            pid = os.fork()
            if pid == 0:  # the child: a loop of its own, as a worker process has
                try:
                    asyncio.new_event_loop().run_until_complete(client.ask(NAME, RType.TXT))
                    os.write(write, struct.pack("!4H", *ports(client)))
                finally:
                    os._exit(0)
            os.close(write)
            child = list(struct.unpack("!4H", os.read(read, 8)))
            os.close(read)
            os.waitpid(pid, 0)
            assert loop.run_until_complete(client.ask(NAME, RType.TXT)).status is DnsStatus.TIMEOUT
            still = ports(client)
        finally:
            client.close()
            loop.close()
    assert len(parent) == 4 and not set(child) & set(parent)
    assert still == parent  # the child left the parent's sockets alone


def test_a_slow_server_under_load_keeps_at_most_twice_the_pool_open(run):
    """Retired sockets close only once idle; while as many as the pool still wait on a server that
    does not answer, rotation waits (file descriptors stay bounded)."""

    async def go():
        server, proto, port = await logging_responder([None])
        client = Transport([("127.0.0.1", port)], timeout=0.5, tries=1, sockets=8, rotate_every=1)
        try:
            most = 0
            tasks = []
            for i in range(400):
                tasks.append(asyncio.ensure_future(client.ask(f"q{i}.example", RType.TXT)))
                await asyncio.sleep(0)
                most = max(most, client.open_sockets)
            await asyncio.gather(*tasks)
            return most, client.open_sockets
        finally:
            client.close()
            server.close()

    most, after = run(go())
    assert most == 2 * 8
    assert after == 8  # the retired ones closed once their questions timed out


TRUSTED = ("192.0.2.53", "192.0.2.54:5353", "[2001:db8::53]:54")


@pytest.mark.parametrize(
    "host,port,believed",
    [
        pytest.param("127.0.0.1", 53, True, id="loopback"),
        pytest.param("::1", 5353, True, id="loopback-v6"),
        pytest.param("192.0.2.53", 53, True, id="address-any-port"),
        pytest.param("192.0.2.53", 5300, True, id="address-other-port"),
        pytest.param("192.0.2.54", 5353, True, id="host-port"),
        pytest.param("192.0.2.54", 53, False, id="host-port-other-port"),
        pytest.param("2001:db8::53", 54, True, id="v6-port"),
        pytest.param("2001:db8::53", 53, False, id="v6-other-port"),
        pytest.param("192.0.2.99", 53, False, id="not-listed"),
    ],
)
def test_ad_bit_believed_from(host, port, believed):
    assert _trusted(host, port, {_trust_entry(t) for t in TRUSTED}) is believed


def test_transport_takes_trusted_validators_with_ports():
    client = Transport([("192.0.2.54", 5353), ("192.0.2.54", 53)], trusted=TRUSTED)
    try:
        assert [s.trusted for s in client._servers] == [True, False]
    finally:
        client.close()
