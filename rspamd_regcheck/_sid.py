"""Sender ID (RFC 4406, historic) on the Purported Responsible Address (RFC 4407).

The PRA is read from the message's header block.  pyspf has no ``spf2.0``
support, so the record is chosen here and its terms handed to pyspf as a
``v=spf1`` record:

1. TXT records at the PRA domain starting ``spf2.0/`` whose scope list holds
   ``pra`` (``spf2.0/pra``, ``spf2.0/mfrom,pra``): exactly one is used,
   several are a permerror;
2. without one, the domain's ``v=spf1`` record (RFC 4406 3.4), one at most.

Differences from RFC 4406, all written in docs/scoring.md too:
- ``include:`` and ``redirect=`` targets are evaluated by pyspf with their
  ``v=spf1`` records, not their ``spf2.0/pra`` ones;
- ``exp=`` texts and macros are expanded as RFC 7208 does; RFC 4406's
  ``%{p}``-style differences of the PRA scope are not modelled;
- the result is not used to reject before DATA: it is a weighted symbol.
"""

from __future__ import annotations

import email.utils
import re
from collections.abc import Sequence

from ._answer import DnsStatus
from ._dns import Budget, Session
from ._spf import aligned, check_host, spf_record
from ._types import IPAddress, Method, MethodOutcome, Record, Result

_SPF2 = re.compile(r"spf2\.0/(?P<scopes>[A-Za-z0-9,]+)(?:\s|$)", re.IGNORECASE)
_SPF1 = re.compile(r"v=spf1(?:\s|$)", re.IGNORECASE)

Headers = Sequence[tuple[str, str]]


def _mailbox(value: str) -> str | None:
    """The single mailbox of a header value, or None when it is not exactly one with a domain."""
    boxes = [addr for _, addr in email.utils.getaddresses([value]) if addr]
    if len(boxes) != 1:
        return None
    local, at, domain = boxes[0].rpartition("@")
    if not at or not local or not domain or "." not in domain:
        return None
    return boxes[0]


def pra(headers: Headers) -> tuple[str | None, str]:
    """The PRA (RFC 4407 section 2) and the header it came from; (None, why) when there is none.

    1. the first non-empty Resent-Sender, unless a non-empty Resent-From
       precedes it with a Received or Return-Path between them (it then
       belongs to an older resending, and step 2 applies);
    2. the first non-empty Resent-From;
    3. Sender, if there is exactly one (several: no PRA);
    4. From, if there is exactly one (none or several: no PRA);
    5. the chosen header must hold one mailbox with a domain.
    """
    items = [(name.lower(), value.strip()) for name, value in headers]
    chosen: tuple[str, str] | None = None
    for index, (name, value) in enumerate(items):
        if name == "resent-sender" and value:
            older = False
            for before in range(index - 1, -1, -1):
                if items[before][0] == "resent-from" and items[before][1]:
                    older = any(n in ("received", "return-path") for n, _ in items[before + 1 : index])
                    break
            if not older:
                chosen = ("Resent-Sender", value)
            break
    if chosen is None:
        resent_from = next((v for n, v in items if n == "resent-from" and v), None)
        if resent_from is not None:
            chosen = ("Resent-From", resent_from)
    if chosen is None:
        for field, label in (("sender", "Sender"), ("from", "From")):
            values = [v for n, v in items if n == field and v]
            if len(values) > 1:
                return None, f"several {label} headers"
            if len(values) == 1:
                chosen = (label, values[0])
                break
    if chosen is None:
        return None, "no Resent-Sender, Resent-From, Sender or From header"
    mailbox = _mailbox(chosen[1])
    if mailbox is None:
        return None, f"malformed {chosen[0]} header"
    return mailbox, chosen[0]


class SidPermError(Exception):
    """The PRA domain's records make Sender ID's choice ambiguous."""


def select_record(texts: Sequence[str]) -> str | None:
    """The record to evaluate, as ``v=spf1 ...``; None when the domain has none.

    :raises SidPermError: with several candidate records of one kind.
    """
    spf2 = []
    for text in texts:
        m = _SPF2.match(text)
        if m and "pra" in {s.lower() for s in m.group("scopes").split(",")}:
            spf2.append("v=spf1" + text[m.end("scopes") :])
    if len(spf2) > 1:
        raise SidPermError("several spf2.0/pra records")
    if spf2:
        return spf2[0]
    spf1 = [t for t in texts if _SPF1.match(t)]
    if len(spf1) > 1:
        raise SidPermError("several v=spf1 records")
    return spf1[0] if spf1 else None


async def sid_method(
    session: Session,
    budget: Budget,
    record: Record,
    ip: IPAddress,
    helo: str,
    ident: str,
    headers: Headers,
    alignment: str = "relaxed",
    receiver: str = "unknown",
) -> MethodOutcome:
    """Run Sender ID for one check."""
    address, source = pra(headers)
    if address is None:
        return MethodOutcome(Method.SID, Result.NONE, (f"no PRA: {source}",))
    options = [f"pra={address}", f"from-header={source}"]
    if alignment != "none" and not aligned(address, ident):
        # Like SPF's MAIL FROM: a PRA outside the ID says nothing about it.
        return MethodOutcome(Method.SID, Result.NONE, (*options, "unaligned"))
    supplied = record.param(Method.SID)
    if supplied is not None:
        text = select_record([supplied]) if _SPF2.match(supplied) else spf_record(supplied)
        options.append("record=registry")
    else:
        domain = address.rpartition("@")[2].rstrip(".").lower()
        answer = await session.query(domain, "TXT", budget)
        if answer.status is DnsStatus.BUDGET:
            return MethodOutcome(Method.SID, None, ("SID", answer.detail), budget=True)
        if answer.status.failed:
            return MethodOutcome(Method.SID, Result.TEMPERROR, (*options, answer.detail or answer.status.value))
        try:
            text = select_record(answer.records if answer.status is DnsStatus.OK else ())
        except SidPermError as exc:
            return MethodOutcome(Method.SID, Result.PERMERROR, (*options, str(exc)))
    if text is None:
        return MethodOutcome(Method.SID, Result.NONE, (*options, "no record"))
    ev = await check_host(session, budget, ip, address, helo, text, receiver)
    if ev.result is None:
        return MethodOutcome(Method.SID, None, ("SID", ev.detail), budget=True)
    if ev.mechanism:
        options.append(f"mechanism={ev.mechanism}")
    # pyspf writes the header for a MAIL FROM check; this one checked the PRA.
    header = ev.header.replace("identity=mailfrom", "identity=pra").replace("envelope-from=", "pra=")
    headers_out = (("Received-SPF", header),) if header else ()
    return MethodOutcome(Method.SID, Result(ev.result), tuple(options), headers=headers_out)
