"""QR1: is the client IP inside the ID's registered netblocks?  Pure, no DNS.

The list is chosen by the client's address family (``ip4`` or ``ip6``); an
IPv4-mapped IPv6 client (``::ffff:a.b.c.d``) is checked as IPv4.
"""

from __future__ import annotations

import ipaddress

from ._types import IPAddress, Method, MethodOutcome, Record, Result


def client_address(ip: IPAddress) -> IPAddress:
    """The address to check: IPv4-mapped IPv6 addresses become IPv4."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def qr1(record: Record, ip: IPAddress) -> MethodOutcome:
    """Pass with the matching netblock as option, or fail with the client IP."""
    ip = client_address(ip)
    for block in record.netblocks_for(ip) or ():
        if ip in block:
            return MethodOutcome(Method.QR1, Result.PASS, (block.text,))
    return MethodOutcome(Method.QR1, Result.FAIL, (str(ip),))
