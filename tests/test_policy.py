"""The pure part of the Postfix policy listener (rspamd_regcheck/_policy.py), from tables."""

from __future__ import annotations

import pytest

from rspamd_regcheck import symbols as S
from rspamd_regcheck._enforce import ADD_HEADER, NO_ACTION, EnforceAction, Enforcement, EnforcePolicy, enforce
from rspamd_regcheck._policy import (
    SMTP_REPLY_LINE,
    BadRequest,
    Kind,
    PolicyRequest,
    PolicySettings,
    Reply,
    RequestReader,
    fit,
    policy_action,
    public_text,
    respond,
    text_room,
)
from rspamd_regcheck._types import Action, SeedVerdict, SymbolHit, Verdict
from rspamd_regcheck.config import config_from_mapping
from rspamd_regcheck.errors import ConfigError

REQ = b"request=smtpd_access_policy\nprotocol_state=RCPT\nclient_address=192.0.2.1\ninstance=a1\n\n"


def _kinds(items: list[PolicyRequest | BadRequest]) -> list[str]:
    return [type(i).__name__ for i in items]


# -- reading ----------------------------------------------------------------------------------


READS = [
    pytest.param([REQ], ["PolicyRequest"], id="one-request"),
    pytest.param([REQ.replace(b"\n", b"\r\n")], ["PolicyRequest"], id="crlf-lines"),
    pytest.param([bytes([b]) for b in REQ], ["PolicyRequest"], id="byte-by-byte"),
    pytest.param([REQ + REQ + REQ], ["PolicyRequest"] * 3, id="three-in-one-read"),
    pytest.param([REQ[:30], REQ[30:] + REQ[:5], REQ[5:]], ["PolicyRequest"] * 2, id="split-anywhere"),
    pytest.param([b"\n"], ["BadRequest"], id="empty-request"),
    pytest.param(
        [b"request=smtpd_access_policy\nno equals sign\n\n" + REQ],
        ["BadRequest", "PolicyRequest"],
        id="line-without-equals",
    ),
    pytest.param([b"request=other\n\n"], ["BadRequest"], id="not-smtpd-access-policy"),
    pytest.param([b"request=smtpd_access_policy\n=value\n\n"], ["BadRequest"], id="empty-name"),
    pytest.param(
        [b"request=smtpd_access_policy\nsender=" + b"x" * 5000 + b"\n\n" + REQ],
        ["BadRequest", "PolicyRequest"],
        id="overlong-line",
    ),
    pytest.param(
        [b"request=smtpd_access_policy\nsender=" + b"x" * 3000, b"x" * 3000 + b"\n\n" + REQ],
        ["BadRequest", "PolicyRequest"],
        id="overlong-line-across-reads",
    ),
    pytest.param(
        [b"request=smtpd_access_policy\n" + b"".join(b"a%d=1\n" % i for i in range(200)) + b"\n" + REQ],
        ["BadRequest", "PolicyRequest"],
        id="too-many-attributes",
    ),
    pytest.param(
        [b"request=smtpd_access_policy\nhelo_name=\xff\xfe\n\n"], ["PolicyRequest"], id="not-utf8-is-replaced"
    ),
    pytest.param([REQ[:-1]], [], id="unfinished"),
]


@pytest.mark.parametrize(("chunks", "expected"), READS)
def test_reader(chunks: list[bytes], expected: list[str]) -> None:
    reader = RequestReader(max_line=2048, max_attributes=100)
    out: list[PolicyRequest | BadRequest] = []
    for chunk in chunks:
        out += reader.feed(chunk)
    assert _kinds(out) == expected


# A whole request in one read is taken in place (`RequestReader._block`); the same bytes fed so that
# no read holds the empty line go line by line (`_line`).  Both must read every request the same.
SAME_EITHER_WAY = [
    pytest.param(REQ, id="plain"),
    pytest.param(b"request=smtpd_access_policy\nsender= a=b=c \n\n", id="equals-in-value"),
    pytest.param(b"request=smtpd_access_policy\nsender=x\nsender=y\n\n", id="repeated-name-last-wins"),
    pytest.param(b"request=smtpd_access_policy\n  helo_name = h \n\n", id="spaces-around-name"),
    pytest.param(b"request=smtpd_access_policy\nhelo_name=\xff\xfe\n\n", id="not-utf8"),
    pytest.param(b"request=smtpd_access_policy\nhelo_name=a\x00b\n\n", id="nul-in-value"),
    pytest.param(b"request=smtpd_access_policy\r\nsender=x\r\n\n", id="crlf"),
    pytest.param(b"request=smtpd_access_policy\nno equals sign\n\n", id="line-without-equals"),
    pytest.param(b"request=smtpd_access_policy\nbad name=x\n\n", id="space-in-name"),
    pytest.param(b"request=smtpd_access_policy\n" + b"n" * 65 + b"=x\n\n", id="name-too-long"),
    pytest.param(b"request=smtpd_access_policy\n=x\n\n", id="empty-name"),
    pytest.param(b"request=other\nsender=x\n\n", id="not-smtpd-access-policy"),
    pytest.param(b"sender=x\n\n", id="no-request-attribute"),
    pytest.param(b"request=smtpd_access_policy\nsender=" + b"a" * 3000 + b"\n\n", id="line-too-long"),
    pytest.param(
        b"request=smtpd_access_policy\n" + b"".join(b"x%d=y\n" % i for i in range(120)) + b"\n", id="too-many"
    ),
    pytest.param(b"request=smtpd_access_policy\n" + b"x=y\n" * 120 + b"\n", id="many-lines-one-name"),
    pytest.param(b"\nrequest=smtpd_access_policy\n\n", id="empty-line-first"),
]


@pytest.mark.parametrize("data", SAME_EITHER_WAY)
def test_reader_whole_request_in_place_or_line_by_line(data: bytes) -> None:
    at_once = RequestReader(max_line=2048, max_attributes=100).feed(data)
    slow = RequestReader(max_line=2048, max_attributes=100)
    line_by_line = slow.feed(data[:-1]) + slow.feed(data[-1:])
    assert at_once == line_by_line
    assert not slow.in_request


def test_reader_values_and_state() -> None:
    reader = RequestReader()
    assert not reader.in_request
    assert reader.feed(b"request=smtpd_access_policy\nsender= a=b \n") == []
    assert reader.in_request
    (req,) = reader.feed(b"\n")
    assert isinstance(req, PolicyRequest)
    assert req.get("sender") == " a=b "  # only the first '=' splits; the value is kept as sent
    assert not reader.in_request


def test_reader_memory_is_bounded() -> None:
    reader = RequestReader(max_line=2048)
    for _ in range(1000):
        assert reader.feed(b"y" * 65536) == []
        assert len(reader._buf) <= 2048 + 65536
    (bad,) = reader.feed(b"\n\n")
    assert isinstance(bad, BadRequest) and "longer than 2048" in bad.reason


# -- deciding ---------------------------------------------------------------------------------


def verdict(action: Action, *symbols: str, code: int = 550, xcode: str = "5.7.1", message: str = "why") -> Verdict:
    return Verdict(
        symbols=tuple(SymbolHit(s) for s in symbols),
        seed=SeedVerdict(action, code, xcode, message),
        add_headers=(("X-Regcheck", "192.0.2.1 example.net QR1 fail ratings="),),
    )


REJECT = verdict(Action.REJECT, "REGCHECK_QR1_FAIL")
TEMPFAIL = verdict(Action.TEMPFAIL, S.DNSFAIL, code=451, xcode="4.4.3")
NO_RECORD = verdict(Action.REJECT, S.NO_RECORD)
LISTED_NO_RECORD = verdict(Action.REJECT, S.DNSBL, S.NO_RECORD)
INVALID = verdict(Action.TEMPFAIL, S.RECORD_PERMFAIL, code=451, xcode="4.7.0")
DEFAULT = PolicySettings()
SEED = EnforcePolicy()  # [policy]'s defaults
U = "u@d.test"

# (verdict, listener settings, [policy], mode, recipient, may refuse) -> the Postfix action
ACTIONS = [
    pytest.param(REJECT, DEFAULT, SEED, "enforce", U, True, Kind.REJECT, id="reject"),
    pytest.param(REJECT, DEFAULT, SEED, "score", U, True, Kind.PREPEND, id="reject-score-mode-headers-only"),
    pytest.param(TEMPFAIL, DEFAULT, SEED, "enforce", U, True, Kind.DEFER_IF_PERMIT, id="tempfail"),
    pytest.param(
        TEMPFAIL, DEFAULT, EnforcePolicy(tempfail=False), "enforce", U, True, Kind.PREPEND, id="tempfail-not-enforced"
    ),
    pytest.param(TEMPFAIL, DEFAULT, SEED, "score", U, True, Kind.PREPEND, id="tempfail-score-mode"),
    pytest.param(NO_RECORD, DEFAULT, SEED, "enforce", U, True, Kind.PREPEND, id="no-record-not-enforced-by-default"),
    pytest.param(
        NO_RECORD, DEFAULT, EnforcePolicy(no_record=True), "enforce", U, True, Kind.REJECT, id="no-record-enforced"
    ),
    pytest.param(LISTED_NO_RECORD, DEFAULT, SEED, "enforce", U, True, Kind.REJECT, id="dnsbl-listed-no-record"),
    pytest.param(INVALID, DEFAULT, SEED, "enforce", U, True, Kind.PREPEND, id="invalid-record-not-enforced"),
    pytest.param(
        INVALID,
        DEFAULT,
        EnforcePolicy(invalid_record=True),
        "enforce",
        U,
        True,
        Kind.DEFER_IF_PERMIT,
        id="invalid-record-enforced",
    ),
    pytest.param(verdict(Action.FILTER), DEFAULT, SEED, "enforce", U, True, Kind.PREPEND, id="filter"),
    pytest.param(verdict(Action.ACCEPT), DEFAULT, SEED, "enforce", U, True, Kind.PREPEND, id="accept"),
    pytest.param(verdict(Action.CONTINUE), DEFAULT, SEED, "enforce", U, True, Kind.DUNNO, id="continue"),
    pytest.param(REJECT, DEFAULT, SEED, "enforce", "postmaster@d.test", True, Kind.PREPEND, id="postmaster"),
    pytest.param(REJECT, DEFAULT, SEED, "enforce", "<Abuse@D.Test>", True, Kind.PREPEND, id="abuse-case-brackets"),
    pytest.param(
        REJECT, DEFAULT, EnforcePolicy(never_reject=()), "enforce", "postmaster@d.test", True, Kind.REJECT, id="no-list"
    ),
    pytest.param(REJECT, DEFAULT, SEED, "enforce", None, True, Kind.PREPEND, id="recipient-unknown-waits-for-rcpt"),
    pytest.param(
        REJECT, DEFAULT, EnforcePolicy(never_reject=()), "enforce", None, True, Kind.REJECT, id="unknown-no-list"
    ),
    pytest.param(REJECT, DEFAULT, SEED, "enforce", U, False, Kind.PREPEND, id="no-refusal-at-data"),
    pytest.param(
        verdict(Action.ACCEPT),
        PolicySettings(actions={EnforceAction.NO_ACTION: Kind.DUNNO}),
        SEED,
        "enforce",
        U,
        True,
        Kind.DUNNO,
        id="no-action-mapped-to-dunno",
    ),
    pytest.param(
        TEMPFAIL,
        PolicySettings(actions={EnforceAction.SOFT_REJECT: Kind.DEFER}),
        SEED,
        "enforce",
        U,
        True,
        Kind.DEFER,
        id="soft-reject-mapped-to-defer",
    ),
    pytest.param(
        TEMPFAIL,
        PolicySettings(actions={EnforceAction.SOFT_REJECT: Kind.REJECT}),
        SEED,
        "score",
        U,
        True,
        Kind.PREPEND,
        id="score-mode-never-refuses",
    ),
]


@pytest.mark.parametrize(("v", "settings", "policy", "mode", "rcpt", "may_refuse", "expected"), ACTIONS)
def test_policy_action(
    v: Verdict,
    settings: PolicySettings,
    policy: EnforcePolicy,
    mode: str,
    rcpt: str | None,
    may_refuse: bool,
    expected: Kind,
) -> None:
    kind, decision = policy_action(v, settings, policy, mode, rcpt, may_refuse)
    assert kind is expected
    if kind.refusal:  # the text given is enforce's, the one rspamd's plugin would give
        assert decision == enforce(v, policy, [rcpt] if rcpt else [])
        assert decision.text == v.seed.message


HEADER = ("X-Regcheck", "192.0.2.1 example.net QR1 fail ratings=")
REFUSED = Enforcement(EnforceAction.REJECT, 550, "5.7.1", "why")
DEFERRED = Enforcement(EnforceAction.SOFT_REJECT, 451, "4.4.3", "why")
RESPONSES = [
    pytest.param(Kind.REJECT, REFUSED, HEADER, True, b"action=550 5.7.1 why\n\n", id="reject"),
    pytest.param(
        Kind.PREPEND,
        ADD_HEADER,
        HEADER,
        True,
        b"action=PREPEND X-Regcheck: 192.0.2.1 example.net QR1 fail ratings=\n\n",
        id="add-header-prepends",
    ),
    pytest.param(Kind.PREPEND, ADD_HEADER, None, True, b"action=DUNNO\n\n", id="header-already-sent"),
    pytest.param(
        Kind.DEFER_IF_PERMIT, DEFERRED, None, True, b"action=DEFER_IF_PERMIT 4.4.3 why\n\n", id="defer-if-permit"
    ),
    pytest.param(Kind.DEFER, DEFERRED, None, True, b"action=DEFER 4.4.3 why\n\n", id="defer"),
    pytest.param(
        Kind.DEFER_IF_PERMIT, REFUSED, None, True, b"action=DEFER_IF_PERMIT 4.7.1 why\n\n", id="defer-of-a-5xx-verdict"
    ),
    pytest.param(Kind.REJECT, DEFERRED, None, True, b"action=550 5.7.1 why\n\n", id="reject-of-a-4xx-verdict"),
    pytest.param(Kind.REJECT, NO_ACTION, HEADER, True, b"action=DUNNO\n\n", id="no-text-no-refusal"),
    pytest.param(Kind.PREPEND, REFUSED, HEADER, False, b"action=DUNNO\n\n", id="no-prepend-at-end-of-message"),
    pytest.param(
        Kind.PREPEND,
        ADD_HEADER,
        ("Received-SPF", "Pass (x)\r\n\r\naction=OK"),
        True,
        b"action=PREPEND Received-SPF: Pass (x)????action=OK\n\n",
        id="header-cannot-inject-lines",
    ),
    pytest.param(Kind.DUNNO, REFUSED, HEADER, True, b"action=DUNNO\n\n", id="dunno"),
]


@pytest.mark.parametrize(("kind", "decision", "header", "may_prepend", "wire"), RESPONSES)
def test_respond(
    kind: Kind, decision: Enforcement, header: tuple[str, str] | None, may_prepend: bool, wire: bytes
) -> None:
    assert respond(kind, decision, header=header, may_prepend=may_prepend).line() == wire


TEXTS = [
    pytest.param(
        "Host 192.0.2.7 is not authorised for 'x'",
        "192.0.2.7",
        "Host 192.0.2.7 is not authorised for 'x'",
        id="client-address-kept",
    ),
    pytest.param(
        "lookup failed (127.0.0.1:53: Connection refused)",
        "192.0.2.7",
        "lookup failed (a server: Connection refused)",
        id="resolver-address-removed",
    ),
    pytest.param("TCP to [::1]:5353: reset", "192.0.2.7", "TCP to a server: reset", id="v6-resolver-removed"),
    pytest.param(
        "Host 2001:db8::25 is not authorised",
        "2001:db8::25",
        "Host 2001:db8::25 is not authorised",
        id="v6-client-kept",
    ),
    pytest.param(
        "HELO name 'b\u00fcch\x00\r\nx' is bad", None, "HELO name 'b?ch???x' is bad", id="printable-ascii-only"
    ),
]


@pytest.mark.parametrize(("message", "client", "expected"), TEXTS)
def test_public_text(message: str, client: str | None, expected: str) -> None:
    assert public_text(message, client) == expected


def test_fit_keeps_postfix_reply_within_512() -> None:
    rcpt = "r" * 60 + "@dest.test"
    long = "word " * 200
    text = fit(long, text_room(rcpt))
    line = f"550 5.7.1 <{rcpt}>: Recipient address rejected: {text}\r\n"
    assert len(line) <= SMTP_REPLY_LINE
    assert text.endswith("...") and len(text) > 300
    assert fit("short", 100) == "short"


def test_long_reason_through_respond_fits() -> None:
    decision = Enforcement(EnforceAction.REJECT, 550, "5.7.1", "x" * 5000)
    reply = respond(Kind.REJECT, decision, header=None, address="u@d.test")
    assert len(reply.text) < SMTP_REPLY_LINE
    assert Reply(Kind.DUNNO).line() == b"action=DUNNO\n\n"


WIRE = [
    pytest.param(Reply(Kind.DUNNO), b"action=DUNNO\n\n", "dunno", id="dunno"),
    pytest.param(Reply(Kind.PREPEND, "X-A: b"), b"action=PREPEND X-A: b\n\n", "prepend", id="prepend"),
    pytest.param(Reply(Kind.REJECT, "550 5.7.1 no"), b"action=550 5.7.1 no\n\n", "reject", id="reject-code-is-action"),
    pytest.param(
        Reply(Kind.DEFER_IF_PERMIT, "4.7.1 later"),
        b"action=DEFER_IF_PERMIT 4.7.1 later\n\n",
        "defer_if_permit",
        id="defer-if-permit",
    ),
    pytest.param(
        Reply(Kind.PREPEND, "X: " + "y" * 3000), b"action=PREPEND X: " + b"y" * 1982 + b"\n\n", "prepend", id="cut"
    ),
]


@pytest.mark.parametrize(("reply", "wire", "status"), WIRE)
def test_reply_bytes_and_status_made_once(reply: Reply, wire: bytes, status: str) -> None:
    assert reply.line() == reply.wire == wire
    assert reply.status == status
    assert reply == Reply(reply.kind, reply.text)  # equal by kind and text, as before


# -- configuration ----------------------------------------------------------------------------


def test_config_defaults_and_values() -> None:
    assert config_from_mapping({}).policy_server.listen is None  # off by default
    cfg = config_from_mapping(
        {
            "policy_server": {
                "listen": "127.0.0.1:10040",
                "state": "end-of-message",
                "mode": "enforce",
                "actions": {"soft_reject": "defer", "NO_ACTION": "DUNNO", "add header": "dunno"},
                "clients": ["192.0.2.0/24"],
            }
        }
    ).policy_server
    assert cfg.listen == ("127.0.0.1", 10040)
    assert cfg.state == "END-OF-MESSAGE"
    assert cfg.actions == {
        EnforceAction.REJECT: Kind.REJECT,
        EnforceAction.SOFT_REJECT: Kind.DEFER,
        EnforceAction.ADD_HEADER: Kind.DUNNO,
        EnforceAction.NO_ACTION: Kind.DUNNO,
    }


BAD_CONFIG = [
    pytest.param({"listen": "nowhere:10040"}, "policy_server.listen", id="listen-not-an-ip"),
    pytest.param({"state": "HELO"}, "policy_server.state", id="state"),
    pytest.param({"mode": "strict"}, "policy_server.mode", id="mode"),
    pytest.param({"actions": {"REJECT": "DISCARD"}}, "policy_server.actions.REJECT", id="action-kind"),
    pytest.param({"actions": {"MAYBE": "DUNNO"}}, "policy_server.actions.MAYBE", id="action-name"),
    pytest.param({"actions": {"TEMPFAIL": "DUNNO"}}, "policy_server.actions.TEMPFAIL", id="verdict-is-no-action-name"),
    pytest.param({"actions": {"add_header": "REJECT"}}, "policy_server.actions.add_header", id="refusal-without-text"),
    pytest.param({"actions": {"no_action": "DEFER"}}, "policy_server.actions.no_action", id="no-action-refusal"),
    # [policy] governs enforcement for rspamd and Postfix alike: the old copies point there
    pytest.param({"never_reject": []}, "policy_server.never_reject", id="never-reject-is-policys"),
    pytest.param({"enforce_tempfail": False}, "policy_server.enforce_tempfail", id="enforce-tempfail-is-policys"),
    pytest.param({"enforce_no_record": True}, "policy_server.enforce_no_record", id="no-record-is-policys"),
    pytest.param({"enforce_invalid_record": True}, "policy_server.enforce_invalid_record", id="invalid-is-policys"),
    pytest.param({"max_line": 10}, "policy_server.max_line", id="max-line"),
    pytest.param({"clients": ["x"]}, "policy_server.clients[0]", id="clients"),
    pytest.param({"listne": "127.0.0.1:1"}, "policy_server.listne", id="unknown-key"),
]


@pytest.mark.parametrize(("table", "key"), BAD_CONFIG)
def test_config_errors_name_the_key(table: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        config_from_mapping({"policy_server": table})
    assert info.value.key == key
    name = key.removeprefix("policy_server.")
    if name in ("never_reject", "enforce_tempfail", "enforce_no_record", "enforce_invalid_record"):
        assert f"set policy.{name} instead" in str(info.value)


def test_config_check_round_trip() -> None:
    import tomllib

    cfg = config_from_mapping({"policy_server": {"listen": "127.0.0.1:10040", "actions": {"add_header": "DUNNO"}}})
    again = config_from_mapping(tomllib.loads(cfg.to_toml()))
    assert again.policy_server == cfg.policy_server
