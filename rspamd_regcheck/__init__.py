"""rspamd-regcheck: a sender-registry check for rspamd.

For each SMTP session: find the sender's Registered ID (the organisational
domain of its HELO name), read its record in a sender registry over DNS,
weigh what trusted rating services say of it, and check that the sender's
chosen method authorises the client IP.  The answer is a set of rspamd
symbols with dynamic weights, plus the seed script's hard verdict for an
opt-in enforce mode.
"""

from __future__ import annotations

__version__ = "0.1.0"

from ._answer import DnsAnswer, DnsStatus
from ._check import Checker, CheckResult, Envelope, lookup_record, make_resolver, parse_ip
from ._dns import Budget, Cache, Fetcher, LocalZone, Resolver, Session
from ._enforce import EnforceAction, Enforcement, EnforcePolicy, enforce
from ._evaluate import Facts, Policy, RegistryFacts, RegistryStatus, evaluate, plan, wants_methods
from ._identity import BadHelo, Identity, id_at_level, identify, normalise_helo
from ._prescreen import DnsblZone, Finding, Listing
from ._qr1 import qr1
from ._ratings import RatingPolicy, ServiceScale, rate, rating_weight
from ._record import parse_record, select_record
from ._reply import build_reply, format_reply
from ._transport import Transport
from ._types import (
    Action,
    Method,
    MethodOffer,
    MethodOutcome,
    Netblock,
    Rating,
    RatingClass,
    RatingSummary,
    Record,
    Result,
    SeedVerdict,
    SymbolHit,
    Verdict,
)
from ._validate import Checked, check_config, load_checked
from .config import Config, load_config
from .errors import ConfigError, InvalidRecord, InvalidZoneFile, ListenError, RegcheckError

__all__ = [
    "Action",
    "BadHelo",
    "Budget",
    "Cache",
    "CheckResult",
    "Checked",
    "Checker",
    "Config",
    "ConfigError",
    "DnsAnswer",
    "DnsStatus",
    "DnsblZone",
    "EnforceAction",
    "EnforcePolicy",
    "Enforcement",
    "Envelope",
    "Facts",
    "Fetcher",
    "Finding",
    "Identity",
    "InvalidRecord",
    "InvalidZoneFile",
    "ListenError",
    "Listing",
    "LocalZone",
    "Method",
    "MethodOffer",
    "MethodOutcome",
    "Netblock",
    "Policy",
    "Rating",
    "RatingClass",
    "RatingPolicy",
    "RatingSummary",
    "Record",
    "RegcheckError",
    "RegistryFacts",
    "RegistryStatus",
    "Resolver",
    "Result",
    "SeedVerdict",
    "ServiceScale",
    "Session",
    "SymbolHit",
    "Transport",
    "Verdict",
    "__version__",
    "build_reply",
    "check_config",
    "enforce",
    "evaluate",
    "format_reply",
    "id_at_level",
    "identify",
    "load_checked",
    "load_config",
    "lookup_record",
    "make_resolver",
    "normalise_helo",
    "parse_ip",
    "parse_record",
    "plan",
    "qr1",
    "rate",
    "rating_weight",
    "select_record",
    "wants_methods",
]
