"""Vouch By Reference (RFC 5518) as a rating service.  Pure.

A sender names vouchers in two places: the 2007 registry record's
``svc=VX:<voucher>`` claims, and the message's ``VBR-Info:`` header
(RFC 5518 section 4: ``md=<domain>; mc=<type>; mv=<voucher>[:<voucher>...]``).
For a voucher the receiver trusts, the worker asks the TXT record at
``<ID>._vouch.<voucher>`` (section 5); the answer vouches when it lists the
claimed content type, or ``all``.  The claim itself proves nothing: the
rating counts only once a method authenticated the ID, like any other.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from ._answer import DnsAnswer, DnsStatus
from ._ratings import Reading

VBR_HEADER = "vbr-info"
VOUCH_LABEL = "_vouch"  # RFC 5518 section 5, RFC 8553's underscored node name
ALL = "all"  # RFC 5518 section 5: vouches for every type of mail
MAX_VOUCHERS = 8  # vouchers read from one message's headers (only trusted ones are asked)
_TYPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*")  # one mc type token
_DOMAIN = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,251}[A-Za-z0-9])?")


@dataclass(frozen=True)
class Claim:
    """A voucher the sender names, and the content type it claims (None: any)."""

    voucher: str
    mc: str | None = None


def header_claims(headers: Sequence[tuple[str, str]], ident: str) -> tuple[Claim, ...]:
    """The vouchers named by the VBR-Info headers whose ``md=`` is the ID.

    A header about another domain is not about this sender's ID and is
    skipped; so is one that does not parse.
    """
    claims: list[Claim] = []
    for name, value in headers:
        if name.lower() != VBR_HEADER:
            continue
        tags: dict[str, str] = {}
        for item in value.split(";"):
            key, sep, val = item.partition("=")
            if sep:
                tags.setdefault(key.strip().lower(), val.strip())
        md, mc, mv = tags.get("md", "").lower().rstrip("."), tags.get("mc", "").lower(), tags.get("mv", "")
        if md != ident or not mv or (mc and not _TYPE.fullmatch(mc)):
            continue
        for item in mv.split(":", MAX_VOUCHERS)[:MAX_VOUCHERS]:
            voucher = item.strip().lower().rstrip(".")
            if _DOMAIN.fullmatch(voucher) and all(c.voucher != voucher for c in claims):
                claims.append(Claim(voucher, mc or None))
                if len(claims) == MAX_VOUCHERS:
                    return tuple(claims)
    return tuple(claims)


def vouch_name(ident: str, voucher: str) -> str:
    """Where *voucher* publishes its word for *ident* (RFC 5518 section 5)."""
    return f"{ident}.{VOUCH_LABEL}.{voucher}"


def read_vouch(service: str, claim: Claim, answer: DnsAnswer, rating: str) -> Reading:
    """*rating* when the voucher's TXT answer vouches for the claim; else none, with a note on failures.

    The answer is a space-separated list of content types (RFC 5518
    section 5); ``all`` covers every type, and a claim without a type is
    covered by any list.  No record: the voucher does not vouch.
    """
    where = f"{service}:{claim.voucher}"
    if answer.status in (DnsStatus.NXDOMAIN, DnsStatus.NODATA):
        return Reading(service)
    if answer.status is DnsStatus.BUDGET:
        return Reading(service, None, f"{where} budget {answer.detail}")
    if answer.status is not DnsStatus.OK:
        return Reading(service, None, f"{where} dnsfail {answer.detail or answer.status.value}")
    for text in answer.records:
        types = {t.lower() for t in str(text).split()}
        if not types or not all(_TYPE.fullmatch(t) for t in types):
            continue
        if ALL in types or claim.mc is None or claim.mc in types:
            return Reading(service, rating)
    return Reading(service)
