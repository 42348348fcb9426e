"""The DNSBL pre-screen (docs/scoring.md, step 2; the seed's ``checkSBL``).  Pure.

The client IP is looked up in each configured zone under its reversed name
(`_names.reverse_name`, RFC 5782 2.1 and 2.4).  Return codes in the zone's
*blocked* ranges are the list telling our resolver it may not ask
(Spamhaus answers 127.255.255.252-255 to public or unregistered resolvers,
DNSWL answers 127.0.0.255): resolver problems, never listings.  Answers
outside 127.0.0.0/8 are not DNSBL codes (a resolver that rewrites NXDOMAIN,
say) and count as failures.  A pre-screen that fails is information only.
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass

from ._answer import DnsAnswer, DnsStatus

CodeRange = tuple[ipaddress.IPv4Address, ipaddress.IPv4Address]
LOOPBACK_NET = ipaddress.IPv4Network("127.0.0.0/8")  # RFC 5782 2.1: return codes live here

# Known resolver-refusal codes: Spamhaus (127.255.255.252-255) and DNSWL (127.0.0.255).
DEFAULT_BLOCKED: tuple[CodeRange, ...] = (
    (ipaddress.IPv4Address("127.255.255.252"), ipaddress.IPv4Address("127.255.255.255")),
    (ipaddress.IPv4Address("127.0.0.255"), ipaddress.IPv4Address("127.0.0.255")),
)


class Listing(enum.Enum):
    LISTED = "listed"
    CLEAN = "clean"
    BLOCKED = "blocked"
    DNSFAIL = "dnsfail"


@dataclass(frozen=True)
class DnsblZone:
    """One configured pre-screen zone."""

    zone: str
    codes: tuple[tuple[CodeRange, str], ...] = ()  # empty: every 127/8 code is a listing
    blocked: tuple[CodeRange, ...] = DEFAULT_BLOCKED
    nameserver: tuple[str, int] | None = None
    ipv6: bool = True

    def label(self, code: ipaddress.IPv4Address) -> str | None:
        """The label of a listing code; None when a code map is set and lacks it."""
        if not self.codes:
            return ""
        for (lo, hi), label in self.codes:
            if lo <= code <= hi:
                return label
        return None

    def is_blocked(self, code: ipaddress.IPv4Address) -> bool:
        return any(lo <= code <= hi for lo, hi in self.blocked)


@dataclass(frozen=True)
class Finding:
    """What one zone said of the client IP."""

    zone: str
    status: Listing
    codes: tuple[str, ...] = ()  # "127.0.0.2" or "127.0.0.2:SBL"
    detail: str = ""


def parse_code_range(text: str) -> CodeRange:
    """``127.0.0.2``, ``127.0.0.4-127.0.0.7`` or ``127.0.0.0/24``.

    :raises ValueError: for anything else.
    """
    if "-" in text:
        lo_text, _, hi_text = text.partition("-")
        lo, hi = ipaddress.IPv4Address(lo_text.strip()), ipaddress.IPv4Address(hi_text.strip())
        if hi < lo:
            raise ValueError(f"range {text!r} ends before it starts")
        return lo, hi
    net = ipaddress.IPv4Network(text.strip(), strict=False)
    return net.network_address, net.broadcast_address


def classify(zone: DnsblZone, answer: DnsAnswer) -> Finding:
    """Read one zone's answer for the client IP."""
    if answer.status in (DnsStatus.NXDOMAIN, DnsStatus.NODATA):
        return Finding(zone.zone, Listing.CLEAN)
    if answer.status is not DnsStatus.OK:
        return Finding(zone.zone, Listing.DNSFAIL, detail=answer.detail or answer.status.value)
    listed: list[str] = []
    blocked: list[str] = []
    for value in answer.records:
        try:
            code = ipaddress.IPv4Address(value)
        except ValueError:
            return Finding(zone.zone, Listing.DNSFAIL, detail=f"not an IPv4 answer: {value!r}")
        if code not in LOOPBACK_NET:
            return Finding(zone.zone, Listing.DNSFAIL, detail=f"answer {code} is not a 127/8 code")
        if zone.is_blocked(code):
            blocked.append(str(code))
            continue
        label = zone.label(code)
        if label is not None:
            listed.append(f"{code}:{label}" if label else str(code))
    if blocked:
        return Finding(zone.zone, Listing.BLOCKED, codes=tuple(sorted(blocked)))
    if listed:
        return Finding(zone.zone, Listing.LISTED, codes=tuple(sorted(listed)))
    return Finding(zone.zone, Listing.CLEAN)
