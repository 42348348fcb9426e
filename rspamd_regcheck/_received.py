"""The client of the hop from outside, read from the message's Received headers.  Pure.

A client that sends only the message (spamc, Exim's default spamd variant)
gives no envelope.  The receiving MTA wrote one ``Received:`` header per hop
at the top of the header block, each naming the client that connected to it
(RFC 5321 4.4).  Walking down from the top, a header whose client is a
trusted relay (``policy.trusted_relays``, as SpamAssassin's
``trusted_networks``) was written by our side for a hop from our side: the
next header down was written by that relay and is read next.  The first
header whose client is not trusted records the hop from outside: its client
address and HELO are the envelope.  Below it every header was written by
someone we do not trust, so nothing below is read.  A header that names no
client address stops the walk: the envelope is then left out, never guessed.

Formats read (the ``from`` clause, before ``by``)::

    from HELO (RDNS [IP])                   Postfix, Sendmail
    from RDNS ([IP] helo=HELO)              Exim (``helo=`` left out when it equals RDNS)
    from [IP] (helo=HELO)                   Exim, no reverse DNS
    from RDNS (HELO HELO) ([IP])            qmail and others
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ._qr1 import client_address
from ._types import IPAddress, IPNetwork

MAX_SHOWN = 160  # characters of a header quoted back in a reply
_FROM = re.compile(r"\s*from\s+(.*?)(?:\sby\s|;|$)", re.IGNORECASE | re.DOTALL)
_BRACKETED = re.compile(r"\[(?:IPv6:)?([0-9A-Fa-f:.]{2,45})\]")
_HELO = re.compile(r"(?:\bhelo=|\(HELO\s+)([^\s()\[\]]+)", re.IGNORECASE)


@dataclass(frozen=True)
class Hop:
    """The hop from outside: the client our side's Received header names."""

    index: int  # 1 for the topmost Received header
    count: int  # Received headers in the block
    ip: IPAddress
    helo: str | None
    header: str  # the header's text, shortened for the reply

    def describe(self) -> str:
        return f"Received header {self.index} of {self.count}: ip={self.ip} helo={self.helo or '-'}"


@dataclass(frozen=True)
class NoHop:
    """No header tells the hop from outside; *reason* says why."""

    reason: str

    def describe(self) -> str:
        return f"none: {self.reason} (check skipped, not guessed)"


def received_client(value: str) -> tuple[IPAddress, str | None] | None:
    """The client address and HELO one Received header names, or None when it names no address."""
    match = _FROM.match(value)
    if match is None:
        return None
    clause = match.group(1)
    ip = None
    for literal in _BRACKETED.findall(clause):
        try:
            ip = ipaddress.ip_address(literal)
        except ValueError:
            continue
        break
    if ip is None:
        return None
    helo_match = _HELO.search(clause)
    if helo_match is not None:
        helo: str | None = helo_match.group(1)
    else:
        first = clause.split(None, 1)[0] if clause.strip() else ""
        helo = None if not first or first.startswith(("[", "(")) else first
    return client_address(ip), helo


def outside_hop(headers: Sequence[tuple[str, str]], trusted: Iterable[IPNetwork]) -> Hop | NoHop:
    """Find the hop from outside in a message's header block (names matched case-insensitively)."""
    nets = tuple(trusted)
    received = [value for name, value in headers if name.lower() == "received"]
    for index, value in enumerate(received, 1):
        client = received_client(value)
        if client is None:
            return NoHop(f"Received header {index} of {len(received)} names no client address")
        ip, helo = client
        if any(ip in net for net in nets):
            continue
        shown = " ".join(value.split())[:MAX_SHOWN]
        return Hop(index, len(received), ip, helo, shown)
    if not received:
        return NoHop("the message has no Received header")
    return NoHop(f"all {len(received)} Received header(s) name trusted relays")
