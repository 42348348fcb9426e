"""How check_host drives pyspf: one run per evaluation, suspended in a greenlet while DNS is asked.

The DNS here is a small transport of this file's own behind our real
Resolver, Cache and Session: it answers from a table after a delay of the
test's choosing, or never (a server that stalls, which knot does not do on
demand), so a test can stop a check while pyspf waits inside a lookup.
"""

from __future__ import annotations

import asyncio
import gc
import ipaddress
import threading
import weakref
from collections.abc import Iterator

import greenlet
import pytest
import spf

from rspamd_regcheck import Budget, Cache, Resolver, Session, _spf
from rspamd_regcheck._answer import DnsAnswer, DnsStatus
from rspamd_regcheck._spf import SpfEvaluation, check_host
from rspamd_regcheck._wire import RType

CLIENT = ipaddress.ip_address("192.0.2.10")
BOUND = 5.0  # seconds: nothing here waits on purpose for more than 0.05 s


class TableTransport:
    """Answers (name, type) from a table; a name in *stall* is never answered, a (name, type) in
    *fail* gets SERVFAIL."""

    timeout = 5.0  # the Transport interface: the longest an ask takes

    def __init__(
        self,
        table: dict[tuple[str, str], tuple],
        stall: frozenset[str] = frozenset(),
        delay: float = 0.0,
        fail: frozenset[tuple[str, str]] = frozenset(),
    ):
        self.table = {(name, RType[qtype]): records for (name, qtype), records in table.items()}
        self.stall = stall
        self.delay = delay
        self.fail = {(name, RType[qtype]) for name, qtype in fail}
        self.asked: list[tuple[str, str]] = []
        self.stalled = asyncio.Event()

    async def ask(self, name: str, rtype: RType) -> DnsAnswer:
        self.asked.append((name, rtype.name))
        if name in self.stall:
            self.stalled.set()
            await asyncio.Future()  # never answered
        await asyncio.sleep(self.delay)
        if (name, rtype) in self.fail:
            return DnsAnswer(DnsStatus.SERVFAIL, detail="server failure")
        records = self.table.get((name, rtype))
        if records is not None:
            return DnsAnswer(DnsStatus.OK, records, ttl=300)
        if any(owner == name for owner, _ in self.table):
            return DnsAnswer(DnsStatus.NODATA, ttl=300)
        return DnsAnswer(DnsStatus.NXDOMAIN, ttl=300)

    def close(self) -> None:
        pass


def session_for(transport: TableTransport, cap: int = 100, deadline: float | None = None) -> Session:
    return Session(Resolver(transport, Cache()), cap=cap, deadline=deadline)  # type: ignore[arg-type]


@pytest.fixture(autouse=True)
def own_runners(monkeypatch) -> None:
    """A pool of idle runners for this test alone."""
    monkeypatch.setattr(_spf, "_threads", threading.local())


def in_pyspf(runners: list[greenlet.greenlet]) -> list[greenlet.greenlet]:
    """Those of *runners* suspended inside pyspf: evaluations not ended."""
    found = []
    for g in runners:
        frame = g.gr_frame
        while frame is not None and frame.f_code.co_filename != spf.__file__:
            frame = frame.f_back
        if frame is not None:
            found.append(g)
    return found


@pytest.fixture
def runs(monkeypatch) -> Iterator[list[greenlet.greenlet]]:
    """The greenlet each pyspf ``check()`` ran in, one entry per call.

    Held here, so the garbage collector cannot end one the code left suspended.
    """
    seen: list[greenlet.greenlet] = []
    real = spf.query.check

    def counted(self, spf=None):
        seen.append(greenlet.getcurrent())
        return real(self, spf)

    monkeypatch.setattr(spf.query, "check", counted)
    yield seen


@pytest.fixture
def lookups(monkeypatch) -> list[tuple[str, str]]:
    """Every lookup pyspf made, asked over DNS or not."""
    seen: list[tuple[str, str]] = []
    real = spf.DNSLookup

    def logged(name, qtype, strict=True, timeout=None):
        seen.append((name, qtype))
        return real(name, qtype, strict, timeout)

    monkeypatch.setattr(spf, "DNSLookup", logged)
    return seen


def evaluate(transport: TableTransport, sender: str, **kw) -> SpfEvaluation:
    async def go() -> SpfEvaluation:
        async with asyncio.timeout(BOUND):
            session = session_for(transport, cap=kw.pop("cap", 100))
            return await check_host(session, Budget(kw.pop("budget", 30)), CLIENT, sender, "mx", **kw)

    return asyncio.run(go())


def txt(text: str) -> tuple[str, ...]:
    return (text,)


# -- one run per evaluation ---------------------------------------------------------------

SHAPES = [
    pytest.param(
        {
            ("s.example", "TXT"): txt("v=spf1 include:_spf.s.example mx -all"),
            ("_spf.s.example", "TXT"): txt("v=spf1 ip4:198.51.100.0/24 -all"),
            ("s.example", "MX"): ((10, "mx.s.example"),),
            ("mx.s.example", "A"): ("192.0.2.10",),
        },
        "pass",
        4,
        id="include-then-mx",
    ),
    pytest.param(
        {
            ("s.example", "TXT"): txt("v=spf1 a a:b.s.example exists:%{i}.e.s.example -all"),
            ("s.example", "A"): ("192.0.2.1",),
            ("b.s.example", "A"): ("192.0.2.2",),
            ("192.0.2.10.e.s.example", "A"): ("127.0.0.2",),
        },
        "pass",
        4,
        id="a-a-exists",
    ),
    pytest.param(
        {
            ("s.example", "TXT"): txt("v=spf1 exp=why.s.example a -all"),
            ("s.example", "A"): ("192.0.2.1",),
            ("why.s.example", "TXT"): txt("%{i} may not send for %{d}"),
        },
        "fail",
        3,
        id="exp-fetched-inside-pyspf-catch-all",
    ),
    pytest.param(
        {
            ("s.example", "TXT"): txt("v=spf1 ptr -all"),
            ("10.2.0.192.in-addr.arpa", "PTR"): ("mx.s.example", "other.example"),
            ("mx.s.example", "A"): ("192.0.2.10",),
        },
        "pass",
        4,
        id="ptr-validated",
    ),
]


@pytest.mark.parametrize("table,result,questions", SHAPES)
def test_pyspf_runs_once_per_evaluation(runs, table, result, questions):
    transport = TableTransport(table)
    ev = evaluate(transport, "a@s.example")
    assert ev.result == result
    assert len(transport.asked) == questions  # each one a suspension, not a run of pyspf from the start
    assert len(runs) == 1
    assert not in_pyspf(runs)


def test_the_exp_text_is_asked_where_pyspf_asks_it(lookups):
    """No exception for a missing answer: pyspf's ``except: pass`` around exp= sees none, the text is used."""
    table = SHAPES[2].values[0]
    transport = TableTransport(table)
    ev = evaluate(transport, "a@s.example")
    assert (ev.result, ev.explanation) == ("fail", "192.0.2.10 may not send for s.example")
    assert transport.asked == [("s.example", "TXT"), ("why.s.example", "TXT"), ("s.example", "A")]
    assert lookups == transport.asked  # each lookup once: none repeated by a second run


# -- many checks on one loop --------------------------------------------------------------

SHARED = {
    ("s.example", "TXT"): txt("v=spf1 include:inc.s.example mx -all"),
    ("inc.s.example", "TXT"): txt("v=spf1 a:h.s.example -all"),
    ("s.example", "MX"): ((10, "mx.s.example"),),
}


def test_interleaved_checks_each_get_their_own_answers(runs):
    """The same names, answered differently for each check (its own resolver): each sees only its own.

    A lookup that reached another check's answers or session would see another
    address (and fail), or count a question on the wrong session.
    """
    n = 40
    in_flight = 0
    most = 0

    class Counting(TableTransport):
        async def ask(self, name: str, rtype: RType) -> DnsAnswer:
            nonlocal in_flight, most
            in_flight += 1
            most = max(most, in_flight)
            try:
                return await super().ask(name, rtype)
            finally:
                in_flight -= 1

    async def one(i: int) -> tuple[SpfEvaluation, SpfEvaluation, int]:
        table = {**SHARED, ("h.s.example", "A"): (f"192.0.2.{i}",), ("mx.s.example", "A"): (f"198.51.100.{i}",)}
        transport = Counting(table, delay=0.001 * ((i * 7) % 5))
        session = session_for(transport)
        mine = await check_host(session, Budget(30), ipaddress.ip_address(f"192.0.2.{i}"), "a@s.example", "mx")
        by_mx = await check_host(session, Budget(30), ipaddress.ip_address(f"198.51.100.{i}"), "a@s.example", "mx")
        return mine, by_mx, session.count

    async def go() -> list[tuple[SpfEvaluation, SpfEvaluation, int]]:
        async with asyncio.timeout(BOUND):
            return await asyncio.gather(*(one(i) for i in range(1, n + 1)))

    got = asyncio.run(go())
    assert most > n // 2  # the evaluations really were suspended together
    for i, (mine, by_mx, count) in enumerate(got, start=1):
        assert (mine.result, mine.mechanism) == ("pass", "include:inc.s.example"), i
        assert (by_mx.result, by_mx.mechanism) == ("pass", "mx"), i
        assert count == 3 + 5, i  # s TXT, inc TXT, h A; then those again (cached), s MX and mx A
    assert len(runs) == 2 * n and not in_pyspf(runs)
    assert len(set(runs)) <= most  # a runner is used again once its evaluation has ended


# -- ending a suspended evaluation --------------------------------------------------------

STALLED = {
    ("s.example", "TXT"): txt("v=spf1 exp=why.s.example include:stall.example a:after.example -all"),
    ("why.s.example", "TXT"): txt("no"),
    ("after.example", "A"): ("192.0.2.10",),
}


class FailingSession(Session):
    """A session whose question for one name fails with an error nothing expected."""

    async def query(self, name: str, rdtype: str | RType, budget: Budget | None = None) -> DnsAnswer:
        if name == "stall.example":
            raise RuntimeError("a bug while asking")
        return await super().query(name, rdtype, budget)


async def cancelled(task: asyncio.Task, transport: TableTransport) -> None:
    await transport.stalled.wait()
    task.cancel()
    await task


async def deadline(task: asyncio.Task, transport: TableTransport) -> None:
    async with asyncio.timeout(0.05):  # the check's deadline, as the worker arms it around a check
        await asyncio.shield(task)


async def failed(task: asyncio.Task, transport: TableTransport) -> None:
    await task


ENDINGS: list = [
    pytest.param(Session, cancelled, asyncio.CancelledError, id="cancelled"),
    pytest.param(Session, deadline, TimeoutError, id="deadline-cancels-the-check"),
    pytest.param(FailingSession, failed, RuntimeError, id="error-while-asking"),
]


@pytest.mark.parametrize("session_class,how,raised", ENDINGS)
def test_a_check_stopped_while_pyspf_waits_ends_its_greenlet(runs, session_class, how, raised):
    """Nothing of the evaluation is left suspended for the garbage collector to end."""
    transport = TableTransport(STALLED, stall=frozenset({"stall.example"}))

    async def go() -> None:
        session = session_class(Resolver(transport, Cache()), cap=100)
        task = asyncio.ensure_future(check_host(session, Budget(30), CLIENT, "a@s.example", "mx"))
        async with asyncio.timeout(BOUND):
            await how(task, transport)

    with pytest.raises(raised):
        asyncio.run(go())
    assert len(runs) == 1 and runs[0].evaluation is None  # idle, kept for the next evaluation
    assert not in_pyspf(runs)
    assert ("after.example", "A") not in transport.asked


def test_a_catch_all_that_swallows_the_kill_still_ends_at_once(runs, lookups):
    """Stopped while pyspf fetches the exp= text (inside its ``except: pass``): the next lookup ends it."""
    table = {
        ("s.example", "TXT"): txt("v=spf1 exp=why.s.example a:after.example -all"),
        ("after.example", "A"): ("192.0.2.10",),
    }
    transport = TableTransport(table, stall=frozenset({"why.s.example"}))

    async def go() -> None:
        task = asyncio.ensure_future(check_host(session_for(transport), Budget(30), CLIENT, "a@s.example", "mx"))
        async with asyncio.timeout(BOUND):
            await cancelled(task, transport)

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(go())
    assert not in_pyspf(runs)
    assert lookups == [("s.example", "TXT"), ("why.s.example", "TXT"), ("after.example", "A")]
    assert transport.asked == [("s.example", "TXT"), ("why.s.example", "TXT")]  # after.example: not asked


def test_too_many_waits_end_the_evaluation(runs, monkeypatch):
    monkeypatch.setattr(_spf, "MAX_SUSPENSIONS", 2)
    transport = TableTransport(SHAPES[0].values[0])
    ev = evaluate(transport, "a@s.example")
    assert (ev.result, ev.detail, ev.domain) == ("temperror", "more than 2 DNS waits in one evaluation", "s.example")
    assert len(transport.asked) == 2
    assert not in_pyspf(runs)


def test_a_legal_record_may_wait_more_than_64_times(runs):
    """Ten mx terms of ten hosts each: 111 questions, all within RFC 7208's limits; with a
    budget that allows them, the evaluation reaches its answer (the old cap of 64 waits gave a
    temperror, which defers the mail)."""
    record = " ".join(["v=spf1", *(f"mx:m{i}.example" for i in range(10)), "-all"])
    table: dict[tuple[str, str], tuple] = {("s.example", "TXT"): txt(record)}
    for i in range(10):
        table[(f"m{i}.example", "MX")] = tuple((10, f"h{j}.m{i}.example") for j in range(10))
        for j in range(10):
            table[(f"h{j}.m{i}.example", "A")] = ("198.51.100.1",)
    transport = TableTransport(table)
    ev = evaluate(transport, "a@s.example", budget=200, cap=300)
    assert (ev.result, ev.detail) == ("fail", ""), (ev.result, ev.detail, ev.explanation)
    assert len(transport.asked) == 111
    assert len(runs) == 1 and not in_pyspf(runs)


def test_the_budget_spent_while_suspended(runs):
    transport = TableTransport(SHAPES[0].values[0])
    ev = evaluate(transport, "a@s.example", budget=2)
    assert (ev.result, ev.detail) == (None, "method budget of 2 queries spent")
    assert len(transport.asked) == 2
    assert len(runs) == 1 and not in_pyspf(runs)


def test_the_deadline_passing_while_suspended_is_a_temperror(runs):
    """The session's own deadline answers the stalled question: pyspf resumes and reports it."""
    transport = TableTransport(STALLED, stall=frozenset({"stall.example"}))

    async def go() -> SpfEvaluation:
        loop = asyncio.get_running_loop()
        session = session_for(transport, deadline=loop.time() + 0.05)
        async with asyncio.timeout(BOUND):
            return await check_host(session, Budget(30), CLIENT, "a@s.example", "mx")

    ev = asyncio.run(go())
    assert ev.result == "temperror" and "check deadline passed" in ev.explanation
    assert len(runs) == 1 and not in_pyspf(runs)


def test_idle_runners_beyond_the_limit_are_ended(runs, monkeypatch):
    monkeypatch.setattr(_spf, "MAX_IDLE_RUNNERS", 2)
    table = SHAPES[0].values[0]

    async def go() -> list[SpfEvaluation]:
        async with asyncio.timeout(BOUND):
            return await asyncio.gather(
                *(
                    check_host(session_for(TableTransport(table, delay=0.001)), Budget(30), CLIENT, "a@s.example", "mx")
                    for _ in range(6)
                )
            )

    assert [ev.result for ev in asyncio.run(go())] == ["pass"] * 6
    runners = set(runs)
    assert len(runners) == 6  # all six were suspended at once
    assert sorted(r.dead for r in runners) == [False, False, True, True, True, True]
    assert set(_spf._threads.idle) == {r for r in runners if not r.dead}


@pytest.mark.parametrize("budget", [pytest.param(30, id="returned"), pytest.param(2, id="raised")])
def test_an_idle_runner_keeps_nothing_of_the_evaluation_it_ran(budget):
    transport = TableTransport(SHAPES[0].values[0])

    async def go() -> weakref.ref[Session]:
        session = session_for(transport)
        await check_host(session, Budget(budget), CLIENT, "a@s.example", "mx")
        return weakref.ref(session)

    kept = asyncio.run(go())
    gc.collect()
    assert len(_spf._threads.idle) == 1
    assert kept() is None
