"""The policy listener proved with a real Postfix (Debian's) and a real SMTP client (smtplib).

A private Postfix (tests/postfix_procs.py: own config and queue under a temp
dir, loopback only) asks the real worker (`rspamd-regcheck serve` with
``[policy_server]``) through ``check_policy_service`` at RCPT and at DATA,
and delivers what it accepts to smtp-sink, whose dumps the tests read.  knot
serves the registry and the SPF records (tests/zones/).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import free_port
from helpers import check_lines
from postfix_procs import PrivatePostfix, postfix_installed, wait_port
from rspamd_procs import Proc, start_worker

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not postfix_installed(),
    reason="needs root and Debian's postfix (./dev setup installs it)",
)

REG = "id.regcheck.test"
CONTRIB = Path(__file__).parent.parent / "contrib" / "postfix"
POLICY = "check_policy_service {{ inet:127.0.0.1:{port}, default_action=DUNNO, timeout=10s, try_limit=1 }}"


def start_policy_worker(base: Path, knot, policy_port: int) -> Proc:  # type: ignore[no-untyped-def]
    """`rspamd-regcheck serve` with contrib/postfix/regcheck.toml's [policy_server] on *policy_port*."""
    policy = (CONTRIB / "regcheck.toml").read_text().replace("127.0.0.1:10040", f"127.0.0.1:{policy_port}")
    assert str(policy_port) in policy
    config = (
        f'[registry]\nzones = ["{REG}"]\n'
        f'[dns]\nnameservers = ["{knot.host}"]\nport = {knot.port}\n'
        '[policy]\nlocal_networks = []\n[spf]\nreceiver = "mx.receiver.test"\n' + policy
    )
    worker = start_worker(base, "worker", config, free_port())
    wait_port(policy_port, worker)
    return worker


def checks(worker: Proc, helo: str, expect: int) -> int:
    """The worker's check log lines for *helo* (written in batches: `check_lines` waits for them)."""
    return check_lines(worker.log_path, helo, expect)


@pytest.fixture(scope="module")
def mta(knot, tmp_path_factory) -> Iterator[tuple[PrivatePostfix, Proc]]:  # type: ignore[no-untyped-def]
    base = tmp_path_factory.mktemp("postfix")
    policy_port, dead_port = free_port(), free_port()
    worker = start_policy_worker(base, knot, policy_port)
    # the main service runs on contrib/postfix/main.cf's lines, as an admin would add them
    snippet = (CONTRIB / "main.cf").read_text().replace("inet:127.0.0.1:10040", f"inet:127.0.0.1:{policy_port}")
    assert str(policy_port) in snippet
    services: dict[str, tuple[int, str | None, str | None]] = {
        "main": (free_port(), None, None),
        # nothing listens on dead_port: Postfix's default_action (DUNNO here) decides
        "down": (free_port(), POLICY.format(port=dead_port), ""),
    }
    try:
        postfix = PrivatePostfix(services, free_port(), snippet)
    except Exception:
        worker.stop()
        raise
    try:
        yield postfix, worker
    finally:
        postfix.stop()
        worker.stop()


def _body(marker: str) -> bytes:
    return f"From: a@example.org\r\nSubject: {marker}\r\n\r\n{marker}\r\n".encode()


def _headers(message: str) -> list[str]:
    """The header field names of a delivered message, smtp-sink's own lines left out."""
    head = message.split("\n\n", 1)[0]
    names = [line.split(":", 1)[0] for line in head.splitlines() if line and not line[0].isspace()]
    return [n for n in names if not n.startswith("X-Client") and not n.endswith("-Args")]


def test_reject_at_rcpt_with_the_workers_text_and_no_data(mta) -> None:  # type: ignore[no-untyped-def]
    postfix, worker = mta
    s = postfix.smtp("main", "208.20.133.32", "mailout32.heaven.net")
    try:
        assert s.mail("a@heaven.net")[0] == 250
        code, text = s.rcpt("user@dest.test")
        # no recipient accepted: the client has nothing to send DATA for, and sends none
    finally:
        s.quit()
    assert code == 550
    assert text.decode() == (
        "5.7.1 <user@dest.test>: Recipient address rejected: "
        "Host 208.20.133.32 is not authorised to send mail for 'heaven.net' (QR1)"
    )
    assert postfix.logged("NOQUEUE: reject: RCPT from unknown[208.20.133.32]: 550 5.7.1"), postfix.log()
    # Postfix's own count of the session's commands: the one RCPT refused, no DATA
    assert postfix.logged("disconnect from unknown[208.20.133.32]"), postfix.log()
    (summary,) = [line for line in postfix.log().splitlines() if "disconnect from unknown[208.20.133.32]" in line]
    assert " rcpt=0/1 " in summary and "data" not in summary, summary


def test_postmaster_is_never_refused_and_gets_the_header(mta) -> None:  # type: ignore[no-untyped-def]
    postfix, worker = mta
    marker = "pm-" + os.urandom(4).hex()
    s = postfix.smtp("main", "208.20.133.33", "mailout33.heaven.net")
    try:
        s.mail("a@heaven.net")
        refused = s.rcpt("user@dest.test")
        accepted = s.rcpt("postmaster@dest.test")
        sent = s.data(_body(marker))
    finally:
        s.quit()
    assert refused[0] == 550 and accepted[0] == 250 and sent[0] == 250
    message = postfix.delivered(marker)
    assert "X-Rcpt-Args: <postmaster@dest.test>" in message
    assert "X-Regcheck: 208.20.133.33 heaven.net QR1 fail ratings=S1:A,M2:A,H1:B" in message
    assert checks(worker, "mailout33.heaven.net", 1) == 1  # the second recipient reused the check


def test_accept_delivered_with_both_headers_one_recipient(mta) -> None:  # type: ignore[no-untyped-def]
    """Postfix prepends one header per answer: X-Regcheck at RCPT, Received-SPF at DATA."""
    postfix, worker = mta
    marker = "spf-" + os.urandom(4).hex()
    s = postfix.smtp("main", "192.0.2.10", "mx.spf.example")
    try:
        assert s.mail("a@pass.spf.example")[0] == 250
        assert s.rcpt("user@dest.test")[0] == 250
        assert s.data(_body(marker))[0] == 250
    finally:
        s.quit()
    message = postfix.delivered(marker)
    assert "X-Regcheck: 192.0.2.10 spf.example SPF pass ratings=S1:A,M2:A,H1:B" in message
    assert re.search(r"^Received-SPF: Pass \(.*\) client-ip=192\.0\.2\.10;", message, re.M | re.S), message
    names = _headers(message)
    # the first prepended header comes first, each once
    assert names.index("X-Regcheck") < names.index("Received-SPF") < names.index("Subject")
    assert names.count("X-Regcheck") == 1 and names.count("Received-SPF") == 1


def test_accept_two_recipients_headers_once(mta) -> None:  # type: ignore[no-untyped-def]
    postfix, worker = mta
    marker = "two-" + os.urandom(4).hex()
    s = postfix.smtp("main", "208.20.133.18", "mailout18.heaven.net")
    try:
        s.mail("b@heaven.net")
        assert s.rcpt("one@dest.test")[0] == 250
        assert s.rcpt("two@dest.test")[0] == 250
        assert s.data(_body(marker))[0] == 250
    finally:
        s.quit()
    message = postfix.delivered(marker)
    assert message.count("X-Regcheck: 208.20.133.18 heaven.net QR1 pass") == 1
    assert checks(worker, "mailout18.heaven.net", 1) == 1


def test_tempfail_is_4xx(mta) -> None:  # type: ignore[no-untyped-def]
    postfix, _ = mta
    s = postfix.smtp("main", "192.0.2.11", "mx.spf.example")
    try:
        s.mail("a@temp.spf.example")
        code, text = s.rcpt("user@dest.test")
    finally:
        s.quit()
    assert code == 450, (code, text)  # DEFER_IF_PERMIT: Postfix's access_map_defer_code
    assert text.decode().startswith(
        "4.4.3 <user@dest.test>: Recipient address rejected: Could not verify 'spf.example'"
    )


def test_worker_down_gives_postfix_default_action(mta) -> None:  # type: ignore[no-untyped-def]
    postfix, _ = mta
    marker = "down-" + os.urandom(4).hex()
    s = postfix.smtp("down", "208.20.133.34", "mailout34.heaven.net")
    try:
        s.mail("a@heaven.net")
        assert s.rcpt("user@dest.test")[0] == 250  # the REJECT case, but nobody to ask: DUNNO
        assert s.data(_body(marker))[0] == 250
    finally:
        s.quit()
    message = postfix.delivered(marker)
    assert "X-Regcheck" not in message
    assert postfix.logged("problem talking to server 127.0.0.1:"), postfix.log()


# -- on a UNIX socket -------------------------------------------------------------------------


def _uncommented(text: str, marker: str, replaces: str) -> str:
    """contrib's *text* with its commented line holding *marker* in force instead of the line *replaces*."""
    lines = text.splitlines()
    (alternative,) = [i for i, line in enumerate(lines) if line.startswith("#") and marker in line]
    (current,) = [i for i, line in enumerate(lines) if line.startswith(replaces)]
    lines[current] = lines[alternative].lstrip("#")
    del lines[alternative]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def unix_mta(knot, tmp_path_factory) -> Iterator[tuple[PrivatePostfix, Proc]]:  # type: ignore[no-untyped-def]
    """Postfix asking a worker on a UNIX socket under its queue directory, as docs/postfix.md sets
    it up: by contrib/postfix/main.cf's name relative to the queue directory ("main", and a chrooted
    smtpd, "chroot"), and by an absolute path ("abs")."""
    base = tmp_path_factory.mktemp("postfix-unix")
    snippet = _uncommented((CONTRIB / "main.cf").read_text(), "unix:regcheck/policy.sock", "regcheck_policy =")
    # Postfix expands $queue_directory: check_policy_service gets the socket's absolute path
    absolute = POLICY.format(port=0).replace("inet:127.0.0.1:0", "unix:$queue_directory/regcheck/policy.sock")
    services: dict[str, tuple[int, str | None, str | None]] = {
        "main": (free_port(), None, None),
        "chroot": (free_port(), None, None),
        "abs": (free_port(), absolute, ""),
        # the pitfall docs/postfix.md warns of: an absolute path from inside the chroot
        "chroot_abs": (free_port(), absolute, ""),
    }
    postfix = PrivatePostfix(services, free_port(), snippet, chrooted=("chroot", "chroot_abs"))
    try:
        # the directory of the worker's own under the queue directory (the worker runs as root here)
        sockets = postfix.queue / "regcheck"
        sockets.mkdir(mode=0o755)
        policy = (CONTRIB / "regcheck.toml").read_text().replace("/var/spool/postfix", str(postfix.queue))
        policy = _uncommented(policy, 'listen = "unix:', "listen =")
        assert f'listen = "unix:{sockets}/policy.sock"' in policy
        config = (
            f'[registry]\nzones = ["{REG}"]\n'
            f'[dns]\nnameservers = ["{knot.host}"]\nport = {knot.port}\n'
            '[policy]\nlocal_networks = []\n[spf]\nreceiver = "mx.receiver.test"\n' + policy
        )
        worker = start_worker(base, "unix-worker", config, free_port())
    except Exception:
        postfix.stop()
        raise
    try:
        yield postfix, worker
    finally:
        worker.stop()
        postfix.stop()


@pytest.mark.parametrize("service", ["main", "chroot", "abs"])
def test_reject_at_rcpt_over_a_unix_socket(unix_mta, service: str) -> None:  # type: ignore[no-untyped-def]
    postfix, worker = unix_mta
    n = {"main": 37, "chroot": 38, "abs": 39}[service]
    s = postfix.smtp(service, f"208.20.133.{n}", f"mailout{n}.heaven.net")
    try:
        assert s.mail("a@heaven.net")[0] == 250
        code, text = s.rcpt("user@dest.test")
    finally:
        s.quit()
    assert (code, text.decode()) == (
        550,
        "5.7.1 <user@dest.test>: Recipient address rejected: "
        f"Host 208.20.133.{n} is not authorised to send mail for 'heaven.net' (QR1)",
    ), postfix.log()[-2000:]
    assert checks(worker, f"mailout{n}.heaven.net", 1) == 1  # the worker's answer, not Postfix's own


def test_a_chrooted_smtpd_does_not_find_an_absolute_path(unix_mta) -> None:  # type: ignore[no-untyped-def]
    """Inside the chroot, /var/spool/postfix/... is looked up under the queue directory again:
    nothing there, so Postfix's default_action (DUNNO) lets the REJECT case through."""
    postfix, worker = unix_mta
    s = postfix.smtp("chroot_abs", "208.20.133.40", "mailout40.heaven.net")
    try:
        assert s.mail("a@heaven.net")[0] == 250
        rcpt = s.rcpt("user@dest.test")
        assert rcpt[0] == 250, rcpt
    finally:
        s.quit()
    missing = f"problem talking to server {postfix.queue}/regcheck/policy.sock: No such file or directory"
    assert postfix.logged(missing), postfix.log()
    assert checks(worker, "mailout40.heaven.net", 0) == 0
