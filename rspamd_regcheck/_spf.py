"""SPF (RFC 7208) with pyspf, its DNS answered by our DNS layer without blocking the loop.

pyspf is synchronous: every lookup goes through the module-level function
``spf.DNSLookup``.  Each evaluation runs pyspf's ``check()`` once, in a
greenlet (a `_Runner`) whose parent is the greenlet the event loop runs in.
``spf.DNSLookup`` points at a dispatcher that finds the evaluation by the
greenlet running it (never a global "current check": many evaluations are
suspended on one loop at once) and answers from that evaluation's answers,
or from the shared cache (a synchronous look).  When neither has the
answer, the lookup switches to the parent with the question; the coroutine
asks it through the check's DNS session (cache, coalescing, budget,
deadline) and switches back with the answer, which the lookup returns to
pyspf as if it had been there all along.  pyspf's own work is about 0.1 ms;
the questions are the cost.  No thread pool, no second resolver, and pyspf
never sees an exception for a question not yet answered.

A suspended evaluation is never left for the garbage collector: when the
coroutine stops waiting for it (cancelled by the check's deadline or a
client that went away, an error while asking, too many suspensions) it
throws `_Abandoned` into the runner.  pyspf swallows every exception in two
places (fetching the ``exp=`` text, and PTR checks in its "harsh" mode,
which we do not use), so every later lookup of an abandoned evaluation
raises it again at once, without switching, and pyspf ends in a few steps.

Starting a greenlet costs about 10 us and switching into a live one about
0.5 us, so a runner that has ended its evaluation waits, idle, for the next
one (up to `MAX_IDLE_RUNNERS` per thread; more are ended at once).

RFC 7208 5.5/7: a DNS error on the PTR lookup (the ``ptr`` mechanism, the
``%{p}`` macro) means no match and "unknown", and one on the A/AAAA lookup
of a name found by PTR skips that name; pyspf would make either a
temperror, so the dispatcher answers such a failure with "no records", and
takes back the void lookup pyspf counts for it (a failure is not void).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import greenlet
import spf

from ._answer import DnsAnswer, DnsStatus
from ._dns import Budget, Session
from ._identity import BadHelo, normalise_helo
from ._types import IPAddress, Method, MethodOutcome, Record, Result
from ._wire import RType

# DNS waits per evaluation.  Each asks one question, charged to the method's budget and the check's
# (methods.limits <= 999, dns.max_queries <= 1000), so a budget ends an evaluation first; this is the
# bound should one not.  A legal record may need 100 questions and more (ten mx terms of ten hosts).
MAX_SUSPENSIONS = 1001
MAX_IDLE_RUNNERS = 64  # per thread: a few tens of kB each, kept for the evaluations to come


class _BudgetSpent(Exception):
    """The method's query budget (or the check's cap) is spent."""

    def __init__(self, detail: str):
        super().__init__(detail)
        self.detail = detail


class _Abandoned(BaseException):
    """Thrown into a suspended evaluation the coroutine no longer waits for.

    A BaseException, so pyspf's handlers (TempError, PermError) let it through.
    """


_PYSPF_TYPES = {"A": RType.A, "AAAA": RType.AAAA, "MX": RType.MX, "PTR": RType.PTR, "TXT": RType.TXT}


def _pyspf_records(name: str, qtype: str, answer: DnsAnswer) -> list[tuple[tuple[str, str], Any]]:
    """An answer in the shapes pyspf's DNSLookup returns (TXT: a tuple of bytes strings)."""
    if answer.status is DnsStatus.OK:
        if qtype == "TXT":
            return [((name, qtype), (str(v).encode("latin-1"),)) for v in answer.records]
        return [((name, qtype), v) for v in answer.records]
    if answer.status in (DnsStatus.NXDOMAIN, DnsStatus.NODATA):
        return []
    if answer.status is DnsStatus.BUDGET:
        raise _BudgetSpent(answer.detail)
    raise spf.TempError(f"DNS {answer.detail or answer.status.value} for {name} {qtype}")


class _Evaluation:
    """One pyspf ``check()``: what it asks with, the answers it has seen."""

    def __init__(self, q: spf.query, record: str | None, session: Session, budget: Budget):
        self.q = q
        self.record = record
        self.session = session
        self.budget = budget
        self.answers: dict[tuple[str, str], DnsAnswer] = {}
        self.ptr_names: set[str] = set()
        self.abandoned = False

    def lookup(self, runner: _Runner, name: str, qtype: str) -> Any:
        if self.abandoned:
            raise _Abandoned  # pyspf swallowed the first one: end without asking anything more
        key = (name.rstrip(".").lower(), qtype)
        answer = self.answers.get(key)
        if answer is None:
            rtype = _PYSPF_TYPES.get(qtype)
            if rtype is None:
                return []  # type 99 and other types RFC 7208 no longer asks for
            answer = self.session.cached(key[0], rtype, self.budget)
            if answer is None:
                answer = runner.parent.switch(key)  # check_host asks, and switches back with the answer
            self.answers[key] = answer
        if qtype == "PTR":
            if answer.status is DnsStatus.OK:
                self.ptr_names.update(str(name).rstrip(".").lower() for name in answer.records)
            elif answer.status.failed:
                return self._skip()  # RFC 7208 5.5: ptr does not match; 7.3: %{p} is "unknown"
        elif qtype in ("A", "AAAA") and answer.status.failed and key[0] in self.ptr_names:
            return self._skip()  # RFC 7208 5.5/7: skip this PTR name
        return _pyspf_records(key[0], qtype, answer)

    def _skip(self) -> list[Any]:
        """No records, for a lookup that failed and that RFC 7208 says to pass over.

        pyspf counts every empty answer as a void lookup, but a failed lookup is none (RFC 7208
        4.6.4 counts NXDOMAIN and empty answers only); the names a PTR answer lists are the
        client's to choose, so counting their failures would let it turn a fail into a
        permerror.  The count is taken back here, before pyspf adds it.
        """
        self.q.void_lookups -= 1
        return []


@dataclass(frozen=True, slots=True)
class _Ended:
    """What pyspf's ``check()`` returned or raised."""

    result: tuple[str, int, str] | None
    error: BaseException | None = None


class _Runner(greenlet.greenlet):
    """Runs evaluations one after another, each handed over in `evaluation`.

    Switched into with an evaluation, it switches back with a question while
    one is asked, and with None once the evaluation has ended (the outcome in
    `ended`); switched into without one, it ends.  An idle runner refers to
    nothing of the evaluations it ran.
    """

    def __init__(self, parent: greenlet.greenlet):
        super().__init__(parent=parent)
        self.evaluation: _Evaluation | None = None
        self.ended: _Ended | None = None

    def run(self) -> None:
        while self.evaluation is not None:
            try:
                self.ended = _Ended(self.evaluation.q.check(spf=self.evaluation.record))
            except greenlet.GreenletExit:
                raise
            except BaseException as exc:  # carried to check_host, which raises what it does not handle
                self.ended = _Ended(None, exc)
            self.evaluation = None
            self.parent.switch(None)

    def start(self, evaluation: _Evaluation) -> tuple[str, str] | None:
        """Run *evaluation* until it waits for a question (returned) or ends (None)."""
        self.evaluation = evaluation
        need: tuple[str, str] | None = self.switch()
        return need

    def abandon(self) -> None:
        """End the suspended evaluation now, whatever pyspf does with `_Abandoned`."""
        assert self.evaluation is not None
        self.evaluation.abandoned = True
        need = self.throw(_Abandoned)
        # If pyspf swallowed it, its next lookup raised it again, or it returned: either way it is over.
        assert need is None and self.evaluation is None, need

    def outcome(self) -> _Ended:
        """What the evaluation that has just ended gave; the runner keeps nothing of it."""
        ended, self.ended = self.ended, None
        assert ended is not None
        return ended


_threads = threading.local()  # greenlets switch only within their thread: idle runners are kept per thread


def _runner() -> _Runner:
    """An idle runner whose parent is the current greenlet."""
    here = greenlet.getcurrent()
    idle: list[_Runner] | None = getattr(_threads, "idle", None)
    if not idle:
        return _Runner(here)
    runner = idle.pop()
    if runner.parent is not here:
        runner.parent = here
    return runner


def _done(runner: _Runner) -> None:
    """Keep an idle runner for the next evaluation, or end it."""
    idle: list[_Runner] = _threads.__dict__.setdefault("idle", [])
    if len(idle) < MAX_IDLE_RUNNERS:
        idle.append(runner)
    else:
        runner.switch(None)


def _dispatch(name: str, qtype: str, strict: object = True, timeout: object = None) -> Any:
    runner = greenlet.getcurrent()
    if not isinstance(runner, _Runner) or runner.evaluation is None:
        raise spf.TempError("DNS lookup outside a regcheck SPF evaluation")
    return runner.evaluation.lookup(runner, name, qtype)


spf.DNSLookup = _dispatch  # every pyspf lookup in this process goes through our DNS layer


@dataclass(frozen=True)
class SpfEvaluation:
    """The outcome of one ``check_host()``."""

    result: str | None  # RFC 7208 2.6 spelling; None when the query budget ran out
    explanation: str
    header: str  # the Received-SPF field value (RFC 7208 9.1), "" when the budget ran out
    identity: str  # "mailfrom" or "helo"
    domain: str
    mechanism: str | None = None
    detail: str = ""


def spf_record(text: str) -> str:
    """A registry-supplied record, with ``v=spf1`` prepended when missing."""
    text = text.strip()
    if text.lower() == "v=spf1" or text.lower().startswith("v=spf1 "):
        return text
    return f"v=spf1 {text}"


async def check_host(
    session: Session,
    budget: Budget,
    ip: IPAddress,
    sender: str,
    helo: str,
    record: str | None = None,
    receiver: str = "unknown",
    default_explanation: str | None = None,
) -> SpfEvaluation:
    """Evaluate SPF for *sender* (``""``: the HELO identity, ``postmaster@<helo>``).

    With *record*, that record is evaluated instead of the sender domain's own.
    RFC 7208's limits (10 lookups, 2 void lookups) are pyspf's; the *budget*
    (questions, cache hits included) is ours.
    """
    q = spf.query(i=str(ip), s=sender, h=helo, receiver=receiver, strict=True, querytime=0)
    if default_explanation is not None:
        q.set_default_explanation(default_explanation)
    runner = _runner()
    need = runner.start(_Evaluation(q, record, session, budget))
    try:
        waits = 0
        while need is not None:
            if waits == MAX_SUSPENSIONS:  # a hostile record cannot keep it waiting for ever
                detail = f"more than {MAX_SUSPENSIONS} DNS waits in one evaluation"
                return SpfEvaluation("temperror", detail, "", q.ident, q.d, detail=detail)
            waits += 1
            need = runner.switch(await session.query(need[0], need[1], budget))
    finally:
        if need is not None:
            runner.abandon()  # cancelled or failed while it waited: never left to the collector
        step = runner.outcome()
        _done(runner)
    if isinstance(step.error, _BudgetSpent):
        return SpfEvaluation(None, "", "", q.ident, q.d, detail=step.error.detail)
    if step.error is not None:
        raise step.error
    assert step.result is not None
    result, _code, explanation = step.result
    header = q.get_header(result, receiver)
    return SpfEvaluation(result, explanation, header, q.ident, q.d, q.mechanism)


ALIGNMENTS = ("relaxed", "none")


def aligned(mail_from: str, ident: str) -> bool:
    """True when the MAIL FROM domain is the Registered ID or lies under it."""
    domain = normalise_helo(mail_from.rpartition("@")[2])
    if isinstance(domain, BadHelo):
        return False
    return domain == ident or domain.endswith("." + ident)


def spf_identity(mail_from: str | None, helo: str, ident: str, alignment: str) -> tuple[str, str]:
    """The sender to check and why (docs/scoring.md, "SPF"; RFC 7208 2.2-2.4).

    A null or missing MAIL FROM means the HELO identity (``postmaster@<helo>``).
    With relaxed alignment a MAIL FROM outside the ID is not checked at all:
    its SPF pass would say nothing about the ID, so the HELO identity decides.
    """
    if not mail_from:
        return "", "null-sender"
    if alignment == "none" or aligned(mail_from, ident):
        return mail_from, "mailfrom"
    return "", "unaligned-mailfrom"


async def spf_method(
    session: Session,
    budget: Budget,
    record: Record,
    ip: IPAddress,
    helo: str,
    ident: str,
    mail_from: str | None,
    alignment: str = "relaxed",
    receiver: str = "unknown",
) -> MethodOutcome:
    """Run the SPF method for one check."""
    sender, why = spf_identity(mail_from, helo, ident, alignment)
    supplied = record.param(Method.SPF)
    ev = await check_host(
        session, budget, ip, sender, helo, spf_record(supplied) if supplied is not None else None, receiver
    )
    if ev.result is None:
        return MethodOutcome(Method.SPF, None, ("SPF", ev.detail), budget=True)
    identity = f"mailfrom={ev.domain}" if ev.identity == "mailfrom" else f"helo={helo}"
    options = [identity]
    if why == "unaligned-mailfrom":
        options.append(f"unaligned={mail_from}")
    if supplied is not None:
        options.append("record=registry")
    if ev.mechanism:
        options.append(f"mechanism={ev.mechanism}")
    headers = (("Received-SPF", ev.header),) if ev.header else ()
    return MethodOutcome(Method.SPF, Result(ev.result), tuple(options), headers=headers)
