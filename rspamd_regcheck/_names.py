"""DNS names built from addresses, shared by the DNSBL pre-screen and the methods.  Pure."""

from __future__ import annotations

from ._types import IPAddress


def reverse_name(ip: IPAddress, zone: str) -> str:
    """*ip* reversed under *zone*: octets for IPv4 (RFC 5782 2.1), 32 nibbles for IPv6 (RFC 5782 2.4).

    ``reverse_name(ip, "zen.spamhaus.org")`` is a DNSBL question;
    `ptr_name` is the same walk under the reverse tree.
    """
    if ip.version == 4:
        return ".".join(reversed(str(ip).split("."))) + "." + zone
    nibbles = ip.exploded.replace(":", "")
    return ".".join(reversed(nibbles)) + "." + zone


def ptr_name(ip: IPAddress) -> str:
    """The name of *ip*'s PTR record (RFC 1035 3.5, RFC 3596 2.5)."""
    return reverse_name(ip, "in-addr.arpa" if ip.version == 4 else "ip6.arpa")
