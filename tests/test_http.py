"""The worker over real sockets: rspamd's protocol, keep-alive, bad requests, rspamc."""

from __future__ import annotations

import asyncio
import http.client
import ipaddress
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import replace

import msgpack
import pytest

from rspamd_regcheck import Checker, Config
from rspamd_regcheck._http import App, Limits, start_server

from conftest import free_port
from helpers import read_reply

REG = "id.regcheck.test"
BODY_LIMIT = 65536


@pytest.fixture(scope="module")
def worker(knot, tmp_path_factory):
    """`rspamd-regcheck serve` as a process, answering from knot."""
    base = tmp_path_factory.mktemp("worker")
    conf = base / "regcheck.toml"
    conf.write_text(
        f'[registry]\nzones = ["{REG}"]\n'
        f'[dns]\nnameservers = ["{knot.host}"]\nport = {knot.port}\n'
        f"[server]\nbody_limit = {BODY_LIMIT}\nrequest_timeout = 1.0\nmax_headers = 50\n"
        '[policy]\nlocal_networks = []\n[spf]\nreceiver = "mx.receiver.test"\n'
    )
    port = free_port()
    log = open(base / "worker.log", "wb")  # noqa: SIM115 - closed in the teardown below
    proc = subprocess.Popen(
        [sys.executable, "-m", "rspamd_regcheck", "--config", str(conf), "serve", "--listen", f"127.0.0.1:{port}"],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError((base / "worker.log").read_text()) from None
            time.sleep(0.05)
    yield ("127.0.0.1", port)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=10)
    log.close()


def post(worker, headers, body=b"", path="/checkv2", conn=None, version=11):
    c = conn or http.client.HTTPConnection(*worker, timeout=10)
    c._http_vsn, c._http_vsn_str = (11, "HTTP/1.1") if version == 11 else (10, "HTTP/1.0")
    c.request("POST", path, body=body, headers=headers)
    r = c.getresponse()
    data = r.read()
    return r, data, c


def test_header_injection_through_an_spf_record_never_reaches_the_milter(worker):
    """The attack over the wire: the sender's SPF record carries CR LF and a header of its own;
    the milter's add_headers in the worker's reply (which rspamd hands to the MTA) keep one line."""
    headers = {"IP": "192.0.2.10", "Helo": "mx.spf.example", "From": "<a@inject.spf.example>"}
    r, data, c = post(worker, headers)
    c.close()
    assert r.status == 200, data
    added = json.loads(data)["milter"]["add_headers"]
    received = added["Received-SPF"]
    assert "X-Injected: yes" in received, received
    assert not any(c in received for c in "\r\n\t"), repr(received)


SEED = [
    pytest.param({"IP": "208.20.133.17", "Helo": "mailout17.heaven.net"}, "ACCEPT", id="heaven-pass"),
    pytest.param({"IP": "208.20.133.32", "Helo": "mailout32.heaven.net"}, "REJECT", id="heaven-fail"),
    pytest.param({"IP": "192.168.0.1", "Helo": "mx1.spammer.tld"}, "FILTER", id="spammer"),
    pytest.param(
        {"IP": "69.55.226.139", "Helo": "mx1.wayforward.net", "From": "<tway@optsw.com>"}, "ACCEPT", id="wayforward-spf"
    ),
    pytest.param({"IP": "192.0.4.1", "Helo": "mx1.abilene.texas.rr.tld", "From": "<>"}, "FILTER", id="rr-softfail"),
    pytest.param({"IP": "208.20.133.17", "Helo": "mx1.example.co.uk"}, "REJECT", id="stop-all"),
    pytest.param({"IP": "208.20.133.17", "Helo": "JUPITER"}, "REJECT", id="jupiter"),
]


@pytest.mark.parametrize("headers,action", SEED)
def test_json_and_msgpack_carry_the_same_reply(worker, headers, action):
    r1, body1, c1 = post(worker, headers)
    r2, body2, c2 = post(worker, {**headers, "Accept": "application/msgpack"})
    c1.close(), c2.close()
    assert (r1.status, r1.getheader("Content-Type")) == (200, "application/json")
    assert (r2.status, r2.getheader("Content-Type")) == (200, "application/msgpack")
    as_json, as_msgpack = json.loads(body1), msgpack.unpackb(body2)
    assert as_json == as_msgpack
    assert as_json["regcheck"]["verdict"]["action"] == action
    assert {"is_skipped", "score", "required_score", "action", "symbols", "messages", "milter", "regcheck"} <= set(
        as_json
    )


def test_headers_match_case_insensitively_and_rcpt_repeats(worker):
    raw = (
        b"POST /checkv2 HTTP/1.1\r\nHost: x\r\nip: 69.55.226.139\r\nHELO: mx1.wayforward.net\r\n"
        b"from: tway@optsw.com\r\nRcpt: a@x.test\r\nRcpt: b@x.test\r\nQueue-Id: 4ABC\r\nContent-Length: 0\r\n\r\n"
    )
    status, _headers, body = raw_request(worker, raw)
    assert status == 200
    assert "REGCHECK_SPF_ALLOW" in json.loads(body)["symbols"]


def test_keep_alive_reuses_one_connection(worker):
    headers = {"IP": "208.20.133.17", "Helo": "mailout17.heaven.net", "Connection": "keep-alive"}
    r, _, conn = post(worker, headers)
    sock = conn.sock
    assert r.getheader("Connection") == "keep-alive"
    for _ in range(3):
        r, _, conn = post(worker, headers, conn=conn)
        assert r.status == 200 and conn.sock is sock
    conn.close()


def test_http_1_0(worker):
    status, headers, _ = raw_request(worker, b"POST /checkv2 HTTP/1.0\r\nIP: 192.0.2.1\r\nHelo: a.b\r\n\r\n")
    assert status == 200 and headers["connection"] == "close"
    status, headers, _ = raw_request(
        worker, b"POST /checkv2 HTTP/1.0\r\nConnection: keep-alive\r\nIP: 192.0.2.1\r\nHelo: a.b\r\n\r\n"
    )
    assert status == 200 and headers["connection"] == "keep-alive"


def test_chunked_body_header_block_is_read(worker):
    message = b"Received: from x\r\nFrom: Alice <alice@fail.sid.example>\r\n\r\nbody\r\n" + b"x" * 3000
    chunks = b"".join(
        b"%x\r\n%s\r\n" % (len(message[i : i + 700]), message[i : i + 700]) for i in range(0, len(message), 700)
    )
    raw = (
        b"POST /checkv2 HTTP/1.1\r\nHost: x\r\nIP: 192.0.2.77\r\nHelo: mx.sid.example\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n"
    )
    status, _, body = raw_request(worker, raw)
    assert status == 200
    assert json.loads(body)["symbols"]["REGCHECK_SID_FAIL"]["options"][1] == "pra=alice@fail.sid.example"


def test_pipelined_requests_are_answered_in_order(worker):
    one = b"POST /checkv2 HTTP/1.1\r\nIP: 208.20.133.32\r\nHelo: mailout32.heaven.net\r\nContent-Length: 0\r\n\r\n"
    two = b"GET /ping HTTP/1.1\r\n\r\n"
    three = b"POST /checkv2 HTTP/1.1\r\nIP: 208.20.133.17\r\nHelo: JUPITER\r\nContent-Length: 0\r\n\r\n"
    with socket.create_connection(worker, timeout=5) as s:
        s.sendall(one + two + three)
        replies = read_replies(s, 3)
    assert [r[0] for r in replies] == [200, 200, 200]
    assert "REGCHECK_QR1_FAIL" in json.loads(replies[0][2])["symbols"]
    assert replies[1][2] == b"pong\r\n"
    assert "REGCHECK_BAD_HELO" in json.loads(replies[2][2])["symbols"]


def test_ping(worker):
    status, _headers, body = raw_request(worker, b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (status, body) == (200, b"pong\r\n")


def raw_request(worker, data: bytes, read_timeout=5.0):
    """Send raw bytes; return (status, headers, body) of the reply, or (None, {}, b"") if closed silently."""
    with socket.create_connection(worker, timeout=read_timeout) as s:
        s.sendall(data)
        return read_reply(s)


def read_replies(s, n):
    """Read *n* replies from one connection (Content-Length framed)."""
    buf, replies = b"", []
    while len(replies) < n:
        while b"\r\n\r\n" not in buf:
            chunk = s.recv(65536)
            assert chunk, "connection closed early"
            buf += chunk
        head, _, buf = buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        length = int(headers.get("content-length", "0"))
        while len(buf) < length:
            buf += s.recv(65536)
        replies.append((int(lines[0].split()[1]), headers, buf[:length]))
        buf = buf[length:]
    return replies


BAD = [
    pytest.param(
        b"POST /checkv2 HTTP/1.1\r\nIP: 300.1.2.3\r\nContent-Length: 0\r\n\r\n", 400, "not an IP address", id="bad-ip"
    ),
    pytest.param(
        b"POST /checkv2 HTTP/1.1\r\nIP: \xff\xfe\r\nContent-Length: 0\r\n\r\n", 400, "not an IP address", id="binary-ip"
    ),
    pytest.param(b"GARBAGE\r\n\r\n", 400, "malformed HTTP request", id="not-http"),
    pytest.param(
        b"POST /checkv2 HTTP/1.1\r\nContent-Length: x\r\n\r\n", 400, "malformed HTTP request", id="bad-content-length"
    ),
    pytest.param(b"POST /nope HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 404, "unknown path", id="unknown-path"),
    pytest.param(b"DELETE /checkv2 HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 405, "takes POST", id="bad-method"),
    pytest.param(b"POST /ping HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 405, "takes GET", id="post-ping"),
    pytest.param(
        b"POST /checkv2 HTTP/1.1\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(60)) + b"\r\n",
        431,
        "too many",
        id="too-many-headers",
    ),
    pytest.param(
        b"POST /checkv2 HTTP/1.1\r\nX-Big: " + b"y" * 70000 + b"\r\n\r\n", 431, "too large", id="oversize-header"
    ),
    pytest.param(b"POST /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n", 414, "too long", id="long-url"),
]


@pytest.mark.parametrize("data,status,message", BAD)
def test_bad_requests_get_a_4xx_and_json(worker, data, status, message):
    got, headers, body = raw_request(worker, data)
    assert got == status
    assert headers["content-type"] == "application/json"
    assert message in json.loads(body)["error"]


def test_upgrade_is_ignored_then_the_connection_closes(worker):
    with socket.create_connection(worker, timeout=5) as s:
        s.sendall(b"GET /ping HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
        status, _, body = read_reply(s)
        assert (status, body) == (200, b"pong\r\n")
        assert s.recv(10) == b""


def test_413_without_reading_the_body(worker):
    with socket.create_connection(worker, timeout=5) as s:
        s.sendall(b"POST /checkv2 HTTP/1.1\r\nIP: 192.0.2.1\r\nContent-Length: %d\r\n\r\n" % (BODY_LIMIT * 100))
        # not one byte of the body is sent: the answer must come anyway, and the connection close
        status, headers, body = read_reply(s)
        assert status == 413 and headers["connection"] == "close"
        assert "larger than" in json.loads(body)["error"]
        assert s.recv(10) == b""


def test_413_for_a_chunked_body_past_the_limit(worker):
    chunk = b"x" * 60000
    with socket.create_connection(worker, timeout=5) as s:
        s.sendall(b"POST /checkv2 HTTP/1.1\r\nIP: 192.0.2.1\r\nTransfer-Encoding: chunked\r\n\r\n")
        status = None
        try:
            for _ in range(5):
                s.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        except (BrokenPipeError, ConnectionResetError):
            pass
        status, _, _ = read_reply(s)
        assert status == 413


def test_slow_client_is_closed_and_others_are_served(worker):
    with socket.create_connection(worker, timeout=10) as slow:
        slow.sendall(b"POST /checkv2 HTTP/1.1\r\nIP: 192.0.2.1\r\n")  # and then nothing
        started = time.monotonic()
        status, _, _ = raw_request(worker, b"GET /ping HTTP/1.1\r\n\r\n")  # another client meanwhile
        assert status == 200
        assert slow.recv(10) == b""  # closed by the worker after request_timeout (1 s)
        assert time.monotonic() - started < 1.0 * 5  # generous: it does not hang


def test_rspamc_prints_our_symbols(worker, tmp_path):
    rspamc = shutil.which("rspamc")
    if rspamc is None:
        pytest.fail("rspamc not found: install Debian's rspamd package (./dev test does)")
    eml = tmp_path / "m.eml"
    eml.write_bytes(
        b"From: Tom <tway@optsw.com>\r\nTo: x@receiver.test\r\nSubject: hi\r\n"
        b"Message-ID: <1@optsw.com>\r\n\r\nhello\r\n"
    )
    host, port = worker
    cases = [
        (
            ["-i", "208.20.133.17", "--helo", "mailout17.heaven.net"],
            ["Score: -4.60 / 15.00", "Symbol: REGCHECK_QR1_ALLOW (-2.00)[heaven.net, 208.20.133.16/29]"],
        ),
        (
            ["-i", "208.20.133.32", "--helo", "mailout32.heaven.net", "-F", "x@heaven.net", "-r", "a@b.test"],
            [
                "Action: add header",
                "Score: 6.00 / 15.00",
                "Symbol: REGCHECK_QR1_FAIL (6.00)[heaven.net, 208.20.133.32, ratings=S1:A,M2:A,H1:B]",
            ],
        ),
        (
            ["-i", "69.55.226.139", "--helo", "mx1.wayforward.net", "-F", "tway@optsw.com"],
            [
                "Symbol: REGCHECK_SPF_ALLOW (-1.00)[wayforward.net, helo=mx1.wayforward.net, "
                "unaligned=tway@optsw.com, mechanism=a]"
            ],
        ),
        (["-i", "208.20.133.17", "--helo", "JUPITER"], ["Symbol: REGCHECK_BAD_HELO (1.50)[bare-word, JUPITER]"]),
    ]
    for args, expected in cases:
        proc = subprocess.run(
            [rspamc, "-h", f"{host}:{port}", *args, str(eml)], capture_output=True, text=True, timeout=30, check=False
        )
        assert proc.returncode == 0, proc.stderr
        lines = proc.stdout.splitlines()
        for line in expected:
            assert line in lines, (line, proc.stdout)


# -- in-process: cancellation when the client goes away ----------------------------------------


def test_client_disconnect_cancels_its_check(knot):
    """A check stuck on a DNS server that never answers is cancelled when its client leaves."""

    async def go():
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
            silent.bind(("127.0.0.1", 0))
            config = replace(
                Config(),
                registry_zones=(REG,),
                nameservers=("127.0.0.1",),
                dns_port=silent.getsockname()[1],
                dns_timeout=30.0,
                deadline=30.0,
                local_networks=(),
            )
            checker = Checker(config)
            app = App(checker, Limits())
            server = await start_server(app, "127.0.0.1", 0)
            port = server.sockets[0].getsockname()[1]
            _reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"POST /checkv2 HTTP/1.1\r\nIP: 192.0.2.1\r\nHelo: mx.heaven.net\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
            for _ in range(100):
                if app.active:
                    break
                await asyncio.sleep(0.01)
            (task,) = app.active
            writer.close()
            await writer.wait_closed()
            await asyncio.wait({task}, timeout=5)
            assert task.done()  # cancelled by the disconnect, not by the end of this loop
            server.close()
            await server.wait_closed()
            await asyncio.sleep(0.05)  # let the server side finish closing its end
            checker.close()
            return task

    task = asyncio.run(go())
    assert task.cancelled()


def test_ip_header_variants():
    from rspamd_regcheck._http import HttpError, envelope_from_headers

    env = envelope_from_headers(
        [
            ("IP", "2001:DB8::1 "),  # what llhttp hands over: leading OWS gone, trailing kept
            ("From", "<a@b.example>"),
            ("Dkim-Domain", "a.example, b.example"),
            ("dkim-domain", "c.example"),
            ("Rcpt", "<x@y.test>"),
        ],
        b"From: z@w.example\r\n\r\n",
    )
    assert env.ip == ipaddress.ip_address("2001:db8::1")
    assert env.mail_from == "a@b.example" and env.rcpts == ("x@y.test",)
    assert env.dkim_domains == ("a.example", "b.example", "c.example")
    assert env.header_fields == (("From", "z@w.example"),)
    assert envelope_from_headers([], b"").ip is None
    with pytest.raises(HttpError):
        envelope_from_headers([("IP", "1.2.3")], b"")


def test_serve_refuses_to_start_without_a_registry(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "rspamd_regcheck", "serve", "--listen", "127.0.0.1:1"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env=dict(os.environ, PYTHONWARNINGS="error"),
    )
    assert proc.returncode == 2 and "no registry zone configured" in proc.stderr


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("2001:db8:6::1%eth0", id="zone-id"),
        pytest.param("2001:db8:6::1%x; pass", id="zone-id-carrying-text"),
        pytest.param("[2001:db8:6::1]", id="brackets"),
        pytest.param("192.0.2.1 x", id="inner-space"),
        pytest.param("192.0.2.1\x0b", id="vertical-tab"),
        pytest.param("2001:db8:0:0:0:0:0:1", id="not-compressed"),
        pytest.param("192.0.2.01", id="leading-zero"),
    ],
)
def test_client_address_not_written_plainly_is_a_400(value):
    from rspamd_regcheck._http import HttpError, envelope_from_headers

    with pytest.raises(HttpError) as info:
        envelope_from_headers([("IP", value), ("Helo", "mail.six.example")], b"")
    assert info.value.status == 400


@pytest.mark.parametrize(
    "value,address",
    [
        pytest.param("2001:DB8:6::1", "2001:db8:6::1", id="upper-case-hex"),
        pytest.param("192.0.2.1\t", "192.0.2.1", id="trailing-ows"),
        pytest.param("::ffff:192.0.2.1", "192.0.2.1", id="v4-mapped-is-v4"),
    ],
)
def test_client_address_forms_taken(value, address):
    from rspamd_regcheck._http import envelope_from_headers

    assert str(envelope_from_headers([("IP", value)], b"").ip) == address


def test_scoped_address_over_http_is_a_400_not_a_header(worker):
    """The issue's attack against the real worker: a zone ID carrying text gets a 400."""
    for helo in ("mail.six.example", "mailout17.heaven.net"):
        r, body, c = post(worker, {"IP": "2001:db8:6::1%x; pass", "Helo": helo})
        c.close()
        assert r.status == 400 and "IP header" in json.loads(body)["error"]


def test_raw_non_utf8_helo_is_invalid_not_latin1(worker):
    """0xFF in a HELO is not the letter y-diaeresis: the HELO is invalid (it would pass as an IDN)."""
    with socket.create_connection(worker, timeout=10) as s:
        s.sendall(
            b"POST /checkv2 HTTP/1.1\r\nIP: 208.20.133.17\r\nHelo: mailout17.h\xffaven.net\r\nContent-Length: 0\r\n\r\n"
        )
        status, _, body = read_reply(s)
    reply = json.loads(body)
    assert status == 200
    assert reply["symbols"]["REGCHECK_BAD_HELO"]["options"][0] == "bad-idn"
    assert reply["regcheck"]["verdict"]["action"] == "REJECT"


def test_utf8_helo_is_read_as_utf8():
    from rspamd_regcheck._http import envelope_from_headers

    raw = "mx.bücher.example".encode().decode("latin-1")  # as the parser hands it over
    assert envelope_from_headers([("IP", "192.0.2.1"), ("Helo", raw)], b"").helo == "mx.bücher.example"


@pytest.mark.parametrize(
    "headers,packed,slim",
    [
        pytest.param([("IP", "192.0.2.1")], False, False, id="neither"),
        pytest.param([("accept", "application/msgpack"), ("regcheck-reply", "slim")], True, True, id="both"),
        pytest.param([("accept", "Application/MsgPack;q=1")], True, False, id="accept-case"),
        pytest.param([("accept", "text/html"), ("accept", "application/msgpack")], True, False, id="second-accept"),
        pytest.param([("regcheck-reply", " SLIM ")], False, True, id="slim-case-and-space"),
        pytest.param([("regcheck-reply", "full"), ("regcheck-reply", "slim")], False, True, id="second-form"),
        pytest.param([("regcheck-reply", "slimmer")], False, False, id="not-slim"),
    ],
)
def test_one_pass_over_the_headers_finds_the_reply_form_as_the_scans_do(headers, packed, slim):
    """`read_request` reads the reply form in the pass that builds the envelope (names arrive
    lowered from the parser): the same answers as `wants_msgpack` and `wants_slim`."""
    from rspamd_regcheck._http import read_request, wants_msgpack
    from rspamd_regcheck._slim import wants_slim

    env, got_packed, got_slim = read_request(headers, b"")
    assert (got_packed, got_slim) == (packed, slim) == (wants_msgpack(headers), wants_slim(headers))
    assert env.rcpts == ()
