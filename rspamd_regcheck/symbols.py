"""The symbol catalogue: the one source of symbol names, descriptions and default scores.

rspamd multiplies each symbol's configured score by the dynamic weight the
worker sends (docs/scoring.md).  The rules file (``rules/``) and the Lua
shim's symbol list are checked against this table by the test suite.
"""

from __future__ import annotations

from dataclasses import dataclass

from ._types import Method, Result

GROUP = "regcheck"


@dataclass(frozen=True)
class SymbolDef:
    """A catalogue entry."""

    name: str
    score: float
    description: str


def _results(prefix: str, what: str, scores: dict[str, float], na: str) -> list[SymbolDef]:
    texts = {
        "ALLOW": f"{what} authorises the client IP for the Registered ID",
        "FAIL": f"{what} says the client IP is not authorised",
        "SOFTFAIL": f"{what} says the client IP is probably not authorised",
        "NEUTRAL": f"{what} makes no statement about the client IP",
        "NA": na,  # what "no result" means differs from method to method
        "PERMFAIL": f"{what} record is broken",
        "DNSFAIL": f"{what} lookup failed (timeout or server failure)",
    }
    return [SymbolDef(f"{prefix}_{suffix}", score, texts[suffix]) for suffix, score in scores.items()]


_SPF_SCORES = {
    "ALLOW": -1.0,
    "FAIL": 4.0,
    "SOFTFAIL": 1.5,
    "NEUTRAL": 0.5,
    "NA": 0.5,
    "PERMFAIL": 1.0,
    "DNSFAIL": 0.0,
}

CATALOGUE: tuple[SymbolDef, ...] = (
    SymbolDef("REGCHECK_CHECK", 0.0, "Sender registry check (callback)"),
    SymbolDef("REGCHECK_FAIL", 0.0, "Sender registry worker gave no usable answer"),
    SymbolDef("REGCHECK_DNSBL", 4.0, "Client IP listed on a pre-screen DNSBL"),
    SymbolDef("REGCHECK_DNSBL_BLOCKED", 0.0, "Pre-screen DNSBL refused our resolver"),
    SymbolDef("REGCHECK_DNSBL_DNSFAIL", 0.0, "Pre-screen DNSBL lookup failed"),
    SymbolDef("REGCHECK_BAD_HELO", 1.5, "HELO is not a valid host name"),
    SymbolDef("REGCHECK_NO_RECORD", 0.5, "Registered ID has no sender registry record"),
    SymbolDef("REGCHECK_STOP", 8.0, "Registry record says the ID sends no mail (stop=all)"),
    SymbolDef("REGCHECK_RECORD_PERMFAIL", 0.0, "Sender registry record is invalid"),
    SymbolDef("REGCHECK_DNSFAIL", 0.0, "Sender registry lookup failed"),
    SymbolDef("REGCHECK_NO_RATINGS", 0.5, "No trusted rating for the Registered ID"),
    SymbolDef("REGCHECK_RATING_BAD", 6.0, "Registered ID is rated below the reject line"),
    SymbolDef("REGCHECK_RATING_LOW", 1.0, "Registered ID has middling ratings"),
    SymbolDef("REGCHECK_RATING_HIGH", -3.0, "Registered ID is highly rated and authenticated"),
    SymbolDef("REGCHECK_QR1_ALLOW", -2.0, "Client IP is in the ID's registered netblocks"),
    SymbolDef("REGCHECK_QR1_FAIL", 6.0, "Client IP is outside the ID's registered netblocks"),
    *_results("REGCHECK_SPF", "SPF", _SPF_SCORES, "SPF: the sender domain (or HELO) publishes no SPF record"),
    *_results(
        "REGCHECK_CSA",
        "CSA",
        {"ALLOW": -1.0, "FAIL": 4.0, "NA": 0.5, "DNSFAIL": 0.0},
        "CSA: no SRV record for the HELO name, or one that cannot be verified",
    ),
    *_results("REGCHECK_SID", "Sender ID", _SPF_SCORES, "Sender ID: no PRA, a PRA outside the ID, or no record for it"),
    SymbolDef("REGCHECK_DKIM_ALLOW", -1.0, "A verified DKIM signature authenticates the ID"),
    SymbolDef("REGCHECK_UNVERIFIED", 0.5, "No method gave a final result for the ID"),
    SymbolDef("REGCHECK_BUDGET", 0.5, "A method was skipped or stopped by its DNS query budget"),
    SymbolDef("REGCHECK_SERVICE_BAD", 2.0, "A rating service asked directly rated the ID bad (e.g. a DBL listing)"),
    SymbolDef("REGCHECK_UNVALIDATED", 0.0, "Sender registry answer not DNSSEC-validated by a trusted resolver"),
)

BY_NAME = {s.name: s for s in CATALOGUE}

CHECK = "REGCHECK_CHECK"
DNSBL = "REGCHECK_DNSBL"
DNSBL_BLOCKED = "REGCHECK_DNSBL_BLOCKED"
DNSBL_DNSFAIL = "REGCHECK_DNSBL_DNSFAIL"
BAD_HELO = "REGCHECK_BAD_HELO"
NO_RECORD = "REGCHECK_NO_RECORD"
STOP = "REGCHECK_STOP"
RECORD_PERMFAIL = "REGCHECK_RECORD_PERMFAIL"
DNSFAIL = "REGCHECK_DNSFAIL"
NO_RATINGS = "REGCHECK_NO_RATINGS"
RATING_BAD = "REGCHECK_RATING_BAD"
RATING_LOW = "REGCHECK_RATING_LOW"
RATING_HIGH = "REGCHECK_RATING_HIGH"
UNVERIFIED = "REGCHECK_UNVERIFIED"
BUDGET = "REGCHECK_BUDGET"
SERVICE_BAD = "REGCHECK_SERVICE_BAD"
UNVALIDATED_REGISTRY = "REGCHECK_UNVALIDATED"

_SUFFIX = {
    Result.PASS: "ALLOW",
    Result.FAIL: "FAIL",
    Result.SOFTFAIL: "SOFTFAIL",
    Result.NEUTRAL: "NEUTRAL",
    Result.NONE: "NA",
    Result.PERMERROR: "PERMFAIL",
    Result.TEMPERROR: "DNSFAIL",
}


def method_symbol(method: Method, result: Result) -> str | None:
    """The catalogue symbol for a method's result, or None if the catalogue has none."""
    name = f"REGCHECK_{method.value}_{_SUFFIX[result]}"
    return name if name in BY_NAME else None


GROUP_MAX_SCORE = 10.0  # regcheck alone can reach "add header" (6), never "reject" (15)


def rules_group_conf() -> str:
    """``rules/regcheck_group.conf``: the group, its cap, every symbol's score and description."""
    lines = [
        "# rspamd-regcheck symbols: scores and descriptions, generated from",
        "# rspamd_regcheck/symbols.py by rules_group_conf(); tests/test_rules.py keeps",
        "# the two equal. Install as $LOCAL_CONFDIR/local.d/regcheck_group.conf and",
        "# include it from $LOCAL_CONFDIR/local.d/groups.conf (rspamd-regcheck rspamd install",
        "# does both; docs/install-and-operate.md).",
        f'group "{GROUP}" {{',
        '  description = "Sender registry (rspamd-regcheck)";',
        f"  max_score = {GROUP_MAX_SCORE};",
        "  symbols {",
    ]
    for s in CATALOGUE:
        lines.append(f'    "{s.name}" {{ weight = {s.score}; description = "{s.description}"; }}')
    lines += ["  }", "}"]
    return "\n".join(lines) + "\n"


def symbols_markdown() -> str:
    """The symbol table of ``docs/scoring.md``; tests/test_docs.py keeps the two equal."""
    rows = ["| symbol | default score | meaning |", "|---|---|---|"]
    rows += [f"| `{s.name}` | {s.score} | {s.description} |" for s in CATALOGUE]
    return "\n".join(rows) + "\n"
