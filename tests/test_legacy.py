"""The legacy text protocols (RSPAMC, SPAMC): the pure parts by table, then the real worker and spamc."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import re
import shutil
import socket
import subprocess
import time
import tomllib

import pytest
from test_serve import SECRET, Server, metric

from rspamd_regcheck._legacy import (
    Code,
    LegacyError,
    Proto,
    Request,
    RequestLine,
    error_reply,
    parse_headers,
    request_line,
    rewrite,
    rspamc_reply,
    spamc_reply,
)
from rspamd_regcheck._received import Hop, NoHop, outside_hop, received_client

from conftest import free_port

REG = "id.regcheck.test"

# -- request lines and headers ------------------------------------------------------------------


@pytest.mark.parametrize(
    "line,expected",
    [
        pytest.param(b"CHECK RSPAMC/1.3", RequestLine("CHECK", Proto.RSPAMC, (1, 3)), id="exim-rspamd"),
        pytest.param(b"REPORT SPAMC/1.2\r", RequestLine("REPORT", Proto.SPAMC, (1, 2)), id="exim-spamd"),
        pytest.param(b"SYMBOLS SPAMC/1.5", RequestLine("SYMBOLS", Proto.SPAMC, (1, 5)), id="spamc"),
        pytest.param(b"report_ifspam SPAMC/1.5", RequestLine("REPORT_IFSPAM", Proto.SPAMC, (1, 5)), id="lower"),
        pytest.param(b"TELL SPAMC/1.5", RequestLine("TELL", Proto.SPAMC, (1, 5)), id="unserved-still-legacy"),
        pytest.param(b"POST /checkv2 HTTP/1.1", None, id="http"),
        pytest.param(b"CHECK RSPAMC", None, id="no-version"),
        pytest.param(b"CHECK HTTP/1.1", None, id="http-version"),
        pytest.param(b"CHECK /checkv2 RSPAMC/1.3", None, id="three-words"),
        pytest.param(b"", None, id="empty"),
    ],
)
def test_request_line(line, expected):
    assert request_line(line) == expected


@pytest.mark.parametrize(
    "line,headers,body",
    [
        pytest.param("CHECK RSPAMC/1.3", True, True, id="rspamc"),
        pytest.param("CHECK SPAMC/1.0", False, True, id="spamc-1.0-no-headers"),
        pytest.param("CHECK SPAMC/1.2", True, True, id="spamc-1.2"),
        pytest.param("PING SPAMC/1.2", False, False, id="ping-before-1.5"),
        pytest.param("PING SPAMC/1.5", True, False, id="ping-1.5"),
        pytest.param("SKIP SPAMC/1.5", True, False, id="skip"),
    ],
)
def test_what_follows_the_line(line, headers, body):
    parsed = request_line(line.encode())
    assert parsed is not None
    assert (parsed.has_headers, parsed.has_body) == (headers, body)


def test_headers_and_length():
    lines = b"Content-length: 12\r\nFrom: <a@b.test>\nContent-Length: 12\r\nX-Empty:\r\n"
    headers, length = parse_headers(lines, 10, 100)
    assert length == 12
    assert headers == (("Content-length", "12"), ("From", "<a@b.test>"), ("Content-Length", "12"), ("X-Empty", ""))


@pytest.mark.parametrize(
    "lines,message",
    [
        pytest.param(b"no colon here\r\n", "bad header line", id="no-colon"),
        pytest.param(b": value\r\n", "bad header line", id="no-name"),
        pytest.param(b"Two words: x\r\n", "bad header line", id="space-in-name"),
        pytest.param(b"Content-length: -1\r\n", "not a number", id="negative"),
        pytest.param(b"Content-length: 1e3\r\n", "not a number", id="float"),
        pytest.param(b"Content-length: 10\r\nContent-length: 11\r\n", "two different", id="two-lengths"),
        pytest.param(b"Content-length: 101\r\n", "larger than 100", id="too-large"),
        pytest.param(b"A: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\n", "more than 3", id="too-many"),
    ],
)
def test_bad_headers(lines, message):
    with pytest.raises(LegacyError) as info:
        parse_headers(lines, 3, 100)
    assert info.value.code is Code.EX_PROTOCOL and message in info.value.message


# -- Received headers -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value,expected",
    [
        pytest.param(
            "from mailout17.heaven.net (mailout17.heaven.net [208.20.133.17])\r\n\tby mx.example (Postfix) "
            "with ESMTP id 4AbC; Tue, 1 Dec 2026 10:00:00 +0000",
            ("208.20.133.17", "mailout17.heaven.net"),
            id="postfix",
        ),
        pytest.param(
            "from helo.example (unknown [192.0.2.9]) by mx.example (Postfix) with SMTP id X",
            ("192.0.2.9", "helo.example"),
            id="postfix-no-rdns",
        ),
        pytest.param(
            "from rdns.example ([198.51.100.7] helo=mailout.heaven.net)\n\tby mx with esmtp (Exim 4.96)",
            ("198.51.100.7", "mailout.heaven.net"),
            id="exim-helo",
        ),
        pytest.param(
            "from [198.51.100.7] (helo=mailout.heaven.net) by mx with esmtp (Exim 4.96) id 1",
            ("198.51.100.7", "mailout.heaven.net"),
            id="exim-no-rdns",
        ),
        pytest.param(
            "from rdns.example ([198.51.100.7]) by mx with esmtp (Exim 4.96) id 1",
            ("198.51.100.7", "rdns.example"),
            id="exim-helo-is-rdns",
        ),
        pytest.param(
            "from rdns.example (HELO mailout.heaven.net) ([198.51.100.7]) by mx (qmail) id 1",
            ("198.51.100.7", "mailout.heaven.net"),
            id="helo-in-parentheses",
        ),
        pytest.param(
            "from mx6.example (mx6.example [IPv6:2001:db8::25]) by mx.example (Postfix) id 1",
            ("2001:db8::25", "mx6.example"),
            id="ipv6",
        ),
        pytest.param(
            "from mx.example (mx.example [::ffff:192.0.2.3]) by mx.example id 1",
            ("192.0.2.3", "mx.example"),
            id="v4-mapped",
        ),
        pytest.param("from mx.example (mx.example [999.1.1.1]) by mx id 1", None, id="not-an-address"),
        pytest.param("by mx.example (Postfix, from userid 1000) id 1", None, id="local-submission"),
        pytest.param("from mx.example by relay [192.0.2.1] id 1", None, id="address-after-by"),
    ],
)
def test_received_client(value, expected):
    got = received_client(value)
    assert (None if got is None else (str(got[0]), got[1])) == expected


LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"),)
POSTFIX_OUTSIDE = ("Received", "from mailout17.heaven.net (mailout17.heaven.net [208.20.133.17]) by mx (Postfix)")
AMAVIS_LOOP = ("Received", "from localhost (localhost [127.0.0.1]) by mx (Postfix) with ESMTP id 2")


@pytest.mark.parametrize(
    "headers,trusted,expected",
    [
        pytest.param([POSTFIX_OUTSIDE], LOOPBACK, (1, "208.20.133.17"), id="top"),
        pytest.param([AMAVIS_LOOP, POSTFIX_OUTSIDE], LOOPBACK, (2, "208.20.133.17"), id="past-loopback"),
        pytest.param(
            [("Received", "from relay.internal (relay [10.1.2.3]) by mx id 3"), POSTFIX_OUTSIDE],
            (ipaddress.ip_network("10.0.0.0/8"),),
            (2, "208.20.133.17"),
            id="past-trusted-relay",
        ),
        pytest.param(
            [("Received", "from relay.internal (relay [10.1.2.3]) by mx id 3"), POSTFIX_OUTSIDE],
            LOOPBACK,
            (1, "10.1.2.3"),
            id="untrusted-relay-is-the-hop",
        ),
        pytest.param(
            [POSTFIX_OUTSIDE, ("Received", "from forged.example ([192.0.2.66]) by mailout17.heaven.net")],
            LOOPBACK,
            (1, "208.20.133.17"),
            id="below-never-read",
        ),
        pytest.param([("Subject", "x")], LOOPBACK, "no Received header", id="none"),
        pytest.param([AMAVIS_LOOP], LOOPBACK, "all 1 Received header(s) name trusted", id="all-trusted"),
        pytest.param(
            [("received", "by mx.example (Postfix, from userid 0)"), POSTFIX_OUTSIDE],
            LOOPBACK,
            "names no client address",
            id="unreadable-stops",
        ),
    ],
)
def test_outside_hop(headers, trusted, expected):
    hop = outside_hop(headers, trusted)
    if isinstance(expected, str):
        assert isinstance(hop, NoHop) and expected in hop.reason
    else:
        assert isinstance(hop, Hop) and (hop.index, str(hop.ip)) == expected


# -- replies --------------------------------------------------------------------------------------

REPLY = {  # as enforce mode answers the seed's REJECT
    "score": 6.0,
    "required_score": 15.0,
    "action": "reject",
    "symbols": {"REGCHECK_QR1_FAIL": {"score": 6.0, "options": ["heaven.net", "208.20.133.32"]}},
    "messages": {},
    "milter": {"add_headers": {"X-Regcheck": "208.20.133.32 heaven.net QR1 fail"}, "remove_headers": {"X-Regcheck": 0}},
    "regcheck": {"skipped": None},
}
HAM = {**REPLY, "score": -4.6, "action": "no action", "symbols": {"REGCHECK_QR1_ALLOW": {"score": -2.0}}}


def test_rspamc_reply_as_rspamd_writes_it():
    assert rspamc_reply(REPLY, 15.0, "<m@x>", keep_alive=False) == (
        b"RSPAMD/1.3 0 EX_OK\r\n"
        b"Metric: default; True; 6.00 / 15.00 / 15.00\r\n"
        b"Action: reject\r\n"
        b"Symbol: REGCHECK_QR1_FAIL(6.00); heaven.net, 208.20.133.32\r\n"
        b"Message-ID: <m@x>\r\n"
        b"X-Milter-Add: X-Regcheck: 208.20.133.32 heaven.net QR1 fail\r\n"
        b"X-Milter-Del: X-Regcheck\r\n"
    )
    assert rspamc_reply(HAM, 15.0, None, keep_alive=True).endswith(b"X-Milter-Del: X-Regcheck\r\n\r\n")


def test_reply_lines_cannot_be_forged():
    """A record's text that reaches an option or a header value stays on its own line."""
    hostile = {
        **REPLY,
        "symbols": {"REGCHECK_QR1_FAIL": {"score": 6.0, "options": ["x\r\nX-Milter-Add: Evil: 1"]}},
        "milter": {"add_headers": {"X-Regcheck": "a\nX-Milter-Del: Received"}, "remove_headers": {}},
    }
    for data in (rspamc_reply(hostile, 15.0, "<a\r\nSymbol: X(1)>", False), spamc_reply(SPAMC_15_REPORT, hostile, "")):
        lines = data.decode().splitlines()
        assert not any(line.startswith(("X-Milter-Add: Evil", "X-Milter-Del: Received", "Symbol: X")) for line in lines)


SPAMC_15_REPORT = RequestLine("REPORT", Proto.SPAMC, (1, 5))


@pytest.mark.parametrize(
    "line,reply,expected",
    [
        pytest.param(
            RequestLine("CHECK", Proto.SPAMC, (1, 5)),
            REPLY,
            b"SPAMD/1.1 0 EX_OK\r\nSpam: True ; 6.00 / 15.00\r\nEnvelope: E\r\n\r\n",
            id="check-1.5",
        ),
        pytest.param(
            RequestLine("SYMBOLS", Proto.SPAMC, (1, 5)),
            REPLY,
            b"SPAMD/1.1 0 EX_OK\r\nContent-length: 17\r\nSpam: True ; 6.00 / 15.00\r\nEnvelope: E\r\n\r\n"
            b"REGCHECK_QR1_FAIL",
            id="symbols-1.5",
        ),
        pytest.param(
            RequestLine("SYMBOLS", Proto.SPAMC, (1, 2)),
            HAM,
            b"SPAMD/1.1 0 EX_OK\r\nSpam: False ; -4.60 / 15.00\r\n\r\nREGCHECK_QR1_ALLOW\r\n",
            id="symbols-1.2-one-header",
        ),
        pytest.param(
            RequestLine("REPORT_IFSPAM", Proto.SPAMC, (1, 5)),
            HAM,
            b"SPAMD/1.1 0 EX_OK\r\nContent-length: 0\r\nSpam: No ; -4.60 / 15.00\r\nEnvelope: E\r\n\r\n",
            id="report-ifspam-ham",
        ),
    ],
)
def test_spamc_framing(line, reply, expected):
    assert spamc_reply(line, reply, "E") == expected


def test_spamc_report_for_exim_default_variant():
    """Exim sends REPORT SPAMC/1.2 and parses 'SPAMD/v 0 EX_OK / Spam: x ; score / threshold / blank / report'."""
    data = spamc_reply(RequestLine("REPORT", Proto.SPAMC, (1, 2)), REPLY, "request headers").decode()
    head, _, report = data.partition("\r\n\r\n")
    assert head == "SPAMD/1.1 0 EX_OK\r\nSpam: True ; 6.00 / 15.00"
    assert re.search(r"^ 6\.0 REGCHECK_QR1_FAIL +\S", report, re.MULTILINE)
    assert "[heaven.net, 208.20.133.32]" in report
    assert "X-Milter-Add: X-Regcheck: 208.20.133.32 heaven.net QR1 fail\n" in report
    assert "Envelope: request headers\n" in report


@pytest.mark.parametrize(
    "message,headers_only,expected",
    [
        pytest.param(
            b"X-Regcheck: forged\r\n continued\r\nSubject: s\r\n\r\nbody\r\n",
            False,
            b"X-Regcheck: 208.20.133.32 heaven.net QR1 fail\r\nSubject: s\r\n\r\nbody\r\n",
            id="crlf-forged-folded",
        ),
        pytest.param(
            b"Subject: s\nx-regcheck: forged\n\nbody\n",
            False,
            b"X-Regcheck: 208.20.133.32 heaven.net QR1 fail\nSubject: s\n\nbody\n",
            id="lf",
        ),
        pytest.param(
            b"Subject: s\r\n\r\nbody\r\n",
            True,
            b"X-Regcheck: 208.20.133.32 heaven.net QR1 fail\r\nSubject: s\r\n\r\n",
            id="headers-only",
        ),
        pytest.param(
            b"Subject: no body", False, b"X-Regcheck: 208.20.133.32 heaven.net QR1 fail\r\nSubject: no body", id="bare"
        ),
    ],
)
def test_rewrite(message, headers_only, expected):
    assert rewrite(message, REPLY, headers_only) == expected


@pytest.mark.parametrize(
    "proto,code,expected",
    [
        pytest.param(Proto.RSPAMC, Code.EX_USAGE, b"RSPAMD/1.3 64 EX_USAGE\r\nError: m\r\n", id="rspamc"),
        pytest.param(Proto.SPAMC, Code.EX_PROTOCOL, b"SPAMD/1.0 76 EX_PROTOCOL m\r\n", id="spamc"),
    ],
)
def test_error_reply(proto, code, expected):
    assert error_reply(proto, code, "m") == expected


def test_keep_alive_is_rspamc_only():
    asked = (("Connection", "Keep-Alive"),)
    assert Request(RequestLine("CHECK", Proto.RSPAMC, (1, 3)), asked).keep_alive
    assert not Request(RequestLine("CHECK", Proto.SPAMC, (1, 5)), asked).keep_alive
    assert not Request(RequestLine("CHECK", Proto.RSPAMC, (1, 3))).keep_alive


# -- the real worker -------------------------------------------------------------------------------


def serving(knot, base, server: str = "", policy: str = "") -> Server:
    """`rspamd-regcheck serve` answering from knot, with the secret (legacy clients on loopback need none)."""
    return Server(
        base,
        f'[server]\nsecret = "{SECRET}"\n{server}[registry]\nzones = ["{REG}"]\n'
        f'[dns]\nnameservers = ["{knot.host}"]\nport = {knot.port}\n'
        f'[policy]\nlocal_networks = []\n{policy}[spf]\nreceiver = "mx.receiver.test"\n[log]\nlevel = "info"\n',
        free_port(),
    )


@pytest.fixture(scope="module")
def worker(knot, tmp_path_factory):
    server = serving(
        knot, tmp_path_factory.mktemp("legacy"), "request_timeout = 1.0\nmax_headers = 20\nbody_limit = 65536\n"
    )
    yield server
    server.stop()


def exchange(worker, data: bytes, half_close: bool = False, timeout: float = 10.0) -> bytes:
    """Send *data*, then read until the worker closes (as Exim does)."""
    with socket.create_connection(("127.0.0.1", worker.port), timeout=timeout) as s:
        s.sendall(data)
        if half_close:
            s.shutdown(socket.SHUT_WR)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out


def exim_rspamd_request(ip: str, helo: str, sender: str = "", rcpts=("case@example.com",), body=b"") -> bytes:
    """What Exim 4.96's spam.c sends with variant=rspamd."""
    head = (
        f"CHECK RSPAMC/1.3\r\nContent-length: {len(body)}\r\nQueue-Id: 1xYWFn-00087W-0Z\r\n"
        f"From: <{sender}>\r\nRecipient-Number: {len(rcpts)}\r\n"
        + "".join(f"Rcpt: <{r}>\r\n" for r in rcpts)
        + f"Helo: {helo}\r\nIP: {ip}\r\n\r\n"
    )
    return head.encode() + body


def parse_rspamc(data: bytes) -> dict:
    text = data.decode()
    assert text.startswith("RSPAMD/1.3 0 EX_OK\r\n"), text
    m = re.search(r"^Metric: default; (True|False); (\S+) / (\S+) / (\S+)\r$", text, re.MULTILINE)
    assert m, text
    symbols = {}
    for name, score, options in re.findall(r"^Symbol: (\w+)\((\S+)\)(?:; (.*))?\r$", text, re.MULTILINE):
        symbols[name] = (float(score), options.split(", ") if options else [])
    return {
        "spam": m.group(1) == "True",
        "score": float(m.group(2)),
        "required": float(m.group(3)),
        "action": re.search(r"^Action: (.*)\r$", text, re.MULTILINE).group(1),
        "symbols": symbols,
        "add": dict(re.findall(r"^X-Milter-Add: ([^:]+): (.*)\r$", text, re.MULTILINE)),
        "del": re.findall(r"^X-Milter-Del: (.*)\r$", text, re.MULTILINE),
    }


def http_reply(worker, headers: dict[str, str], body: bytes = b"") -> dict:
    lines = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    status, _, data = worker.request(
        f"POST /checkv2 HTTP/1.1\r\n{lines}Password: {SECRET}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body
    )
    assert status == 200
    return json.loads(data)


SEED = [
    pytest.param("208.20.133.17", "mailout17.heaven.net", "", "no action", id="accept-heaven"),
    pytest.param("208.20.133.32", "mailout32.heaven.net", "", "add header", id="reject-heaven"),
    pytest.param("69.55.226.139", "mx1.wayforward.net", "tway@optsw.com", "no action", id="accept-wayforward-spf"),
    pytest.param("208.20.133.17", "mx1.example.co.uk", "", "add header", id="reject-stop-all"),
    pytest.param("208.20.133.17", "JUPITER", "", "no action", id="reject-jupiter"),
]


@pytest.mark.parametrize("ip,helo,sender,action", SEED)
def test_exim_request_is_answered_as_http(worker, ip, helo, sender, action):
    legacy = parse_rspamc(exchange(worker, exim_rspamd_request(ip, helo, sender)))
    http = http_reply(worker, {"IP": ip, "Helo": helo, "From": sender})
    assert legacy["action"] == http["action"] == action
    assert (legacy["score"], legacy["required"]) == (round(http["score"], 2), http["required_score"])
    assert legacy["spam"] == (action == "reject")  # as rspamd 3.4: "add header" is not spam here
    assert legacy["symbols"] == {n: (round(s["score"], 2), s.get("options", [])) for n, s in http["symbols"].items()}
    assert legacy["add"] == http["milter"]["add_headers"]
    assert legacy["del"] == list(http["milter"]["remove_headers"])


@pytest.mark.parametrize(
    "extra,expect",
    [
        pytest.param(b"from: sender@heaven.net\r\nrcpt: a@example.com\r\n", "symbols", id="no-brackets-lower-case"),
        pytest.param(b"Pass: all\r\nHostname: mailout17.heaven.net\r\n", "symbols", id="pass-all-hostname"),
        pytest.param(b"User: alice\r\n", "skipped", id="authenticated-user-skips"),
    ],
)
def test_rspamc_headers(worker, extra, expect):
    head = b"SYMBOLS RSPAMC/1.3\r\nIP: 208.20.133.32\r\nHelo: mailout32.heaven.net\r\n"
    data = exchange(worker, head + extra + b"\r\n")
    reply = parse_rspamc(data)
    assert ("REGCHECK_QR1_FAIL" in reply["symbols"]) == (expect == "symbols")
    assert (reply["symbols"] == {}) == (expect == "skipped")


MESSAGE = (
    b"Received: from localhost (localhost [127.0.0.1]) by mx.receiver.test (Postfix) with ESMTP id 2\r\n"
    b"Received: from mailout32.heaven.net (mailout32.heaven.net [208.20.133.32])\r\n"
    b"\tby mx.receiver.test (Postfix) with ESMTP id 1; Tue, 1 Dec 2026 10:00:00 +0000\r\n"
    b"Received: from forged.example ([192.0.2.66]) by mailout32.heaven.net\r\n"
    b"X-Regcheck: forged by the sender\r\n"
    b"Subject: test\r\nMessage-ID: <m1@heaven.net>\r\n\r\nHello.\r\n"
)


def spamc_request(command: str, message: bytes, extra: bytes = b"", version: str = "1.5") -> bytes:
    return (
        f"{command} SPAMC/{version}\r\nUser: nobody\r\nContent-length: {len(message)}\r\n".encode()
        + extra
        + (b"\r\n" + message)
    )


def test_spamc_envelope_from_received(worker):
    data = exchange(worker, spamc_request("SYMBOLS", MESSAGE), half_close=True).decode()
    head, _, body = data.partition("\r\n\r\n")
    assert head.splitlines()[0] == "SPAMD/1.1 0 EX_OK"
    assert "Spam: False ; 6.00 / 15.00" in head
    assert "Envelope: Received header 2 of 3: ip=208.20.133.32 helo=mailout32.heaven.net" in head
    assert body == "REGCHECK_QR1_FAIL"  # the User header (a local user) did not skip the check


@pytest.mark.parametrize(
    "message,envelope",
    [
        pytest.param(b"Subject: nothing\r\n\r\nx\r\n", "none: the message has no Received header", id="no-received"),
        pytest.param(
            b"Received: from localhost (localhost [127.0.0.1]) by mx\r\n\r\nx\r\n",
            "none: all 1 Received header(s) name trusted relays",
            id="only-trusted",
        ),
    ],
)
def test_spamc_without_hop_is_skipped_not_guessed(worker, message, envelope):
    data = exchange(worker, spamc_request("REPORT", message), half_close=True).decode()
    assert f"Envelope: {envelope}" in data
    assert "Skipped: no client IP" in data and "Spam: False ; 0.00 / 15.00" in data


def test_spamc_envelope_headers_win(worker):
    extra = b"IP: 208.20.133.17\r\nHelo: mailout17.heaven.net\r\n"
    data = exchange(worker, spamc_request("SYMBOLS", MESSAGE, extra), half_close=True).decode()
    assert "Envelope: request headers" in data and data.endswith("REGCHECK_QR1_ALLOW,REGCHECK_RATING_HIGH")


def test_spamc_without_content_length_reads_to_the_end(worker):
    data = exchange(worker, b"CHECK SPAMC/1.2\r\n\r\n" + MESSAGE, half_close=True)
    assert data == b"SPAMD/1.1 0 EX_OK\r\nSpam: False ; 6.00 / 15.00\r\n\r\n"


def test_process_rewrites_the_headers(worker):
    data = exchange(worker, spamc_request("PROCESS", MESSAGE), half_close=True)
    head, _, message = data.partition(b"\r\n\r\n")
    assert int(re.search(rb"Content-length: (\d+)", head).group(1)) == len(message)
    assert message.startswith(b"X-Regcheck: 208.20.133.32 heaven.net QR1 fail")
    assert b"forged by the sender" not in message and message.endswith(b"Hello.\r\n")


def test_keep_alive_answers_in_order_then_closes(worker):
    one = b"CHECK RSPAMC/1.3\r\nConnection: keep-alive\r\nIP: 208.20.133.17\r\nHelo: mailout17.heaven.net\r\n\r\n"
    two = b"CHECK RSPAMC/1.3\r\nIP: 208.20.133.32\r\nHelo: mailout32.heaven.net\r\n\r\n"
    data = exchange(worker, one + two)
    first, sep, second = data.partition(b"\r\n\r\n")
    assert sep and parse_rspamc(first + b"\r\n")["action"] == "no action"
    assert parse_rspamc(second)["action"] == "add header"


@pytest.mark.parametrize(
    "request_bytes,half_close,expected",
    [
        pytest.param(b"PING RSPAMC/1.3\r\n\r\n", False, b"RSPAMD/1.3 0 PONG\r\n", id="ping-rspamc"),
        pytest.param(b"PING SPAMC/1.2\r\n", False, b"SPAMD/1.5 0 PONG\r\n", id="ping-spamc-1.2"),
        pytest.param(b"PING SPAMC/1.5\r\n\r\n", False, b"SPAMD/1.5 0 PONG\r\n", id="ping-spamc-1.5"),
        pytest.param(b"SKIP SPAMC/1.5\r\n\r\n", False, b"", id="skip-closes-without-answer"),
        pytest.param(b"TELL SPAMC/1.5\r\n\r\n", True, b"SPAMD/1.0 64 EX_USAGE ", id="tell"),
        pytest.param(b"CHECK SPAMC/1.5\r\nCompress: zlib\r\n\r\nx", True, b"SPAMD/1.0 64 EX_USAGE ", id="compress"),
        pytest.param(b"PROCESS RSPAMC/1.3\r\n\r\n", False, b"RSPAMD/1.3 64 EX_USAGE\r\n", id="process-rspamc"),
        pytest.param(b"CHECK SPAMC/1.5\r\nbad line\r\n\r\n", False, b"SPAMD/1.0 76 EX_PROTOCOL ", id="bad-line"),
        pytest.param(
            b"CHECK SPAMC/1.5\r\nContent-length: 100\r\n\r\nshort", True, b"SPAMD/1.0 76 EX_PROTOCOL ", id="short"
        ),
        pytest.param(
            b"CHECK RSPAMC/1.3\r\nContent-length: 65537\r\n\r\n", False, b"RSPAMD/1.3 76 EX_PROTOCOL\r\n", id="large"
        ),
        pytest.param(b"CHECK RSPAMC/1.3\r\nIP: 1.2.3\r\n\r\n", False, b"RSPAMD/1.3 76 EX_PROTOCOL\r\n", id="bad-ip"),
        pytest.param(
            b"CHECK RSPAMC/1.3\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(21)) + b"\r\n",
            False,
            b"RSPAMD/1.3 76 EX_PROTOCOL\r\n",
            id="too-many-headers",
        ),
        pytest.param(
            b"CHECK RSPAMC/1.3\r\nConnection: keep-alive\r\n\r\nGET /ping HTTP/1.1\r\n\r\n",
            False,
            b"RSPAMD/1.3 76 EX_PROTOCOL\r\n",
            id="http-after-legacy",
        ),
        pytest.param(
            b"CHECK RSPAMC/1.3\r\nPassword: wrong\r\n\r\n", False, b"RSPAMD/1.3 77 EX_NOPERM\r\n", id="wrong-password"
        ),
        pytest.param(b"CHECK SPAMC/1.5\r\nCont", True, b"SPAMD/1.0 76 EX_PROTOCOL ", id="ends-in-head"),
    ],
)
def test_every_request_gets_its_protocols_answer(worker, request_bytes, half_close, expected):
    data = exchange(worker, request_bytes, half_close)
    if request_bytes.startswith(b"CHECK RSPAMC/1.3\r\nConnection"):
        data = data.partition(b"\r\n\r\n")[2]  # the first request's answer, then the error
    assert data.startswith(expected) if expected else data == b""


def test_right_password_is_accepted(worker):
    data = exchange(worker, f"CHECK RSPAMC/1.3\r\nPassword: {SECRET}\r\nIP: 192.0.2.1\r\n\r\n".encode())
    assert parse_rspamc(data)["action"] == "no action"


def test_slow_request_gets_a_timeout_answer(worker):
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", worker.port), timeout=10) as s:
        s.sendall(b"CHECK SPAMC/1.5\r\nContent-length: 10\r\n\r\nabc")
        data = s.recv(4096)
    assert data.startswith(b"SPAMD/1.0 79 EX_TIMEOUT ")
    assert time.monotonic() - started < 3 * 1.0 + 2  # request_timeout is 1 s


def test_http_still_served_and_legacy_counted_and_logged(worker):
    text = worker.metrics()
    before = metric(text, "regcheck_legacy_requests_total", '{code="0",command="CHECK",protocol="RSPAMC"}')
    checks_before = metric(text, "regcheck_checks_total", '{protocol="rspamc",verdict="ACCEPT"}')
    exchange(worker, exim_rspamd_request("208.20.133.17", "mailout17.heaven.net"))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        text = worker.metrics()
        after = metric(text, "regcheck_legacy_requests_total", '{code="0",command="CHECK",protocol="RSPAMC"}')
        if after > before:
            break
        time.sleep(0.2)
    assert after == before + 1
    # the check counts under its front end's protocol label (the request counter's flush is the same)
    assert metric(text, "regcheck_checks_total", '{protocol="rspamc",verdict="ACCEPT"}') == checks_before + 1
    exchange(worker, b"TELL SPAMC/1.5\r\n\r\n", half_close=True)
    text = worker.metrics()
    assert metric(text, "regcheck_legacy_requests_total", '{code="64",command="TELL",protocol="SPAMC"}') >= 1
    line = re.compile(r"event=check qid=1xYWFn-00087W-0Z ip=208\.20\.133\.17 helo=mailout17\.heaven\.net")
    deadline = time.monotonic() + 10  # check lines are written in batches, a quarter second apart
    while not line.search(worker.log_path.read_text()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert line.search(worker.log_path.read_text())


# -- spamc, Debian's SpamAssassin client -----------------------------------------------------------

SPAMC = shutil.which("spamc")


def spamc(worker, *flags: str, message: bytes = MESSAGE) -> subprocess.CompletedProcess[bytes]:
    if SPAMC is None:
        pytest.skip("spamc not installed (Debian package spamc; ./dev setup installs it)")
    return subprocess.run(
        [SPAMC, "-d", "127.0.0.1", "-p", str(worker.port), "-t", "10", *flags],
        input=message,
        capture_output=True,
        timeout=30,
        check=False,  # its exit status is part of what the tests read
    )


HEAVEN_FAIL = {"IP": "208.20.133.32", "Helo": "mailout32.heaven.net"}


def test_spamc_check(worker):
    http = http_reply(worker, HEAVEN_FAIL)
    done = spamc(worker, "-c")
    assert done.stdout == f"{http['score']:.1f}/{http['required_score']:.1f}\n".encode()
    assert done.returncode == 0  # not spam: 6.0 is below the threshold given, the reject score


def test_spamc_symbols(worker):
    http = http_reply(worker, HEAVEN_FAIL)
    done = spamc(worker, "-y")
    assert done.returncode == 0 and done.stdout.decode().split(",") == list(http["symbols"])


def test_spamc_report(worker):
    http = http_reply(worker, HEAVEN_FAIL)
    done = spamc(worker, "-R")
    text = done.stdout.decode()
    assert done.returncode == 0 and text.startswith(f"{http['score']:.1f}/{http['required_score']:.1f}\n")
    for name, sym in http["symbols"].items():
        assert re.search(rf"^ *{sym['score']:.1f} {name} ", text, re.MULTILINE)
    for name, value in http["milter"]["add_headers"].items():
        assert f"X-Milter-Add: {name}: {value}\n" in text
    assert "Envelope: Received header 2 of 3: ip=208.20.133.32" in text


def test_spamc_ping(worker):
    done = spamc(worker, "-K")
    assert (done.returncode, done.stdout) == (0, b"SPAMD/1.5 0\n")


def test_spamc_process_adds_the_authent_header(worker):
    http = http_reply(worker, HEAVEN_FAIL)
    done = spamc(worker)
    assert done.returncode == 0
    head = done.stdout.split(b"\r\n\r\n", 1)[0].decode()
    assert head.startswith(f"X-Regcheck: {http['milter']['add_headers']['X-Regcheck']}\r\n")
    assert "forged by the sender" not in head


# -- beyond loopback: the shell over a fake transport (STYLE item 8) ---------------------------------


class FakeTransport:
    """What asyncio's socket transport offers the protocols, listening on *sockname*."""

    def __init__(self, sockname):
        self.sockname, self.written, self.closed, self.protocol = sockname, b"", False, None

    def get_extra_info(self, name, default=None):
        return self.sockname if name == "sockname" else default

    def write(self, data):
        self.written += data

    def is_closing(self):
        return self.closed

    def close(self):
        self.closed = True

    def set_protocol(self, protocol):
        self.protocol = protocol

    def can_write_eof(self):
        return False

    def pause_reading(self):
        pass

    def resume_reading(self):
        pass


def over_fake_transport(data: bytes, sockname=("127.0.0.1", 11340), secret: str = "") -> FakeTransport:
    """Feed *data* to a fresh connection of an in-process worker; what it wrote once it closed."""
    from dataclasses import replace

    from rspamd_regcheck import Checker, Config
    from rspamd_regcheck._http import App, HttpProtocol

    async def go():
        app = App(Checker(replace(Config(registry_zones=("id.regcheck.test",)), secret=secret)))
        http = HttpProtocol(app)
        transport = FakeTransport(sockname)
        http.connection_made(transport)
        http.data_received(data)
        for _ in range(50):
            if transport.closed:
                break
            await asyncio.sleep(0.01)
        app.checker.close()
        return transport

    return asyncio.run(go())


@pytest.mark.parametrize(
    "sockname,secret,password,answered",
    [
        pytest.param(("192.0.2.10", 11340), "", None, b"RSPAMD/1.3 77 EX_NOPERM", id="no-secret-beyond-loopback"),
        pytest.param(("192.0.2.10", 11340), SECRET, None, b"RSPAMD/1.3 77 EX_NOPERM", id="secret-not-sent"),
        pytest.param(("192.0.2.10", 11340), SECRET, "wrong", b"RSPAMD/1.3 77 EX_NOPERM", id="wrong"),
        pytest.param(("192.0.2.10", 11340), SECRET, SECRET, b"RSPAMD/1.3 0 EX_OK", id="right"),
        pytest.param(("::ffff:127.0.0.1", 11340, 0, 0), "", None, b"RSPAMD/1.3 0 EX_OK", id="mapped-loopback"),
    ],
)
def test_beyond_loopback_the_secret_is_needed(sockname, secret, password, answered):
    extra = f"Password: {password}\r\n" if password is not None else ""
    # IP 192.168.1.1 is local by default: the check is skipped without a DNS question
    transport = over_fake_transport(f"CHECK RSPAMC/1.3\r\nIP: 192.168.1.1\r\n{extra}\r\n".encode(), sockname, secret)
    assert transport.written.startswith(answered) and transport.closed
    assert transport.protocol is not None  # the connection was handed over to the legacy protocol


# -- attacks on the real worker ---------------------------------------------------------------------


def test_endless_first_line_gets_an_answer(worker):
    """No line end within 8 KiB: it cannot be a legacy request, and HTTP's parser answers it."""
    data = exchange(worker, b"CHECK" + b"A" * 100_000)
    assert data.startswith(b"HTTP/1.1 400 ")


def test_endless_header_block_is_refused(worker):
    data = exchange(worker, b"CHECK RSPAMC/1.3\r\nX-A: " + b"a" * 200_000)
    assert data == b"RSPAMD/1.3 76 EX_PROTOCOL\r\nError: request header lines too large\r\n"


def test_pipelined_flood_is_answered_in_order(worker):
    """Many kept-alive requests at once: reading pauses while they wait, every one is answered."""
    one = b"CHECK RSPAMC/1.3\r\nConnection: keep-alive\r\nIP: 208.20.133.17\r\nHelo: mailout17.heaven.net\r\n\r\n"
    count = 3000  # about 300 KB: more than is read ahead of the answers
    last = b"PING RSPAMC/1.3\r\n\r\n"
    data = exchange(worker, one * count + last, timeout=60)
    replies = data.split(b"\r\n\r\n")
    assert replies[-1] == b"RSPAMD/1.3 0 PONG\r\n", replies[-3:]
    assert len(replies) == count + 1
    assert all(r.startswith(b"RSPAMD/1.3 0 EX_OK\r\nMetric: default; False; -4.60") for r in replies[:-1])


@pytest.mark.parametrize(
    "headers,expected",
    [
        pytest.param(b"IP: 208.20.133.17\x00\r\n", b"RSPAMD/1.3 76 EX_PROTOCOL\r\n", id="nul-in-ip"),
        pytest.param(b"Content-length: 99999999999999\r\n", b"RSPAMD/1.3 76 EX_PROTOCOL\r\n", id="huge-length"),
        pytest.param(
            b"IP: 208.20.133.17\r\nHelo: mail\xff\x00out17.heaven.net\r\n",
            b"RSPAMD/1.3 0 EX_OK\r\nMetric: default; False; 1.50",
            id="binary-helo-is-a-bad-helo",
        ),
    ],
)
def test_hostile_headers(worker, headers, expected):
    assert exchange(worker, b"CHECK RSPAMC/1.3\r\n" + headers + b"\r\n").startswith(expected)


@pytest.fixture(scope="module")
def enforcing(knot, tmp_path_factory):
    """A worker in enforce mode: the seed's REJECT is the reject action."""
    server = serving(knot, tmp_path_factory.mktemp("legacy-enforce"), policy='mode = "enforce"\n')
    yield server
    server.stop()


def test_reject_is_spam(enforcing):
    done = spamc(enforcing, "-c")
    assert (done.returncode, done.stdout) == (1, b"6.0/15.0\n")
    reply = exchange(enforcing, exim_rspamd_request("208.20.133.32", "mailout32.heaven.net")).decode()
    assert reply.startswith("RSPAMD/1.3 0 EX_OK\r\nMetric: default; True; 6.00 / 15.00 / 15.00\r\nAction: reject\r\n")
    assert re.search(r"^Message: \S.*\r$", reply, re.MULTILINE)  # the seed's SMTP reply text


def test_never_reject_recipient_is_not_refused_and_logged_as_decided(enforcing):
    """RSPAMC passes the recipients: mail to postmaster@ is marked, not rejected, as on HTTP, and the
    log line's enforce= is the decision the reply carries (it once said "no action" for every
    legacy check, and rejected mail to postmaster@)."""
    request = exim_rspamd_request("208.20.133.32", "mailout32.heaven.net", rcpts=("postmaster@example.com",))
    legacy = parse_rspamc(exchange(enforcing, request))
    http = http_reply(
        enforcing, {"IP": "208.20.133.32", "Helo": "mailout32.heaven.net", "Rcpt": "<postmaster@example.com>"}
    )
    assert legacy["action"] == http["action"] == "add header"
    exchange(enforcing, exim_rspamd_request("208.20.133.32", "mailout32.heaven.net"))
    wanted = [
        re.compile(r"qid=1xYWFn-00087W-0Z ip=208\.20\.133\.32 .* enforce=reject "),
        re.compile(r"qid=1xYWFn-00087W-0Z ip=208\.20\.133\.32 .* enforce=\"add header\" "),
    ]
    deadline = time.monotonic() + 10  # check lines are written in batches, a quarter second apart
    while not all(w.search(enforcing.log_path.read_text()) for w in wanted) and time.monotonic() < deadline:
        time.sleep(0.1)
    text = enforcing.log_path.read_text()
    assert [bool(w.search(text)) for w in wanted] == [True, True], text[-2000:]


def test_a_bug_is_answered_ex_software(monkeypatch):
    """A check that raises (a bug) is answered in the protocol and logged, and the worker goes on."""
    from rspamd_regcheck import Checker

    async def broken(self, env):
        raise RuntimeError("a bug")

    monkeypatch.setattr(Checker, "check", broken)
    transport = over_fake_transport(b"CHECK SPAMC/1.5\r\nContent-length: 0\r\n\r\n")
    assert transport.written == b"SPAMD/1.0 70 EX_SOFTWARE internal error\r\n" and transport.closed


@pytest.mark.parametrize(
    "value,expected",
    [
        pytest.param(None, ("127.0.0.0/8", "::1/128"), id="default-loopback"),
        pytest.param([], (), id="none"),
        pytest.param(["10.0.0.0/8", "2001:db8::/32"], ("10.0.0.0/8", "2001:db8::/32"), id="listed"),
    ],
)
def test_trusted_relays_config(value, expected):
    from rspamd_regcheck.config import config_from_mapping

    config = config_from_mapping({} if value is None else {"policy": {"trusted_relays": value}})
    assert tuple(str(n) for n in config.trusted_relays) == expected
    assert config_from_mapping(tomllib.loads(config.to_toml())).trusted_relays == config.trusted_relays


def test_trusted_relays_bad_value():
    from rspamd_regcheck.config import config_from_mapping
    from rspamd_regcheck.errors import ConfigError

    with pytest.raises(ConfigError, match=r"policy\.trusted_relays\[0\]"):
        config_from_mapping({"policy": {"trusted_relays": ["not a network"]}})


@pytest.mark.parametrize(
    "first,rest,expected",
    [
        pytest.param(b"CHE", b"CK RSPAMC/1.3\r\nIP: 192.0.2.1\r\n\r\n", b"RSPAMD/1.3 0 EX_OK\r\n", id="legacy"),
        pytest.param(b"PING SPAMC/1", b".5\r\n\r\n", b"SPAMD/1.5 0 PONG\r\n", id="legacy-version-split"),
        pytest.param(b"GE", b"T /ping HTTP/1.0\r\n\r\n", b"HTTP/1.0 200 OK\r\n", id="http"),
    ],
)
def test_first_line_split_across_packets(worker, first, rest, expected):
    with socket.create_connection(("127.0.0.1", worker.port), timeout=10) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.sendall(first)
        time.sleep(0.2)
        s.sendall(rest)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    assert out.startswith(expected)


def test_unfinished_first_line_is_timed_as_a_request(worker):
    """A first line that never ends is dropped at the request timeout (1 s here), not the idle one."""
    with socket.create_connection(("127.0.0.1", worker.port), timeout=10) as s:
        s.sendall(b"CHE")
        started = time.monotonic()
        assert s.recv(100) == b""
    assert time.monotonic() - started < 3 * 1.0 + 2
