"""`MethodContext`: everything an authentication method may use, in one signature.

Every method is ``async def run(ctx: MethodContext) -> MethodOutcome`` and one
row in `_methods.RUNNERS` (docs/development.md, "Adding an authentication
method").  The context is built once per planned method by the check.
"""

from __future__ import annotations

from dataclasses import dataclass

from ._dns import Budget, Session
from ._types import IPAddress, Record


@dataclass(frozen=True)
class MethodContext:
    """One method's view of one check."""

    record: Record  # the sender's registry record
    ip: IPAddress  # the client address (IPv4-mapped IPv6 already unmapped)
    helo: str  # the HELO name, normalised
    ident: str  # the Registered ID the record belongs to
    session: Session  # the check's DNS session: deadline and per-check cap
    budget: Budget  # this method's own query budget
    mail_from: str | None = None  # "" for the null sender
    headers: tuple[tuple[str, str], ...] = ()  # the message's header block
    dkim_domains: tuple[str, ...] = ()  # d= of the signatures rspamd verified
    spf_alignment: str = "relaxed"
    spf_receiver: str = "unknown"
