"""Senders no registry lists (``registry.fallback = "authenticate"``).

Today almost no sender has a registry record.  With the fallback on, an ID
that every registry zone answers NXDOMAIN for is checked as if its record
said ``meth=SPF:<limit>`` (the receiver's own SPF limit), plus ``CSA`` when
the HELO has a ``_client._smtp`` record: no netblocks (no QR1), no
``stop``, no ratings of its own.  Ratings then come only from services that
answer for themselves (`_services`), and the seed's flow decides as usual.
SPF alignment stays on (config refuses the fallback without it), so the SPF
domain must be the HELO or a MAIL FROM under the ID.
"""

from __future__ import annotations

from collections.abc import Mapping

from ._answer import DnsStatus
from ._csa import CSA_VERSION
from ._dns import Session
from ._evaluate import RegistryFacts, RegistryStatus
from ._types import Method, MethodOffer, Record
from ._wire import RType


def assumed_record(limits: Mapping[Method, int], csa: bool) -> Record:
    """The record a sender without one is checked against.  Pure."""
    offers = [MethodOffer(Method.CSA, limits.get(Method.CSA, 0))] if csa else []
    offers.append(MethodOffer(Method.SPF, limits.get(Method.SPF, 0)))
    return Record(methods=tuple(offers))


async def fallback_registry(session: Session, helo: str, limits: Mapping[Method, int]) -> RegistryFacts:
    """The assumed record for the HELO's ID; one question (counted) tells whether CSA is offered."""
    csa = False
    if limits.get(Method.CSA, 0) > 0:
        answer = await session.query(f"_client._smtp.{helo}", RType.SRV)
        csa = answer.status is DnsStatus.OK and any(r[0] == CSA_VERSION for r in answer.records)
    return RegistryFacts(RegistryStatus.FOUND, record=assumed_record(limits, csa), assumed=True)
