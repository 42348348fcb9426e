"""HELO validation and the Registered ID (docs/scoring.md, step 3).  Pure.

The seed only checked that the HELO had a dot and took its last two labels.
Here the HELO must be a host name as RFC 1035 section 2.3.1 and IDNA 2008
define it, and the Registered ID is its organisational domain by the public
suffix list shipped in the ``publicsuffixlist`` package (never fetched at run
time).  `id_at_level` serves the registry's ``IDlevel=N`` re-ask.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from dataclasses import dataclass

import idna
from publicsuffixlist import PublicSuffixList

from ._lru import memo

MAX_NAME_LENGTH = 253  # RFC 1035 2.3.4: 255 octets on the wire, 253 as text
MAX_LABEL_LENGTH = 63  # RFC 1035 2.3.4
MAX_HELO_INPUT = 1024  # longer input is refused before any decoding work

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_IPV4_CHARS = re.compile(r"[0-9.]+")
_LDH_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")


@dataclass(frozen=True)
class BadHelo:
    """The HELO is not a usable host name.  ``reason`` is a short token."""

    reason: str
    text: str = ""


@dataclass(frozen=True)
class Identity:
    """A valid HELO in lower-case A-labels and its Registered ID."""

    helo: str
    id: str


@functools.lru_cache(maxsize=1)
def _psl() -> PublicSuffixList:
    return PublicSuffixList()  # the package's bundled list: no network


def normalise_helo(helo: str | None) -> str | BadHelo:
    """Return the HELO as lower-case A-labels without a trailing dot, or why not."""
    if helo is None or not helo.strip():
        return BadHelo("missing")
    if len(helo) > MAX_HELO_INPUT:
        return BadHelo("too-long", helo[:64])
    if "\x00" in helo:
        return BadHelo("nul", helo.replace("\x00", "\\0"))
    if _CONTROL.search(helo):
        return BadHelo("control-char", helo.encode("unicode_escape").decode("ascii"))
    text = helo.strip()
    if text.startswith("[") or _is_ip(text.rstrip(".")):
        return BadHelo("ip-literal", text)
    name = text.removesuffix(".")
    if not name.isascii():
        try:
            name = idna.encode(name, uts46=True).decode("ascii")
        except idna.IDNAError as exc:
            return BadHelo("bad-idn", f"{text} ({exc})")
    name = name.lower()
    labels = name.split(".")
    if len(labels) < 2:
        return BadHelo("bare-word", text)
    if len(name) > MAX_NAME_LENGTH:
        return BadHelo("too-long", text)
    for label in labels:
        if not label:
            return BadHelo("empty-label", text)
        if len(label) > MAX_LABEL_LENGTH:
            return BadHelo("label-too-long", text)
        if not _LDH_LABEL.fullmatch(label):
            return BadHelo("bad-label", text)
        if label.startswith("xn--") and not _valid_a_label(label):
            return BadHelo("bad-idn", text)
    if labels[-1].isdigit():
        return BadHelo("numeric-tld", text)
    return name


@memo(16384)
def identify(helo: str | None) -> Identity | BadHelo:
    """Validate *helo* and find its Registered ID by the public suffix list."""
    name = normalise_helo(helo)
    if isinstance(name, BadHelo):
        return name
    registered = _psl().privatesuffix(name)
    if registered is None:
        return BadHelo("public-suffix", name)
    return Identity(helo=name, id=registered)


def id_at_level(helo: str, level: int) -> str | None:
    """The HELO's last *level* labels, for a record's ``IDlevel=N``.

    None when the HELO has fewer labels than that.
    """
    labels = helo.split(".")
    if level > len(labels):
        return None
    return ".".join(labels[-level:])


def _is_ip(text: str) -> bool:
    if ":" not in text and not _IPV4_CHARS.fullmatch(text):
        return False  # a host name: spare ipaddress its exception
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _valid_a_label(label: str) -> bool:
    try:
        idna.decode(label)
    except (idna.IDNAError, UnicodeError):
        return False
    return True
