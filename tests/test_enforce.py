"""The enforce decision (rspamd_regcheck/_enforce.py): the one home of the rule, table-driven."""

from __future__ import annotations

import ipaddress

import pytest

from rspamd_regcheck import BadHelo, Config, Facts, Policy, RegistryFacts, RegistryStatus, evaluate
from rspamd_regcheck._enforce import ADD_HEADER, NO_ACTION, EnforceAction, EnforcePolicy, enforce, protected
from rspamd_regcheck._prescreen import Finding, Listing
from rspamd_regcheck._ratings import rate
from rspamd_regcheck._record import parse_record
from rspamd_regcheck._types import Method, MethodOutcome, Result

CFG = Config()
POLICY = Policy(CFG.ratings, CFG.method_order, CFG.method_limits)
IP = ipaddress.ip_address("192.0.2.1")
GOOD = parse_record("v=reg1 svc=S1:A,M2:A,H1:B ip4=192.0.2.0/24")


def verdict(status=RegistryStatus.FOUND, record=GOOD, methods=(), prescreen=(), helo="mx.x.example", **kw):
    facts = Facts(
        ip=IP,
        helo=helo,
        id="x.example",
        registry=RegistryFacts(status, record=record if status is RegistryStatus.FOUND else None, **kw),
        ratings=rate(record.ratings, CFG.ratings) if record is not None else None,
        methods=methods,
        prescreen=prescreen,
    )
    return evaluate(facts, POLICY)


QR1_PASS = (MethodOutcome(Method.QR1, Result.PASS),)
QR1_FAIL = (MethodOutcome(Method.QR1, Result.FAIL),)
SPF_TEMP = (MethodOutcome(Method.SPF, Result.TEMPERROR),)
LISTED = (Finding("bl.example", Listing.LISTED, ("127.0.0.2",)),)
OFF = EnforcePolicy(tempfail=False)
ALL = EnforcePolicy(no_record=True, invalid_record=True)

CASES = [
    # verdict, policy, recipients, action, SMTP code
    pytest.param(verdict(methods=QR1_PASS), EnforcePolicy(), (), EnforceAction.NO_ACTION, None, id="accept"),
    pytest.param(verdict(methods=QR1_FAIL), EnforcePolicy(), ("a@r.example",), EnforceAction.REJECT, 550, id="reject"),
    pytest.param(
        verdict(methods=QR1_FAIL), EnforcePolicy(), ("Postmaster@r.example",), EnforceAction.ADD_HEADER, None,
        id="postmaster-never-rejected",
    ),
    pytest.param(
        verdict(methods=QR1_FAIL), EnforcePolicy(), ("a@r.example", "abuse@r.example"), EnforceAction.ADD_HEADER, None,
        id="abuse-among-others",
    ),
    pytest.param(verdict(methods=QR1_FAIL), EnforcePolicy(), ("postmaster",), EnforceAction.ADD_HEADER, None,
                 id="bare-postmaster-rfc5321"),
    pytest.param(
        verdict(methods=QR1_FAIL), EnforcePolicy(never_reject=()), ("postmaster@r.example",), EnforceAction.REJECT, 550,
        id="never-reject-emptied",
    ),
    pytest.param(
        verdict(methods=QR1_FAIL), EnforcePolicy(), ("postmaster.x@r.example",), EnforceAction.REJECT, 550,
        id="only-exact-local-parts",
    ),
    pytest.param(verdict(RegistryStatus.NO_RECORD), EnforcePolicy(), (), EnforceAction.NO_ACTION, None,
                 id="no-record-by-default"),
    pytest.param(verdict(RegistryStatus.NO_RECORD), ALL, (), EnforceAction.REJECT, 550, id="no-record-when-asked"),
    pytest.param(
        verdict(RegistryStatus.INVALID, reasons=("svc: bad",)), EnforcePolicy(), (), EnforceAction.NO_ACTION, None,
        id="invalid-record-by-default",
    ),
    pytest.param(
        verdict(RegistryStatus.INVALID, reasons=("svc: bad",)), ALL, (), EnforceAction.SOFT_REJECT, 451,
        id="invalid-record-when-asked",
    ),
    pytest.param(
        verdict(RegistryStatus.INVALID, reasons=("svc: bad",)), EnforcePolicy(invalid_record=True, tempfail=False),
        (), EnforceAction.SOFT_REJECT, 451, id="invalid-record-is-not-dns-trouble",
    ),
    pytest.param(
        verdict(RegistryStatus.DNSFAIL, reasons=("timeout",)), EnforcePolicy(), (), EnforceAction.SOFT_REJECT, 451,
        id="registry-dns-trouble-defers",
    ),
    pytest.param(verdict(RegistryStatus.DNSFAIL, reasons=("timeout",)), OFF, (), EnforceAction.NO_ACTION, None,
                 id="registry-dns-trouble-tempfail-off"),
    pytest.param(verdict(methods=SPF_TEMP), EnforcePolicy(), (), EnforceAction.SOFT_REJECT, 451, id="method-temperror"),
    pytest.param(verdict(methods=SPF_TEMP), OFF, (), EnforceAction.NO_ACTION, None, id="method-temperror-off"),
    pytest.param(
        verdict(RegistryStatus.DNSFAIL, reasons=("timeout",)), EnforcePolicy(), ("abuse@r.example",),
        EnforceAction.ADD_HEADER, None, id="abuse-never-deferred",
    ),
    pytest.param(verdict(record=parse_record("v=reg1 ip4=192.0.2.0/24")), EnforcePolicy(), (),
                 EnforceAction.ADD_HEADER, None, id="filter"),
    pytest.param(verdict(helo=BadHelo("bare-word", "JUPITER")), EnforcePolicy(), (), EnforceAction.REJECT, 550,
                 id="bad-helo"),
    pytest.param(verdict(record=parse_record("v=reg1 stop=all")), EnforcePolicy(), (), EnforceAction.REJECT, 550,
                 id="stop-all"),
    pytest.param(
        verdict(RegistryStatus.NO_RECORD, prescreen=LISTED), EnforcePolicy(), (), EnforceAction.REJECT, 550,
        id="dnsbl-listing-rejects-without-a-record",
    ),
]  # fmt: skip


@pytest.mark.parametrize("v,policy,rcpts,action,code", CASES)
def test_enforce(v, policy, rcpts, action, code):
    decided = enforce(v, policy, rcpts)
    assert decided.action is action
    assert decided.smtp_code == code
    if code is None:
        assert decided.message is None and decided in (NO_ACTION, ADD_HEADER)
    else:
        assert decided.message == f"{v.seed.smtp_code} {v.seed.xcode} {v.seed.message}"


def test_smtp_text_names_no_resolver():
    decided = enforce(verdict(RegistryStatus.DNSFAIL, reasons=("127.0.0.1:53: Connection refused",)), EnforcePolicy())
    assert decided.message == "451 4.4.3 Sender registry lookup for 'x.example' failed; please try again later"


def test_policy_of_config():
    cfg = Config(enforce_no_record=True, enforce_tempfail=False, never_reject=("postmaster",))
    assert EnforcePolicy.of(cfg) == EnforcePolicy(no_record=True, tempfail=False, never_reject=("postmaster",))


@pytest.mark.parametrize(
    "rcpts,expected",
    [
        pytest.param(("POSTMASTER@x",), True, id="case"),
        pytest.param(('"postmaster"@x',), False, id="quoted-is-not-the-same-text"),
        pytest.param(("a@b@postmaster",), False, id="last-at-splits"),
        pytest.param((), False, id="none"),
    ],
)
def test_protected(rcpts, expected):
    assert protected(rcpts, ("postmaster", "abuse")) is expected
