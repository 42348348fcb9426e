"""CSA, Sender ID and DKIM: the PRA rules as tables, the methods against knot."""

from __future__ import annotations

from dataclasses import replace

import pytest

from rspamd_regcheck import Action, Config
from rspamd_regcheck._dkim import dkim_method
from rspamd_regcheck._headers import header_block
from rspamd_regcheck._sid import SidPermError, pra, select_record
from rspamd_regcheck._types import Result
from rspamd_regcheck.config import config_from_mapping

from helpers import run_check, symbol_options

REG = "id.regcheck.test"
GOOD = "ratings=S1:A,M2:A,H1:B"


@pytest.fixture
def config(knot) -> Config:
    return replace(
        config_from_mapping({"policy": {"local_networks": []}, "spf": {"receiver": "mx.receiver.test"}}),
        registry_zones=(REG,),
        nameservers=(knot.host,),
        dns_port=knot.port,
    )


check = run_check
symbols = symbol_options


# -- CSA -------------------------------------------------------------------------------------

CSA = [
    pytest.param(
        "192.0.2.40",
        "w2.csa.example",
        Action.ACCEPT,
        "REGCHECK_CSA_ALLOW",
        ["csa.example", "srv=_client._smtp.w2.csa.example", "target=w2.csa.example"],
        id="weight-2-match",
    ),
    pytest.param(
        "2001:db8:40::1",
        "w2.csa.example",
        Action.ACCEPT,
        "REGCHECK_CSA_ALLOW",
        ["csa.example", "srv=_client._smtp.w2.csa.example", "target=w2.csa.example"],
        id="weight-2-ipv6",
    ),
    pytest.param(
        "192.0.2.41",
        "w2.csa.example",
        Action.REJECT,
        "REGCHECK_CSA_FAIL",
        [
            "csa.example",
            "srv=_client._smtp.w2.csa.example",
            "target=w2.csa.example",
            "192.0.2.41 is not an address of the target",
            GOOD,
        ],
        id="weight-2-target-mismatch",
    ),
    pytest.param(
        "192.0.2.40",
        "w0.csa.example",
        Action.REJECT,
        "REGCHECK_CSA_FAIL",
        ["csa.example", "srv=_client._smtp.w0.csa.example", "weight=0", "not authorised", GOOD],
        id="weight-0",
    ),
    pytest.param(
        "192.0.2.40",
        "w1.csa.example",
        Action.REJECT,
        "REGCHECK_CSA_FAIL",
        ["csa.example", "srv=_client._smtp.w1.csa.example", "weight=1", "not authorised", GOOD],
        id="weight-1",
    ),
    pytest.param(
        "192.0.2.40",
        "w3.csa.example",
        Action.CONTINUE,
        "REGCHECK_CSA_NA",
        ["csa.example", "srv=_client._smtp.w3.csa.example", "weight=3", "authorised, address not asserted", GOOD],
        id="weight-3",
    ),
    pytest.param(
        "192.0.2.40",
        "notarget.csa.example",
        Action.REJECT,
        "REGCHECK_CSA_FAIL",
        ["csa.example", "srv=_client._smtp.notarget.csa.example", "weight=2", "no target", GOOD],
        id="weight-2-no-target",
    ),
    pytest.param(
        "192.0.2.40",
        "deep.walk.csa.example",
        Action.REJECT,
        "REGCHECK_CSA_FAIL",
        ["csa.example", "srv=_client._smtp.csa.example", "every client under it has its own record", GOOD],
        id="parent-port-bit-1",
    ),
    pytest.param(
        "192.0.2.40",
        "v2.csa.example",
        Action.REJECT,
        "REGCHECK_CSA_FAIL",
        ["csa.example", "srv=_client._smtp.csa.example", "every client under it has its own record", GOOD],
        id="not-version-1-is-no-record",
    ),
    pytest.param(
        "192.0.2.40",
        "mx.csa2.example",
        Action.CONTINUE,
        "REGCHECK_CSA_NA",
        ["csa2.example", "srv=_client._smtp.csa2.example", "parent record says nothing of this host", GOOD],
        id="parent-without-port-bit",
    ),
    pytest.param(
        "192.0.2.40",
        "a.b.csa3.example",
        Action.CONTINUE,
        "REGCHECK_CSA_NA",
        ["csa3.example", "no CSA record", GOOD],
        id="no-record-anywhere",
    ),
    pytest.param(
        "192.0.2.40",
        "mx.csafail.test",
        Action.TEMPFAIL,
        "REGCHECK_CSA_DNSFAIL",
        ["csafail.test", "srv=_client._smtp.mx.csafail.test", "REFUSED", GOOD],
        id="dns-failure",
    ),
]


@pytest.mark.parametrize("ip,helo,action,symbol,options", CSA)
def test_csa(config, ip, helo, action, symbol, options):
    result = check(config, ip, helo)
    assert result.verdict.seed.action is action, result.verdict.seed
    assert symbols(result)[symbol] == options


def test_csa_walk_never_asks_the_tld(knot, config):
    before = knot.queries()
    result = check(config, "192.0.2.40", "a.b.csa3.example")
    # the registry, then _client._smtp at a.b.csa3, b.csa3 and csa3: not at "example"
    assert result.queries == 4
    assert knot.queries() - before == 4


def test_csa_walk_stopped_by_the_budget(knot, config):
    before = knot.queries()
    result = check(config, "192.0.2.40", "a.b.c.d.csawalk.example")
    got = symbols(result)
    assert got["REGCHECK_BUDGET"] == [
        "csawalk.example",
        "CSA",
        "method budget of 2 queries spent at _client._smtp.c.d.csawalk.example",
    ]
    assert result.verdict.seed.action is Action.CONTINUE
    assert knot.queries() - before == 1 + 2


# -- Sender ID -------------------------------------------------------------------------------

PRA = [
    pytest.param([("From", "a@x.example")], "a@x.example", "From", id="from"),
    pytest.param(
        [("From", "A <a@x.example>"), ("Sender", "s@y.example")], "s@y.example", "Sender", id="sender-before-from"
    ),
    pytest.param(
        [("From", "a@x.example"), ("Resent-From", "r@z.example"), ("Sender", "s@y.example")],
        "r@z.example",
        "Resent-From",
        id="resent-from-first",
    ),
    pytest.param(
        [("Resent-Sender", "rs@w.example"), ("Resent-From", "r@z.example"), ("From", "a@x.example")],
        "rs@w.example",
        "Resent-Sender",
        id="resent-sender-first",
    ),
    pytest.param(
        [
            ("Resent-From", "r@z.example"),
            ("Received", "from a by b"),
            ("Resent-Sender", "old@w.example"),
            ("From", "a@x.example"),
        ],
        "r@z.example",
        "Resent-From",
        id="resent-sender-of-an-older-block",
    ),
    pytest.param(
        [("Resent-From", "r@z.example"), ("Resent-Sender", "rs@w.example")],
        "rs@w.example",
        "Resent-Sender",
        id="resent-sender-same-block",
    ),
    pytest.param([("Resent-Sender", ""), ("From", "a@x.example")], "a@x.example", "From", id="empty-headers-skipped"),
    pytest.param(
        [("Sender", "s@y.example"), ("Sender", "t@y.example")], None, "several Sender headers", id="two-senders"
    ),
    pytest.param([("From", "a@x.example"), ("From", "b@x.example")], None, "several From headers", id="two-froms"),
    pytest.param([("From", "a@x.example, b@x.example")], None, "malformed From header", id="two-mailboxes"),
    pytest.param([("From", "undisclosed-recipients:;")], None, "malformed From header", id="no-mailbox"),
    pytest.param([("From", "a@localhost")], None, "malformed From header", id="domain-without-dot"),
    pytest.param([("Subject", "hi")], None, "no Resent-Sender, Resent-From, Sender or From header", id="none"),
]


@pytest.mark.parametrize("headers,address,source", PRA)
def test_pra(headers, address, source):
    assert pra(headers) == (address, source)


def test_header_block_reads_only_headers():
    raw = b"Received: from a\r\n by b\r\nFrom: Alice\r\n <alice@x.example>\r\n\r\nFrom: body@y.example\r\n"
    headers = header_block(raw)
    assert headers == (("Received", "from a by b"), ("From", "Alice <alice@x.example>"))
    assert pra(headers) == ("alice@x.example", "From")


@pytest.mark.parametrize(
    "texts,record",
    [
        pytest.param(["spf2.0/pra ip4:1.2.3.4 -all", "v=spf1 -all"], "v=spf1 ip4:1.2.3.4 -all", id="spf2-first"),
        pytest.param(["SPF2.0/mfrom,PRA -all"], "v=spf1 -all", id="mfrom-pra-any-case"),
        pytest.param(["spf2.0/mfrom -all", "v=spf1 a -all"], "v=spf1 a -all", id="mfrom-only-falls-back"),
        pytest.param(["v=spf1 a -all"], "v=spf1 a -all", id="spf1-only"),
        pytest.param(["v=spf10 x", "hello"], None, id="nothing"),
    ],
)
def test_select_record(texts, record):
    assert select_record(texts) == record


@pytest.mark.parametrize("texts", [["spf2.0/pra a", "spf2.0/pra b"], ["v=spf1 a", "v=spf1 b"]])
def test_select_record_ambiguous(texts):
    with pytest.raises(SidPermError):
        select_record(texts)


SID = [
    pytest.param(
        "pass.sid.example",
        Action.ACCEPT,
        "REGCHECK_SID_ALLOW",
        ["mechanism=ip4:192.0.2.0/24"],
        id="pass-spf2-preferred",
    ),
    pytest.param(
        "fallback.sid.example",
        Action.ACCEPT,
        "REGCHECK_SID_ALLOW",
        ["mechanism=ip4:192.0.2.0/24"],
        id="pass-spf1-fallback",
    ),
    pytest.param("fail.sid.example", Action.REJECT, "REGCHECK_SID_FAIL", ["mechanism=-all", GOOD], id="fail"),
    pytest.param("soft.sid.example", Action.FILTER, "REGCHECK_SID_SOFTFAIL", ["mechanism=~all", GOOD], id="softfail"),
    pytest.param("neutral.sid.example", Action.FILTER, "REGCHECK_SID_NEUTRAL", ["mechanism=?all", GOOD], id="neutral"),
    pytest.param("none.sid.example", Action.CONTINUE, "REGCHECK_SID_NA", ["no record", GOOD], id="none"),
    pytest.param("mfrom.sid.example", Action.CONTINUE, "REGCHECK_SID_NA", ["no record", GOOD], id="mfrom-scope-only"),
    pytest.param(
        "perm.sid.example",
        Action.CONTINUE,
        "REGCHECK_SID_PERMFAIL",
        ["several spf2.0/pra records", GOOD],
        id="permerror",
    ),
    pytest.param("temp.sid.example", Action.TEMPFAIL, "REGCHECK_SID_DNSFAIL", [GOOD], id="temperror"),
]


@pytest.mark.parametrize("domain,action,symbol,extra", SID)
def test_sender_id(config, domain, action, symbol, extra):
    headers = (("Received", "from x by y"), ("From", f"Alice <alice@{domain}>"))
    result = check(config, "192.0.2.77", "mx.sid.example", headers=headers)
    assert result.verdict.seed.action is action, result.verdict.seed
    assert symbols(result)[symbol] == ["sid.example", f"pra=alice@{domain}", "from-header=From", *extra]
    received = dict(result.verdict.add_headers).get("Received-SPF")
    if symbol in ("REGCHECK_SID_NA", "REGCHECK_SID_PERMFAIL"):
        assert received is None  # no record was evaluated
    else:
        assert received.endswith("identity=pra") and f'pra="alice@{domain}"' in received


def test_sender_id_decided_by_the_pra_header(config):
    """The same message, but a Sender header naming a failing domain takes precedence over From."""
    headers = (("From", "alice@pass.sid.example"), ("Sender", "list@fail.sid.example"))
    result = check(config, "192.0.2.77", "mx.sid.example", headers=headers)
    assert result.verdict.seed.action is Action.REJECT
    assert symbols(result)["REGCHECK_SID_FAIL"][1:3] == ["pra=list@fail.sid.example", "from-header=Sender"]


def test_sender_id_unaligned_pra(config):
    headers = (("From", "alice@spammer-own.example"),)
    result = check(config, "192.0.2.77", "mx.sid.example", headers=headers)
    assert symbols(result)["REGCHECK_SID_NA"] == [
        "sid.example",
        "pra=alice@spammer-own.example",
        "from-header=From",
        "unaligned",
        GOOD,
    ]
    result = check(replace(config, spf_alignment="none"), "192.0.2.77", "mx.sid.example", headers=headers)
    assert "REGCHECK_SID_ALLOW" in symbols(result)  # the spammer's own +all


def test_sender_id_registry_record(config):
    headers = (("From", "alice@sidreg.example"),)
    result = check(config, "198.51.100.9", "mx.sidreg.example", headers=headers)
    assert symbols(result)["REGCHECK_SID_ALLOW"] == [
        "sidreg.example",
        "pra=alice@sidreg.example",
        "from-header=From",
        "record=registry",
        "mechanism=ip4:198.51.100.0/24",
    ]


# -- DKIM ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "domains,action,symbol,options",
    [
        pytest.param(
            ["dkim.example"], Action.ACCEPT, "REGCHECK_DKIM_ALLOW", ["dkim.example", "d=dkim.example"], id="the-id"
        ),
        pytest.param(
            ["other.example", "Mail.DKIM.example"],
            Action.ACCEPT,
            "REGCHECK_DKIM_ALLOW",
            ["dkim.example", "d=mail.dkim.example"],
            id="under-the-id",
        ),
        pytest.param(
            ["notdkim.example"], Action.CONTINUE, "REGCHECK_UNVERIFIED", ["dkim.example", GOOD], id="not-aligned"
        ),
        pytest.param([], Action.CONTINUE, "REGCHECK_UNVERIFIED", ["dkim.example", GOOD], id="no-signature"),
    ],
)
def test_dkim(config, domains, action, symbol, options):
    result = check(config, "192.0.2.1", "mx.dkim.example", dkim_domains=tuple(domains))
    assert result.verdict.seed.action is action
    assert symbols(result)[symbol] == options
    assert result.queries == 1  # the registry only: DKIM asks nothing


def test_dkim_method_ignores_bad_domains():
    outcome = dkim_method(["", "bad domain", "x.example"], "x.example")
    assert outcome.result is Result.PASS and outcome.options == ("d=x.example",)
