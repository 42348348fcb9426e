"""The decision core: facts in, `Verdict` out (docs/scoring.md, steps 5-7).  Pure.

The async shell (`_check.py`) gathers facts with DNS and asks this module two
things: which methods to run (`plan`, `wants_methods`) and, once it has run
them, what it all means (`evaluate`).  No awaits, sockets or clocks here.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace

from . import symbols as S
from ._identity import BadHelo
from ._prescreen import Finding, Listing
from ._ratings import RatingPolicy, listed_bad, rating_weight
from ._types import (
    Action,
    IPAddress,
    Method,
    MethodOutcome,
    RatingClass,
    RatingSummary,
    Record,
    Result,
    SeedVerdict,
    SymbolHit,
    Verdict,
)

REJECT_CODE, REJECT_X = 550, "5.7.1"  # RFC 3463 3.8: delivery not authorized
TEMPFAIL_CODE = 451  # RFC 5321 4.2.3: local error in processing
TEMPFAIL_DNS_X = "4.4.3"  # RFC 3463 3.5: directory server failure
TEMPFAIL_OTHER_X = "4.7.0"  # RFC 3463 3.8: other security status
OK_CODE, OK_X = 250, "2.0.0"
ASSUMED = "record=assumed"  # option and Authent header word: no registry lists the ID (registry.fallback)


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def header_value(text: str) -> str:
    """A header value as it may go out: a control character (a CR or LF that would end the header
    and start another, a NUL, a tab) becomes a space.  The values carry DNS text that the sender's
    domain chose (an SPF record's terms in Received-SPF's ``problem=``), and they leave the worker
    in rspamd's milter reply, where nothing else cleans them."""
    return _CONTROL.sub(" ", text) if _CONTROL.search(text) else text


class RegistryStatus(enum.Enum):
    """What the registry said about an ID (docs/scoring.md, step 4)."""

    FOUND = "found"
    NO_RECORD = "no-record"
    INVALID = "invalid"
    DNSFAIL = "dnsfail"
    BUDGET = "budget"  # the check's query cap was spent before the registry answered
    UNVALIDATED = "unvalidated"  # registry.require_dnssec, and no trusted validator vouched for the answer


@dataclass(frozen=True)
class RegistryFacts:
    """The registry lookup's outcome for one ID."""

    status: RegistryStatus
    record: Record | None = None
    reasons: tuple[str, ...] = ()  # why a record is invalid, or what failed
    zone: str | None = None
    assumed: bool = False  # no registry lists the ID: the record is the fallback's (registry.fallback)


@dataclass(frozen=True)
class Planned:
    """A method to run, with the DNS questions it may ask."""

    method: Method
    budget: int


@dataclass(frozen=True)
class Facts:
    """Everything the shell learnt about one SMTP session."""

    ip: IPAddress | None
    helo: BadHelo | str | None = None  # the normalised HELO, or why it is unusable
    id: str | None = None
    registry: RegistryFacts | None = None
    ratings: RatingSummary | None = None
    methods: tuple[MethodOutcome, ...] = ()
    prescreen: tuple[Finding, ...] = ()
    skipped: str | None = None


@dataclass(frozen=True)
class Policy:
    """The receiver's settings the evaluator needs."""

    ratings: RatingPolicy
    method_order: tuple[Method, ...]
    method_limits: Mapping[Method, int]
    authent_header: str = "X-Regcheck"


def _unique(*names: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys(names))


def wants_methods(ratings: RatingSummary) -> bool:
    """Methods run only for IDs with trusted ratings that are not bad (the seed's rule)."""
    return ratings.klass in (RatingClass.LOW, RatingClass.HIGH)


def plan(record: Record, ip: IPAddress, policy: Policy) -> tuple[tuple[Planned, ...], tuple[MethodOutcome, ...]]:
    """Choose the methods to run, in order (docs/scoring.md, step 6).

    QR1 comes first when the record lists netblocks for the client's family;
    then, in the receiver's order, each method the sender offers within the
    receiver's query limit.  Returns the plan and the budget skips (as outcomes).
    """
    planned: list[Planned] = []
    skipped: list[MethodOutcome] = []
    if record.netblocks_for(ip) is not None:
        planned.append(Planned(Method.QR1, 0))
    offers = {o.method: o.queries for o in record.methods}
    for method in policy.method_order:
        if method not in offers or method is Method.QR1:
            continue
        wanted, limit = offers[method], policy.method_limits.get(method, 0)
        if wanted > limit:
            skipped.append(
                MethodOutcome(method, None, (method.value, f"needs {wanted} queries, limit {limit}"), budget=True)
            )
        else:
            planned.append(Planned(method, min(wanted, limit)))
    return tuple(planned), tuple(skipped)


def evaluate(facts: Facts, policy: Policy) -> Verdict:
    """Turn *facts* into symbols, headers and the seed's verdict (docs/scoring.md, step 7)."""
    return _Evaluation(facts, policy).run()


class _Evaluation:
    def __init__(self, facts: Facts, policy: Policy):
        self.f = facts
        self.p = policy
        self.hits: list[SymbolHit] = []
        self.headers: list[tuple[str, str]] = []
        self.tail: tuple[str, ...] = ()  # options every symbol about the ID's ratings carries

    def hit(self, name: str, *options: str, weight: float = 1.0) -> None:
        self.hits.append(SymbolHit(name, weight, tuple(o for o in options if o)))

    def about_id(self, name: str, *options: str, weight: float = 1.0) -> None:
        """A symbol about a rated (or unrated) ID: the services' notes and an assumed record go with it."""
        self.hit(name, *options, *self.tail, weight=weight)

    def authent(self, text: str) -> None:
        assumed = f" {ASSUMED}" if self.f.registry is not None and self.f.registry.assumed else ""
        self.headers.append((self.p.authent_header, text + assumed))

    def done(self, action: Action, code: int, xcode: str, message: str, detail: str = "") -> Verdict:
        f = self.f
        return Verdict(
            symbols=tuple(sorted(self.hits, key=lambda h: h.name)),
            seed=SeedVerdict(action, code, xcode, message, detail),
            id=f.id,
            ratings=f.ratings,
            add_headers=tuple(
                (name, header_value(value))
                for name, value in sorted(self.headers, key=lambda h: h[0] != self.p.authent_header)
            ),
            # Headers we add are also removed from the message first, so a sender cannot forge them.
            remove_headers=()
            if f.skipped is not None
            else _unique(self.p.authent_header, *(n for n, _ in self.headers)),
            skipped=f.skipped,
            methods=f.methods,
        )

    def run(self) -> Verdict:
        listed = self.prescreen()
        verdict = self.registry()
        if listed:
            # The seed rejected a listed client before anything else (checkSBL).
            seed = SeedVerdict(
                Action.REJECT,
                REJECT_CODE,
                REJECT_X,
                f"Client address {self.f.ip} is listed by {', '.join(listed)}",
            )
            verdict = replace(verdict, seed=seed)
        return verdict

    def prescreen(self) -> list[str]:
        """Symbols of the DNSBL pre-screen; the zones that list the client."""
        listed = []
        for finding in self.f.prescreen:
            if finding.status is Listing.LISTED:
                listed.append(finding.zone)
                self.hit(S.DNSBL, *(f"{finding.zone}:{code}" for code in finding.codes))
            elif finding.status is Listing.BLOCKED:
                self.hit(S.DNSBL_BLOCKED, *(f"{finding.zone}:{code}" for code in finding.codes))
            elif finding.status is Listing.DNSFAIL:
                self.hit(S.DNSBL_DNSFAIL, f"{finding.zone}:{finding.detail}")
        return listed

    def registry(self) -> Verdict:
        f = self.f
        if f.skipped is not None:
            return self.done(Action.CONTINUE, OK_CODE, OK_X, f"Not checked: {f.skipped}")
        if f.helo is None or isinstance(f.helo, BadHelo):
            bad = f.helo if isinstance(f.helo, BadHelo) else BadHelo("missing")
            self.hit(S.BAD_HELO, bad.reason, bad.text)
            shown = f" {bad.text!r}" if bad.text else ""
            return self.done(
                Action.REJECT, REJECT_CODE, REJECT_X, f"HELO name{shown} is not a valid host name ({bad.reason})"
            )
        ident = f.id or f.helo
        reg = f.registry
        if reg is None or reg.status in (RegistryStatus.DNSFAIL, RegistryStatus.UNVALIDATED):
            why = ", ".join(reg.reasons) if reg else "no answer"
            # An answer no trusted validator vouched for is weighed like a DNS failure: it may be
            # true, but nothing says it is.
            unvalidated = reg is not None and reg.status is RegistryStatus.UNVALIDATED
            self.hit(S.UNVALIDATED_REGISTRY if unvalidated else S.DNSFAIL, ident, why)
            what = "answer" if unvalidated else "lookup"
            return self.done(
                Action.TEMPFAIL,
                TEMPFAIL_CODE,
                TEMPFAIL_DNS_X,
                # the SMTP text goes to strangers: what failed where (a resolver's address) stays in the log
                f"Sender registry {what} for '{ident}' failed; please try again later",
                detail=why,
            )
        if reg.status is RegistryStatus.BUDGET:
            # The receiver's own limit, not the sender's fault nor DNS's: fail open.
            self.hit(S.BUDGET, ident, *reg.reasons)
            return self.done(
                Action.CONTINUE, OK_CODE, OK_X, f"'{ident}' could not be checked within the DNS query budget"
            )
        if reg.status is RegistryStatus.NO_RECORD:
            self.hit(S.NO_RECORD, ident)
            return self.done(Action.REJECT, REJECT_CODE, REJECT_X, f"'{ident}' is not listed in the sender registry")
        if reg.status is RegistryStatus.INVALID or reg.record is None:
            self.hit(S.RECORD_PERMFAIL, ident, *reg.reasons)
            return self.done(
                Action.TEMPFAIL,
                TEMPFAIL_CODE,
                TEMPFAIL_OTHER_X,
                f"The sender registry record of '{ident}' is invalid ({'; '.join(reg.reasons)});"
                " please try again later",
            )
        if reg.record.stop:
            self.hit(S.STOP, ident)
            return self.done(Action.REJECT, REJECT_CODE, REJECT_X, f"The sender registry says '{ident}' sends no mail")
        return self.rated(ident, reg.record)

    def rated(self, ident: str, record: Record) -> Verdict:
        f, p = self.f, self.p
        r = f.ratings
        ip = str(f.ip)
        assumed = (ASSUMED,) if f.registry is not None and f.registry.assumed else ()
        self.tail = (*(r.notes if r is not None else ()), *assumed)
        if r is None or r.klass is RatingClass.NONE:
            self.about_id(S.NO_RATINGS, ident)
            self.authent(f"{ip} {ident} NONE unverified ratings=")
            return self.done(
                Action.FILTER,
                OK_CODE,
                OK_X,
                f"No trusted rating for '{ident}'; the message goes to the spam filter",
            )
        rtext = f"ratings={r.text}"
        weight = rating_weight(r, p.ratings)
        listed = listed_bad(r, p.ratings)
        if listed:  # a service asked directly lists the ID: its own symbol, beside the weighed verdict
            self.hit(S.SERVICE_BAD, ident, *(str(x) for x in listed))
        if r.klass is RatingClass.BAD:
            self.about_id(S.RATING_BAD, ident, rtext, weight=weight)
            return self.done(
                Action.REJECT,
                REJECT_CODE,
                REJECT_X,
                f"'{ident}' is rated {r.text}, below what this server accepts",
            )
        if r.klass is RatingClass.LOW:
            self.about_id(S.RATING_LOW, ident, rtext, weight=weight)
        return self.methods(ident, rtext, weight)

    def methods(self, ident: str, rtext: str, rweight: float) -> Verdict:
        f = self.f
        r = f.ratings
        assert r is not None
        ip = str(f.ip)
        final: MethodOutcome | None = None
        temperror = False
        for outcome in f.methods:
            if outcome.budget or outcome.result is None:
                self.hit(S.BUDGET, ident, *outcome.options)
                continue
            self.headers.extend(outcome.headers)
            name = S.method_symbol(outcome.method, outcome.result)
            passed = outcome.result is Result.PASS
            # Good ratings are credited only to an ID that proved itself (docs/scoring.md, step 7).
            extra = rtext if r.klass is RatingClass.HIGH and not passed else ""
            if name is not None:
                self.about_id(name, ident, *outcome.options, extra)
            temperror = temperror or outcome.result is Result.TEMPERROR
            if outcome.result.final:
                final = outcome
                break
        if final is None:
            extra = rtext if r.klass is RatingClass.HIGH else ""
            self.about_id(S.UNVERIFIED, ident, extra)
            self.authent(f"{ip} {ident} NONE unverified {rtext}")
            if temperror:
                return self.done(
                    Action.TEMPFAIL,
                    TEMPFAIL_CODE,
                    TEMPFAIL_DNS_X,
                    f"Could not verify '{ident}' for now; please try again later",
                )
            return self.done(Action.CONTINUE, OK_CODE, OK_X, f"No method verified '{ident}'")
        res = final.result
        assert res is not None
        self.authent(f"{ip} {ident} {final.method.value} {res.value} {rtext}")
        if res is Result.PASS:
            if r.klass is RatingClass.HIGH:
                self.about_id(S.RATING_HIGH, ident, rtext, weight=rweight)
                return self.done(Action.ACCEPT, OK_CODE, OK_X, f"Sender verified by {final.method.value}")
            return self.done(
                Action.FILTER,
                OK_CODE,
                OK_X,
                f"'{ident}' is rated {r.text}; the message goes to the spam filter",
            )
        if res is Result.FAIL:
            return self.done(
                Action.REJECT,
                REJECT_CODE,
                REJECT_X,
                f"Host {ip} is not authorised to send mail for '{ident}' ({final.method.value})",
            )
        return self.done(
            Action.FILTER,
            OK_CODE,
            OK_X,
            f"{final.method.value} gave '{res.value}' for '{ident}'; the message goes to the spam filter",
        )
