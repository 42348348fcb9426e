"""The per-check log line: its fields, quoting of hostile values, masking, JSON, batching."""

from __future__ import annotations

import ipaddress
import json
import re

import pytest

from rspamd_regcheck import _log
from rspamd_regcheck._check import CheckResult, Envelope
from rspamd_regcheck._log import CheckLog, check_fields
from rspamd_regcheck._types import Action, SeedVerdict, SymbolHit, Verdict

LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} rspamd_regcheck\.check pid=\d+ info event=check (.*)$")


def result(helo_id="heaven.net", skipped=None):
    verdict = Verdict(
        symbols=(SymbolHit("REGCHECK_QR1_ALLOW", 1.0, ("heaven.net",)), SymbolHit("REGCHECK_RATING_HIGH", 0.9)),
        seed=SeedVerdict(Action.ACCEPT, 250, "2.0.0", "ok"),
        id=helo_id,
        skipped=skipped,
    )
    return CheckResult(verdict, 2)


def logged(fmt, env, res, mask=False, monkeypatch=None):
    monkeypatch.setattr(_log, "_format", fmt)
    log = CheckLog()  # no loop: every line is written at once
    lines = []
    log.flush = lambda: (lines.extend(log.lines), log.lines.clear())  # type: ignore[method-assign]
    log.check(env, res, 0.00123, "score", mask)
    return lines


FIELD = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|[^\s"]+)(?: |$)')


def fields_of(line):
    """The key=value pairs of a line; a quoted value is a JSON string."""
    body = LINE.match(line).group(1)
    pairs = FIELD.findall(body)
    assert " ".join(f"{k}={v}" for k, v in pairs) == body  # nothing left over
    return {k: json.loads(v) if v.startswith('"') else v for k, v in pairs}


ENV = Envelope(ip=ipaddress.ip_address("192.0.2.77"), helo="mail.heaven.net", queue_id="Q1")


def test_text_line_has_the_fields_of_check_fields(monkeypatch):
    (line,) = logged("text", ENV, result(), monkeypatch=monkeypatch)
    fields = fields_of(line)
    expected = {k: str(v) for k, v in check_fields(ENV, result(), 0.00123, "score", False).items()}
    expected["symbols"] = "REGCHECK_QR1_ALLOW,REGCHECK_RATING_HIGH"
    assert fields == expected


@pytest.mark.parametrize(
    "helo",
    [
        pytest.param('evil" verdict=accept/250 x="', id="quote-fakes-a-field"),
        pytest.param("two words", id="space"),
        pytest.param("tab\there", id="tab"),
        pytest.param("line\nbreak", id="newline"),
        pytest.param("caf\u00e9.example", id="non-ascii"),
        pytest.param("", id="empty"),
        pytest.param("x,verdict=ACCEPT/250", id="equals-fakes-a-field-for-grep"),
        pytest.param("back\\slash", id="backslash"),
    ],
)
def test_hostile_helo_stays_one_field_on_one_line(helo, monkeypatch):
    env = Envelope(ip=ENV.ip, helo=helo or None)
    (line,) = logged("text", env, result(), monkeypatch=monkeypatch)
    assert "\n" not in line and "\t" not in line
    fields = fields_of(line)
    assert list(fields) == [
        "qid", "ip", "helo", "id", "symbols", "verdict", "mode", "skipped", "queries", "enforce", "ms"
    ]  # fmt: skip
    assert fields["helo"] == (helo or "-")
    assert fields["verdict"] == "ACCEPT/250"
    assert line.count("verdict=") == 1  # a plain search finds the field only


def test_masked_addresses(monkeypatch):
    (v4,) = logged("text", ENV, result(), mask=True, monkeypatch=monkeypatch)
    env6 = Envelope(ip=ipaddress.ip_address("2001:db8:1:2::5"), helo="mail.heaven.net")
    (v6,) = logged("text", env6, result(), mask=True, monkeypatch=monkeypatch)
    assert fields_of(v4)["ip"] == "192.0.2.0/24"
    assert fields_of(v6)["ip"] == "2001:db8:1::/48"


def test_json_line(monkeypatch):
    (line,) = logged("json", ENV, result(skipped=None), monkeypatch=monkeypatch)
    obj = json.loads(line)
    assert obj["event"] == "check" and obj["qid"] == "Q1" and obj["ip"] == "192.0.2.77"
    assert obj["symbols"] == ["REGCHECK_QR1_ALLOW", "REGCHECK_RATING_HIGH"]
    assert obj["verdict"] == "ACCEPT/250" and obj["queries"] == 2 and obj["ms"] == 1.23


def test_a_reused_result_logs_its_own_queue_id(monkeypatch):
    monkeypatch.setattr(_log, "_format", "text")
    log = CheckLog()
    lines = []
    log.flush = lambda: (lines.extend(log.lines), log.lines.clear())  # type: ignore[method-assign]
    res = result()
    log.check(ENV, res, 0.001, "score", False)
    log.check(Envelope(ip=ENV.ip, helo=ENV.helo, queue_id="Q2"), res, 0.002, "score", False)
    first, second = (fields_of(x) for x in lines)
    assert (first["qid"], second["qid"]) == ("Q1", "Q2")
    assert {k: v for k, v in first.items() if k not in ("qid", "ms")} == {
        k: v for k, v in second.items() if k not in ("qid", "ms")
    }


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_the_line_says_what_enforce_does_and_keeps_dns_details(fmt, monkeypatch):
    """enforce= is the decision the reply carries; the resolver's address is in detail=, not in SMTP text."""
    from rspamd_regcheck._enforce import EnforceAction, Enforcement

    verdict = Verdict(
        symbols=(SymbolHit("REGCHECK_DNSFAIL", 1.0, ("heaven.net", "127.0.0.1:1: Connection refused")),),
        seed=SeedVerdict(
            Action.TEMPFAIL, 451, "4.4.3", "lookup failed; try later", detail="127.0.0.1:1: Connection refused"
        ),
        id="heaven.net",
    )
    monkeypatch.setattr(_log, "_format", fmt)
    log = CheckLog()
    lines = []
    log.flush = lambda: (lines.extend(log.lines), log.lines.clear())  # type: ignore[method-assign]
    soft = Enforcement(EnforceAction.SOFT_REJECT, 451, "4.4.3", "lookup failed; try later")
    log.check(ENV, CheckResult(verdict, 1), 0.001, "score", False, soft)
    (line,) = lines
    fields = json.loads(line) if fmt == "json" else fields_of(line)
    assert fields["enforce"] == "soft reject"
    assert fields["detail"] == "127.0.0.1:1: Connection refused"
