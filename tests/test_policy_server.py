"""The policy listener of the real worker (`serve`) over real sockets: the protocol, limits, attacks.

Postfix itself is in tests/test_postfix.py; here a plain socket plays
Postfix, to reach what Postfix never sends (garbage, endless lines, silence)
and the settings a single Postfix set-up cannot show (states, modes).
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from rspamd_regcheck._policy_server import BAD_LOG_SECONDS

from conftest import free_port
from helpers import check_lines, read_reply
from postfix_procs import wait_port
from rspamd_procs import Proc, start_worker

REG = "id.regcheck.test"


def policy_config(knot, port: int, extra: str = "", mode: str = "enforce", policy: str = "", dns: str = "") -> str:  # type: ignore[no-untyped-def]
    return (
        f'[registry]\nzones = ["{REG}"]\n'
        f'[dns]\nnameservers = ["{knot.host}"]\nport = {knot.port}\n{dns}'
        f"[policy]\nlocal_networks = []\n{policy}"
        f'[policy_server]\nlisten = "127.0.0.1:{port}"\nmode = "{mode}"\n{extra}'
    )


class Worker:
    """A worker with the policy listener, and helpers to play Postfix."""

    def __init__(self, base: Path, knot, extra: str = "", mode: str = "enforce", policy: str = "", dns: str = ""):  # type: ignore[no-untyped-def]
        self.port, self.http_port = free_port(), free_port()
        self.config_path = base / f"policy-{self.port}.toml"
        self.proc = start_worker(
            base, f"policy-{self.port}", policy_config(knot, self.port, extra, mode, policy, dns), self.http_port
        )
        wait_port(self.port, self.proc)

    def connect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=10)

    def checks(self, helo: str, expect: int) -> int:
        return check_lines(self.proc.log_path, helo, expect)  # the check log is written in batches

    def metrics(self) -> str:
        with socket.create_connection(("127.0.0.1", self.http_port), timeout=10) as s:
            s.sendall(b"GET /metrics HTTP/1.1\r\n\r\n")
            status, _, body = read_reply(s)
        assert status == 200
        return body.decode()


def request(**attrs: str) -> bytes:
    base = {"request": "smtpd_access_policy", "protocol_state": "RCPT", "protocol_name": "ESMTP"}
    return "".join(f"{k}={v}\n" for k, v in {**base, **attrs}.items()).encode() + b"\n"


def ask(s: socket.socket, data: bytes, answers: int = 1) -> list[str]:
    """Send *data*, read *answers* replies (each ends with an empty line)."""
    s.sendall(data)
    buf = b""
    while buf.count(b"\n\n") < answers:
        chunk = s.recv(65536)
        if not chunk:
            raise AssertionError(f"connection closed after {buf!r}")
        buf += chunk
    return [a.decode() for a in buf.split(b"\n\n")[:answers]]


REJECTED = {"client_address": "208.20.133.32", "helo_name": "mailout32.heaven.net", "sender": "a@heaven.net"}
ACCEPTED = {"client_address": "208.20.133.17", "helo_name": "mailout17.heaven.net", "sender": "a@heaven.net"}
REJECT_TEXT = "action=550 5.7.1 Host 208.20.133.32 is not authorised to send mail for 'heaven.net' (QR1)"
FAIL_HEADER = "action=PREPEND X-Regcheck: 208.20.133.32 heaven.net QR1 fail ratings=S1:A,M2:A,H1:B"
PASS_HEADER = "action=PREPEND X-Regcheck: 208.20.133.17 heaven.net QR1 pass ratings=S1:A,M2:A,H1:B"


@pytest.fixture(scope="module")
def worker(knot, tmp_path_factory) -> Iterator[Worker]:  # type: ignore[no-untyped-def]
    w = Worker(tmp_path_factory.mktemp("policy"), knot, extra="request_timeout = 1.0\n")
    try:
        yield w
    finally:
        w.proc.stop()


@pytest.fixture
def other(knot, tmp_path) -> Iterator:  # type: ignore[no-untyped-def]
    """Start a worker with its own [policy_server] lines (and mode, and [policy] lines)."""
    started: list[Proc] = []

    def start(extra: str = "", mode: str = "enforce", policy: str = "", dns: str = "") -> Worker:
        w = Worker(tmp_path, knot, extra, mode, policy, dns)
        started.append(w.proc)
        return w

    try:
        yield start
    finally:
        for proc in started:
            proc.stop()


def test_one_check_per_transaction_on_one_connection(worker: Worker) -> None:
    txn = {**REJECTED, "helo_name": "mailout35.heaven.net", "client_address": "208.20.133.35", "instance": "t1"}
    with worker.connect() as s:
        first = ask(s, request(**txn, recipient="one@dest.test"))
        second = ask(s, request(**txn, recipient="two@dest.test"))
        pm = ask(s, request(**txn, recipient="postmaster@dest.test"))
        data = ask(s, request(**txn, protocol_state="DATA", recipient="postmaster@dest.test", recipient_count="1"))
        again = ask(s, request(**ACCEPTED, instance="t2", recipient="x@dest.test"))
    assert first[0].startswith("action=550 5.7.1 Host 208.20.133.35 is not authorised")
    assert second == first  # the refusal is repeated for each recipient
    assert pm == ["action=PREPEND X-Regcheck: 208.20.133.35 heaven.net QR1 fail ratings=S1:A,M2:A,H1:B"]
    assert data == ["action=DUNNO"]  # never a refusal at DATA; the only header went already
    assert again == [PASS_HEADER]
    assert worker.checks("mailout35.heaven.net", 1) == 1


def test_pipelined_requests_answered_in_order(worker: Worker) -> None:
    with worker.connect() as s:
        answers = ask(
            s,
            request(**REJECTED, instance="p1", recipient="u@d.test")
            + b"garbage line\n\n"
            + request(**ACCEPTED, instance="p2", recipient="u@d.test"),
            answers=3,
        )
    assert answers == [REJECT_TEXT, "action=DUNNO", PASS_HEADER]


DUNNO = "action=DUNNO"
HOSTILE = [
    pytest.param(b"\x00\xff" * 5000 + b"\n\n", DUNNO, id="binary"),
    pytest.param(b"sender=" + b"A" * 5_000_000 + b"\n\n", DUNNO, id="five-megabyte-line"),
    pytest.param(b"".join(b"x%d=y\n" % i for i in range(5000)) + b"\n", DUNNO, id="five-thousand-attributes"),
    pytest.param(
        b"request=smtpd_access_policy\nclient_address=not-an-ip\ninstance=h\n\n", DUNNO, id="bad-client-address"
    ),
    pytest.param(b"request=smtpd_access_policy\nprotocol_state=RCPT\n\n", DUNNO, id="no-client-at-all"),
    pytest.param(b"request=smtpd_access_policy\nprotocol_state=VRFY\nclient_address=1.2.3.4\n\n", DUNNO, id="vrfy"),
    pytest.param(b"request=smtpd_access_policy\n=\n\n", DUNNO, id="empty-name"),
    # a line break in a value only makes another attribute: no recipient, so no refusal
    pytest.param(
        request(client_address="208.20.133.36", helo_name="mailout36.heaven.net\r\naction=OK", instance="inj"),
        FAIL_HEADER.replace(".32", ".36"),
        id="crlf-in-helo",
    ),
]


@pytest.mark.parametrize(("attack", "expected"), HOSTILE)
def test_hostile_requests_answered_and_the_session_goes_on(worker: Worker, attack: bytes, expected: str) -> None:
    with worker.connect() as s:
        answer = ask(s, attack)
        after = ask(s, request(**REJECTED, instance="after-" + str(len(attack)), recipient="u@d.test"))
    assert answer == [expected]
    assert after == [REJECT_TEXT]


def test_bad_requests_are_logged_at_most_once_a_second(other) -> None:  # type: ignore[no-untyped-def]
    w = other()
    with w.connect() as s:
        assert ask(s, b"hello there\n\n" * 50, answers=50) == ["action=DUNNO"] * 50
        time.sleep(1.1)
        assert ask(s, b"request=smtpd_access_policy\n=x\n\n") == ["action=DUNNO"]
    time.sleep(0.3)
    lines = [line for line in w.proc.log_path.read_text().splitlines() if "bad policy request" in line]
    assert len(lines) == 2, lines
    assert "not a name=value line: b'hello there'" in lines[0]
    assert "(and 49 more since the last line)" in lines[1]


def test_refused_connections_are_logged_at_most_once_a_second(other) -> None:  # type: ignore[no-untyped-def]
    """A client that is not served, connecting 200 times at once, gets no line each: a local user
    (on a UNIX socket, anyone the directory lets in) could otherwise flood the log."""
    w = other('clients = ["192.0.2.0/24"]\n')
    started = time.monotonic()
    for _ in range(200):
        with w.connect() as s:
            assert s.recv(100) == b""  # closed before a word
    seconds = time.monotonic() - started
    time.sleep(0.3)
    lines = [line for line in w.proc.log_path.read_text().splitlines() if "policy connection from" in line]
    assert 1 <= len(lines) <= int(seconds / BAD_LOG_SECONDS) + 2, (seconds, lines)  # one a second at most
    assert "refused: not in policy_server.clients" in lines[0]


def test_unfinished_request_times_out(worker: Worker) -> None:
    with worker.connect() as s:
        s.sendall(b"request=smtpd_access_policy\n")
        started = time.monotonic()
        assert s.recv(100) == b""  # closed by request_timeout (1 s here), not answered
        assert time.monotonic() - started < 5.0  # a bound proving it ends, with a margin


def test_metrics_carry_the_protocol(worker: Worker) -> None:
    with worker.connect() as s:
        ask(s, request(**REJECTED, instance="m1", recipient="u@d.test"))
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        text = worker.metrics()
        if re.search(r'regcheck_requests_total\{path="policy",status="reject"\} [1-9]', text):
            break
        time.sleep(0.3)  # a worker hands its counts over once a second
    assert re.search(r'regcheck_requests_total\{path="policy",status="reject"\} [1-9]', text)
    assert re.search(r'regcheck_checks_total\{protocol="policy",verdict="REJECT"\} [1-9]', text)


def count(text: str, series: str) -> float:
    """The value of one series (name and labels as the exposition writes them), 0 when absent."""
    m = re.search(rf"^{re.escape(series)} (\S+)$", text, re.MULTILINE)
    return float(m.group(1)) if m else 0.0


def test_policy_and_http_checks_count_under_their_protocols(worker: Worker) -> None:
    """The same worker, the same checker: a check asked by Postfix counts under protocol="policy",
    one asked over HTTP (rspamd's plugin) under protocol="http", and neither under the other."""
    series = {
        (proto, verdict): f'regcheck_checks_total{{protocol="{proto}",verdict="{verdict}"}}'
        for proto in ("policy", "http")
        for verdict in ("REJECT", "ACCEPT")
    }
    latency = {proto: f'regcheck_check_seconds_count{{protocol="{proto}"}}' for proto in ("policy", "http")}
    text = worker.metrics()
    before = {k: count(text, v) for k, v in {**series, **latency}.items()}
    with worker.connect() as s:
        (answer,) = ask(s, request(**REJECTED, instance="proto-1", recipient="u@d.test"))
    assert answer == REJECT_TEXT
    with socket.create_connection(("127.0.0.1", worker.http_port), timeout=10) as h:
        h.sendall(
            b"POST /checkv2 HTTP/1.1\r\nIP: 208.20.133.17\r\nHelo: mailout17.heaven.net\r\nContent-Length: 0\r\n\r\n"
        )
        status, _, reply = read_reply(h)
    assert status == 200 and b"REGCHECK_QR1_ALLOW" in reply
    expected = {("policy", "REJECT"): 1, ("http", "ACCEPT"): 1, ("policy", "ACCEPT"): 0, ("http", "REJECT"): 0}
    deadline = time.monotonic() + 5
    while True:
        text = worker.metrics()
        got = {k: count(text, v) - before[k] for k, v in {**series, **latency}.items()}
        if all(got[k] == n for k, n in expected.items()) or time.monotonic() > deadline:
            break
        time.sleep(0.3)  # a worker hands its counts over once a second
    assert {k: got[k] for k in expected} == expected
    assert got["policy"] == 1 and got["http"] == 1  # the latency histogram, by protocol too


# A new transaction of a sender checked moments ago takes the first answer kept from the last one
# (_policy_server.Answer): only while the check's result holds, for the same recipient, state and
# configuration.  Each step: (instance, sender's envelope, extra attributes, expected answer).
KEPT = [
    pytest.param(
        [
            ("k1", REJECTED, {"recipient": "u@d.test"}, REJECT_TEXT),
            ("k2", REJECTED, {"recipient": "postmaster@d.test"}, FAIL_HEADER),
            ("k3", REJECTED, {"recipient": "u@d.test"}, REJECT_TEXT),
            ("k2", REJECTED, {"recipient": "v@d.test"}, REJECT_TEXT),
        ],
        id="the-recipient-decides-as-in-a-fresh-check",
    ),
    pytest.param(
        [
            ("k1", ACCEPTED, {"recipient": "u@d.test"}, PASS_HEADER),
            ("k2", ACCEPTED, {"recipient": "u@d.test"}, PASS_HEADER),
            ("k2", ACCEPTED, {"recipient": "v@d.test"}, "action=DUNNO"),  # the one header went already
            ("k3", ACCEPTED, {"recipient": "v@d.test"}, PASS_HEADER),
        ],
        id="each-transaction-prepends-its-own-header",
    ),
    pytest.param(
        [
            ("k1", ACCEPTED, {"recipient": "u@d.test", "protocol_state": "MAIL"}, "action=DUNNO"),
            ("k2", ACCEPTED, {"recipient": "u@d.test", "protocol_state": "MAIL"}, "action=DUNNO"),
            ("k2", ACCEPTED, {"recipient": "u@d.test"}, PASS_HEADER),
            ("k3", ACCEPTED, {"recipient": "u@d.test", "protocol_state": "MAIL"}, "action=DUNNO"),
            ("k4", ACCEPTED, {"recipient": "u@d.test", "protocol_state": "END-OF-MESSAGE"}, "action=DUNNO"),
        ],
        id="a-state-before-the-check-is-not-a-check",
    ),
]


@pytest.mark.parametrize("steps", KEPT)
def test_kept_first_answers(other, steps) -> None:  # type: ignore[no-untyped-def]
    w = other()
    with w.connect() as s:
        got = [ask(s, request(**env, **attrs, instance=i))[0] for i, env, attrs, _ in steps]
    assert got == [expected for *_, expected in steps]
    helo = steps[0][1]["helo_name"]
    checked = {i for i, _, attrs, _ in steps if attrs.get("protocol_state") != "MAIL"}  # the check runs at RCPT
    assert w.checks(helo, len(checked)) == len(checked)  # one check line per transaction checked, reused or not


def test_kept_answer_lasts_only_while_the_dns_answers_do(knot, other) -> None:  # type: ignore[no-untyped-def]
    w = other(dns="max_ttl = 1\n")
    with w.connect() as s:
        first = ask(s, request(**ACCEPTED, instance="e1", recipient="u@d.test"))
        asked = knot.queries()
        second = ask(s, request(**ACCEPTED, instance="e2", recipient="u@d.test"))
        assert knot.queries() == asked  # taken from the last transaction: no DNS
        time.sleep(1.5)  # every answer the check rests on has expired (max_ttl = 1)
        third = ask(s, request(**ACCEPTED, instance="e3", recipient="u@d.test"))
        assert knot.queries() > asked  # checked afresh
    assert first == second == third == [PASS_HEADER]


def test_kept_answer_is_not_given_after_a_reload(other) -> None:  # type: ignore[no-untyped-def]
    import os
    import signal

    w = other()
    with w.connect() as s:
        assert ask(s, request(**REJECTED, instance="r1", recipient="u@d.test")) == [REJECT_TEXT]
        w.config_path.write_text(w.config_path.read_text().replace('mode = "enforce"', 'mode = "score"'))
        os.kill(w.proc.proc.pid, signal.SIGHUP)
        deadline = time.monotonic() + 10
        while w.proc.log_path.read_text().count("configuration reloaded") < 2 and time.monotonic() < deadline:
            time.sleep(0.1)  # the supervisor's line, then the worker's
        assert ask(s, request(**REJECTED, instance="r2", recipient="u@d.test")) == [FAIL_HEADER]


def test_kept_answer_follows_a_local_list_reload(other, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The list is read again when its file changes; a transaction after that is checked against
    the new list, not answered as the last one was (the kept answer once outlived the list)."""
    import os

    lst = tmp_path / "ratings.txt"
    lst.write_text("heaven.net A\n")
    w = other(policy=f'[services.LOCAL]\nweight = 20\nratings = {{ A = 9, B = 7, C = 5, D = 0 }}\nfile = "{lst}"\n')
    with w.connect() as s:
        first = ask(s, request(**ACCEPTED, instance="l1", recipient="u@d.test"))
        stamp = lst.stat().st_mtime_ns + 1_000_000_000
        lst.write_text("heaven.net D\n")
        os.utime(lst, ns=(stamp, stamp))
        time.sleep(1.5)  # the file is looked at at most once a second
        second = ask(s, request(**ACCEPTED, instance="l2", recipient="u@d.test"))
    assert "LOCAL:A" in first[0] and first[0].startswith("action=PREPEND")
    assert second[0].startswith("action=550 5.7.1") and "LOCAL:D" in second[0], second


def test_result_cache_off_reuses_no_answer(other) -> None:  # type: ignore[no-untyped-def]
    """dns.result_cache_size = 0 turns reuse off for the policy listener too: each transaction
    is checked (from the DNS cache), none is answered as the last one was."""
    w = other(dns="result_cache_size = 0\n")
    with w.connect() as s:
        answers = [ask(s, request(**ACCEPTED, instance=f"n{i}", recipient="u@d.test"))[0] for i in range(3)]
    assert answers == [PASS_HEADER] * 3
    reused = re.search(r'regcheck_dns_total\{event="result_reused"\} ([\d.]+)', w.metrics())
    assert reused is None or float(reused.group(1)) == 0, reused


def test_skipped_sessions_get_dunno(worker: Worker) -> None:
    with worker.connect() as s:
        authed = ask(s, request(**REJECTED, instance="s1", recipient="u@d.test", sasl_username="alice"))
    assert authed == ["action=DUNNO"]


def test_score_mode_never_refuses(other) -> None:  # type: ignore[no-untyped-def]
    w = other(mode="score")
    with w.connect() as s:
        assert ask(s, request(**REJECTED, instance="sc", recipient="u@d.test")) == [FAIL_HEADER]


def test_check_at_mail(other) -> None:  # type: ignore[no-untyped-def]
    # [policy] never_reject governs the listener too (one place for rspamd's and Postfix's enforcement)
    w = other('state = "MAIL"\n', policy="never_reject = []\n")
    with w.connect() as s:
        assert ask(s, request(**REJECTED, protocol_state="HELO", instance="")) == ["action=DUNNO"]
        assert ask(s, request(**REJECTED, protocol_state="MAIL", instance="m")) == [REJECT_TEXT]
        assert ask(s, request(**REJECTED, instance="m", recipient="postmaster@d.test")) == [REJECT_TEXT]


def test_check_at_mail_keeps_postmaster(other) -> None:  # type: ignore[no-untyped-def]
    w = other('state = "MAIL"\n')
    with w.connect() as s:
        # MAIL does not know the recipients: no refusal yet; each RCPT gets its own answer
        assert ask(s, request(**REJECTED, protocol_state="MAIL", instance="m")) == [FAIL_HEADER]
        assert ask(s, request(**REJECTED, instance="m", recipient="u@d.test")) == [REJECT_TEXT]
        assert ask(s, request(**REJECTED, instance="m", recipient="postmaster@d.test")) == ["action=DUNNO"]


def test_check_at_end_of_message(other) -> None:  # type: ignore[no-untyped-def]
    w = other('state = "END-OF-MESSAGE"\n')
    with w.connect() as s:
        assert ask(s, request(**REJECTED, instance="e", recipient="u@d.test")) == ["action=DUNNO"]
        eom = request(
            **REJECTED, protocol_state="END-OF-MESSAGE", instance="e", recipient="u@d.test", recipient_count="1"
        )
        assert ask(s, eom) == [REJECT_TEXT]
        # Postfix cannot prepend at END-OF-MESSAGE (access(5)): an accepted message gets DUNNO
        ok = request(**ACCEPTED, protocol_state="END-OF-MESSAGE", instance="f", recipient_count="2")
        assert ask(s, ok) == ["action=DUNNO"]
    assert w.checks("mailout32.heaven.net", 1) == 1


def test_idle_connection_closed_and_foreign_clients_refused(other) -> None:  # type: ignore[no-untyped-def]
    w = other("idle_timeout = 0.5\n")
    with w.connect() as s:
        assert ask(s, request(**ACCEPTED, instance="i", recipient="u@d.test")) == [PASS_HEADER]
        started = time.monotonic()
        assert s.recv(100) == b""
        assert time.monotonic() - started < 5.0
    closed = other('clients = ["192.0.2.0/24"]\n')
    with closed.connect() as s:
        assert s.recv(100) == b""  # 127.0.0.1 is not a client it serves: closed before a word


def test_rspamd_after_policy_asks_no_dns(knot, worker: Worker) -> None:  # type: ignore[no-untyped-def]
    """When Postfix asks first and rspamd (through the plugin's HTTP call) asks again, the
    second check finds every answer in the cache: knot sees no new question."""
    txn = {"client_address": "192.0.2.10", "helo_name": "mx.spf.example", "sender": "a@pass.spf.example"}
    with worker.connect() as s:
        (answer,) = ask(s, request(**txn, instance="r1", recipient="u@d.test"))
    assert answer.startswith("action=PREPEND X-Regcheck: 192.0.2.10 spf.example SPF pass")
    before = knot.queries()
    headers = b"IP: 192.0.2.10\r\nHelo: mx.spf.example\r\nFrom: a@pass.spf.example\r\nRcpt: u@d.test\r\n"
    body = b"From: a@pass.spf.example\r\nSubject: x\r\n\r\nbody\r\n"
    with socket.create_connection(("127.0.0.1", worker.http_port), timeout=10) as h:
        h.sendall(b"POST /checkv2 HTTP/1.1\r\n" + headers + b"Content-Length: %d\r\n\r\n" % len(body) + body)
        status, _, reply = read_reply(h)
    assert status == 200 and b"REGCHECK_SPF_ALLOW" in reply
    assert knot.queries() == before


def test_shutdown_with_postfix_connected_is_clean(other) -> None:  # type: ignore[no-untyped-def]
    import signal

    w = other()
    with w.connect() as s:
        assert ask(s, request(**ACCEPTED, instance="sd", recipient="u@d.test")) == [PASS_HEADER]
        w.proc.proc.send_signal(signal.SIGTERM)
        started = time.monotonic()
        assert s.recv(100) == b""  # closed as the worker stops, not left hanging
        assert time.monotonic() - started < 15.0
    assert w.proc.proc.wait(timeout=20) == 0


@pytest.mark.parametrize(
    ("policy_listen", "message"),
    [
        # both listeners use SO_REUSEPORT: on one port the kernel would mix the two protocols
        pytest.param("127.0.0.1:{port}", "policy_server.listen: port {port} is the HTTP listener's", id="http-port"),
        pytest.param("192.0.2.1:10040", "cannot listen on 192.0.2.1:10040", id="not-ours"),
    ],
)
def test_refuses_to_start(tmp_path, policy_listen: str, message: str) -> None:  # type: ignore[no-untyped-def]
    import subprocess
    import sys

    port = free_port()
    conf = tmp_path / "c.toml"
    conf.write_text(f'[registry]\nzones = ["x.test"]\n[policy_server]\nlisten = "{policy_listen.format(port=port)}"\n')
    serve = [sys.executable, "-m", "rspamd_regcheck", "--config", str(conf), "serve"]
    argv = [*serve, "--listen", f"127.0.0.1:{port}"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == 2
    assert message.format(port=port) in proc.stderr, proc.stderr
