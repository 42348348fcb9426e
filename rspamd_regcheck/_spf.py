"""SPF (RFC 7208) with pyspf, its DNS answered by our DNS layer without blocking the loop.

pyspf is synchronous: every lookup goes through the module-level function
``spf.DNSLookup``.  We point it at a dispatcher that answers from the
current check's answers, or from the shared cache (a synchronous look), and
otherwise raises `_Need`.  The coroutine then asks the question through the
check's DNS session (cache, coalescing, budget, deadline) and runs pyspf
again from the start; pyspf's own work is about 0.1 ms, the questions are
the cost.  ``check()`` never awaits, so one event loop thread can run many
checks this way; no thread pool, no second resolver.

RFC 7208 5.5/7: a DNS error on the A/AAAA lookup of a name found by PTR
(the ``ptr`` mechanism, the ``%{p}`` macro) skips that name; pyspf only does
so for the CNAME loops it follows itself, so the dispatcher answers such a
failure with "no address" for names the evaluation got from a PTR answer.

pyspf swallows any exception in two places (fetching the ``exp=`` text, and
PTR checks in its "harsh" mode, which we do not use).  The dispatcher
therefore also remembers the question it could not answer, and the driver
asks it and runs again even when pyspf returned normally.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import spf

from ._answer import DnsAnswer, DnsStatus
from ._dns import Budget, Session
from ._identity import BadHelo, normalise_helo
from ._types import IPAddress, Method, MethodOutcome, Record, Result
from ._wire import RType

MAX_ROUNDS = 64  # pyspf runs per check; each round adds one answer, so budgets end it sooner


class _Need(Exception):
    """The current pyspf run needs a DNS answer we do not have yet."""

    def __init__(self, key: tuple[str, str]):
        super().__init__(key)
        self.key = key


class _BudgetSpent(Exception):
    """The method's query budget (or the check's cap) is spent."""

    def __init__(self, detail: str):
        super().__init__(detail)
        self.detail = detail


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


class _Lookups:
    """The answers one SPF evaluation has seen, shared by its pyspf runs."""

    def __init__(self, session: Session, budget: Budget):
        self.session = session
        self.budget = budget
        self.answers: dict[tuple[str, str], DnsAnswer] = {}
        self.missing: tuple[str, str] | None = None
        self.ptr_names: set[str] = set()

    def lookup(self, name: str, qtype: str, strict: object = True, timeout: object = None) -> Any:
        key = (name.rstrip(".").lower(), qtype)
        answer = self.answers.get(key)
        if answer is None:
            rtype = _PYSPF_TYPES.get(qtype)
            if rtype is None:
                return []  # type 99 and other types RFC 7208 no longer asks for
            answer = self.session.cached(key[0], rtype, self.budget)
            if answer is None:
                self.missing = key
                raise _Need(key)
            self.answers[key] = answer
        if qtype == "PTR" and answer.status is DnsStatus.OK:
            self.ptr_names.update(str(name).rstrip(".").lower() for name in answer.records)
        elif qtype in ("A", "AAAA") and answer.status.failed and key[0] in self.ptr_names:
            return []  # RFC 7208 5.5/7: skip this PTR name
        return _pyspf_records(key[0], qtype, answer)

    async def fetch(self, key: tuple[str, str]) -> None:
        self.answers[key] = await self.session.query(key[0], key[1], self.budget)


_current: _Lookups | None = None


def _dispatch(name: str, qtype: str, strict: object = True, timeout: object = None) -> Any:
    if _current is None:
        raise spf.TempError("DNS lookup outside a regcheck SPF evaluation")
    return _current.lookup(name, qtype, strict, timeout)


spf.DNSLookup = _dispatch  # every pyspf lookup in this process goes through our DNS layer


@contextlib.contextmanager
def _using(lookups: _Lookups) -> Iterator[None]:
    global _current
    previous, _current = _current, lookups
    try:
        yield
    finally:
        _current = previous


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
    lookups = _Lookups(session, budget)
    for _ in range(MAX_ROUNDS):
        q = spf.query(i=str(ip), s=sender, h=helo, receiver=receiver, strict=True, querytime=0)
        if default_explanation is not None:
            q.set_default_explanation(default_explanation)
        lookups.missing = None
        try:
            with _using(lookups):
                result, _code, explanation = q.check(spf=record)
        except _Need as need:
            key = need.key
        except _BudgetSpent as spent:
            return SpfEvaluation(None, "", "", q.ident, q.d, detail=spent.detail)
        else:
            if lookups.missing is None or lookups.missing in lookups.answers:
                header = q.get_header(result, receiver)
                return SpfEvaluation(result, explanation, header, q.ident, q.d, q.mechanism)
            key = lookups.missing  # asked inside one of pyspf's catch-alls: ask it and run again
        await lookups.fetch(key)
    return SpfEvaluation("temperror", "too many DNS rounds", "", "mailfrom", "", detail="too many DNS rounds")


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
