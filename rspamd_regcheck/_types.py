"""Result types shared by the pure core: enums and frozen dataclasses.

Nothing here does I/O.  The DNS layer turns answers into these facts and the
evaluator (`_evaluate.py`) turns facts into a `Verdict`.
"""

from __future__ import annotations

import enum
import functools
import ipaddress
from dataclasses import dataclass, field

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def hostport(host: str, port: int) -> str:
    """``host:port``, with an IPv6 address in brackets (RFC 3986 3.2.2)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Method(enum.Enum):
    """An authentication method a sender may offer in its registry record."""

    QR1 = "QR1"
    CSA = "CSA"  # the seed and the 2005 registry call it CSV
    SPF = "SPF"
    SID = "SID"
    DKIM = "DKIM"

    @classmethod
    def make(cls, text: str) -> Method | None:
        """Return the method named by *text* (case-insensitive), or None if unknown.

        ``CSV`` and ``CSA`` both name Client SMTP Authorization.
        """
        name = text.strip().upper()
        if name == "CSV":
            return cls.CSA
        try:
            return cls(name)
        except ValueError:
            return None


class Result(enum.Enum):
    """A method's result, spelt as RFC 7208 section 2.6 spells SPF's."""

    PASS = "pass"
    FAIL = "fail"
    SOFTFAIL = "softfail"
    NEUTRAL = "neutral"
    NONE = "none"
    PERMERROR = "permerror"
    TEMPERROR = "temperror"

    @property
    def final(self) -> bool:
        """A final result ends the plan; the others let the next method run."""
        return self in _FINAL


_FINAL = frozenset({Result.PASS, Result.FAIL, Result.SOFTFAIL, Result.NEUTRAL})


class Action(enum.Enum):
    """The seed's hard verdicts (milter actions)."""

    ACCEPT = "ACCEPT"
    REJECT = "REJECT"
    FILTER = "FILTER"
    CONTINUE = "CONTINUE"
    TEMPFAIL = "TEMPFAIL"


class RatingClass(enum.Enum):
    """How the receiver judges an ID's ratings (docs/scoring.md, "Ratings")."""

    NONE = "none"  # no trusted, scored rating in the record
    BAD = "bad"
    LOW = "low"
    HIGH = "high"


@dataclass(frozen=True)
class Rating:
    """One ``CODE:RATING`` entry of a record's ``svc`` list."""

    service: str
    value: str  # a letter A-Z or an integer 0-999, as text

    def __str__(self) -> str:
        return f"{self.service}:{self.value}"


@dataclass(frozen=True)
class Netblock:
    """One item of an ``ip4``/``ip6`` list, with the networks it covers.

    A last-octet range ``a.b.c.d-e`` covers several networks.
    """

    text: str
    networks: tuple[IPNetwork, ...]

    def __contains__(self, ip: object) -> bool:
        return any(ip in net for net in self.networks)


@dataclass(frozen=True)
class MethodOffer:
    """A method the sender offers, with the most DNS queries it needs."""

    method: Method
    queries: int


@dataclass(frozen=True)
class Record:
    """A parsed registry record (docs/record-format.md)."""

    stop: bool = False
    idlevel: int | None = None
    ratings: tuple[Rating, ...] = ()
    vouches: tuple[str, ...] = ()
    ip4: tuple[Netblock, ...] | None = None
    ip6: tuple[Netblock, ...] | None = None
    methods: tuple[MethodOffer, ...] = ()
    params: tuple[tuple[Method, str], ...] = ()
    default_status: int | None = None
    versioned: bool = False

    def param(self, method: Method) -> str | None:
        """The record's parameter for *method* (``spf="..."``), if any."""
        for m, value in self.params:
            if m is method:
                return value
        return None

    def netblocks_for(self, ip: IPAddress) -> tuple[Netblock, ...] | None:
        """The netblock list for the client's address family, or None."""
        return self.ip4 if ip.version == 4 else self.ip6


@dataclass(frozen=True)
class RatingSummary:
    """The outcome of weighing a record's ratings (docs/scoring.md, "Ratings")."""

    klass: RatingClass
    used: tuple[Rating, ...] = ()
    mean: float | None = None
    low: float | None = None
    high: float | None = None
    notes: tuple[str, ...] = ()  # services that gave no rating and why ("DBL:refused 127.0.1.255")

    @functools.cached_property
    def text(self) -> str:
        """The ratings used, as the seed printed them: ``S1:A,M2:A,H1:B``."""
        return ",".join(str(r) for r in self.used)


@dataclass(frozen=True)
class MethodOutcome:
    """What one planned method found."""

    method: Method
    result: Result | None  # None: the method was stopped by its query budget
    options: tuple[str, ...] = ()
    budget: bool = False
    headers: tuple[tuple[str, str], ...] = ()  # e.g. Received-SPF


@dataclass(frozen=True)
class SymbolHit:
    """A symbol to insert, with its dynamic weight in [0, 1] and string options."""

    name: str
    weight: float = 1.0
    options: tuple[str, ...] = ()


@dataclass(frozen=True)
class SeedVerdict:
    """The seed's hard verdict: action, SMTP reply code, enhanced code, text."""

    action: Action
    smtp_code: int
    xcode: str
    message: str  # SMTP text: said to the sender, so it names nothing internal
    detail: str = ""  # what went wrong, for the log only (a resolver's address and error)


@dataclass(frozen=True)
class Verdict:
    """Everything a check decides: symbols, headers and the seed's verdict."""

    symbols: tuple[SymbolHit, ...]
    seed: SeedVerdict
    id: str | None = None
    ratings: RatingSummary | None = None
    add_headers: tuple[tuple[str, str], ...] = ()
    remove_headers: tuple[str, ...] = ()
    skipped: str | None = None
    methods: tuple[MethodOutcome, ...] = field(default=())
