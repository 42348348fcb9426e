"""Running the worker as docs/operations.md says: secret files and systemd credentials, the
metrics listener and Bearer tokens, listen and nameserver forms, IPv6 in brackets."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys

import pytest
import test_serve
from test_serve import HEAVEN, REG, SECRET, Server, config_text

from conftest import free_port
from helpers import read_reply

NEW_SECRET = "a rotated secret, read on reload"
start = test_serve.start  # the fixture that runs serve and stops it after the test
CHECK_HEAVEN = ("--json", "--ip", "208.20.133.17", "--helo", "mailout17.heaven.net")


def get(server: Server, path: str, headers: str = "", port: int | None = None):
    request = f"GET {path} HTTP/1.1\r\n{headers}\r\n".encode()
    if port is None:
        return server.request(request)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request)
        return read_reply(s)


def test_metrics_listener_and_bearer_token(knot, start):
    mport = free_port()
    server = start(config_text(knot, extra=f'metrics_listen = "127.0.0.1:{mport}"'))
    assert server.check()[0] == 200
    # the metrics address: what Prometheus scrapes, with no secret and nothing else served
    status, headers, body = get(server, "/metrics", port=mport)
    assert status == 200 and headers["content-type"].startswith("text/plain")
    assert b"regcheck_requests_total" in body
    with socket.create_connection(("127.0.0.1", mport), timeout=10) as s:
        s.sendall(b"POST /checkv2 HTTP/1.1\r\n" + HEAVEN + b"Content-Length: 0\r\n\r\n")
        assert read_reply(s)[0] == 404  # no check without the secret, whatever the path
    # the main address: the secret as Password (rspamc -P) or as a Bearer token (Prometheus)
    assert get(server, "/metrics")[0] == 403
    assert get(server, "/metrics", f"Authorization: Bearer {SECRET}\r\n")[0] == 200
    assert get(server, "/metrics", f"Authorization: bearer {SECRET}\r\n")[0] == 200  # RFC 9110 11.1: any case
    assert get(server, "/metrics", "Authorization: Bearer wrong\r\n")[0] == 403
    assert get(server, "/metrics", f"Authorization: Basic {SECRET}\r\n")[0] == 403
    assert server.check(password=None)[0] == 403


@pytest.mark.parametrize("credentials", [False, True], ids=["beside-the-config", "systemd-credential"])
def test_secret_file_is_read_at_start_and_on_reload(knot, tmp_path, credentials, monkeypatch):
    where = tmp_path / "credentials" if credentials else tmp_path
    where.mkdir(exist_ok=True)
    (where / "regcheck.secret").write_text(SECRET + "\n")
    if credentials:  # systemd's LoadCredential= sets this for the service
        monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(where))
    config = config_text(knot).replace(f'secret = "{SECRET}"', 'secret_file = "regcheck.secret"')
    server = Server(tmp_path, config, free_port())
    try:
        assert server.check()[0] == 200
        (where / "regcheck.secret").write_text(NEW_SECRET + "\n")
        os.kill(server.proc.pid, signal.SIGHUP)
        server.wait_until(lambda: server.check(password=NEW_SECRET)[0] == 200, "the new secret")
        assert server.check()[0] == 403
        # a secret file gone bad on reload: refused, the running secret kept
        (where / "regcheck.secret").write_text("short\n")
        os.kill(server.proc.pid, signal.SIGHUP)
        server.wait_until(lambda: "reload refused" in server.log_path.read_text(), "the refusal")
        assert "server.secret_file: the secret in" in server.log_path.read_text()
        assert server.check(password=NEW_SECRET)[0] == 200
    finally:
        server.stop()


def test_listen_localhost(knot, tmp_path):
    server = Server(tmp_path, config_text(knot), free_port(), host="localhost")  # serve --listen localhost:PORT
    try:
        assert json.loads(server.check()[2])["regcheck"]["verdict"]["action"] == "ACCEPT"
    finally:
        server.stop()
    log = server.log_path.read_text()
    assert f" info rspamd-regcheck listening on 127.0.0.1:{server.port}" in log
    assert " info stopping" in log and " warning " not in log  # normal events are not warnings


def test_policy_listener_is_logged_at_start_and_a_changed_one_kept(knot, tmp_path):
    """The start line names every listener; a reload that moves the policy listener says where it
    still listens, as an address (it once printed a Python tuple)."""
    port, other = free_port(), free_port()
    server = Server(tmp_path, config_text(knot) + f'[policy_server]\nlisten = "127.0.0.1:{port}"\n', free_port())
    try:
        assert f"; Postfix policy service on 127.0.0.1:{port}" in server.log_path.read_text()
        server.conf.write_text(server.conf.read_text().replace(f":{port}", f":{other}"))
        os.kill(server.proc.pid, signal.SIGHUP)
        server.wait_until(lambda: "policy_server.listen changed" in server.log_path.read_text(), "the warning")
        assert f"takes a restart; still listening on 127.0.0.1:{port}\n" in server.log_path.read_text()
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    finally:
        server.stop()


def test_nameserver_with_its_port_in_the_config(knot, start):
    """dns.nameservers = ["HOST:PORT"], as --nameserver HOST:PORT: no dns.port needed."""
    config = (
        config_text(knot)
        .replace(f"port = {knot.port}\n", "")
        .replace(f'nameservers = ["{knot.host}"]', f'nameservers = ["{knot.host}:{knot.port}"]')
    )
    assert "port =" not in config
    server = start(config)
    assert json.loads(server.check()[2])["regcheck"]["verdict"]["action"] == "ACCEPT"


def test_ipv6_nameserver_in_brackets_where_it_is_named():
    proc = subprocess.run(
        [sys.executable, "-m", "rspamd_regcheck", "--registry", REG, "--nameserver", "[::1]:9", "check", *CHECK_HEAVEN],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    reply = json.loads(proc.stdout)
    assert reply["symbols"]["REGCHECK_DNSFAIL"]["options"][1].startswith("[::1]:9: ")
    assert "::1" not in reply["regcheck"]["enforce"]["message"]  # and never in SMTP text


def test_workers_do_not_outlive_their_supervisor(knot, start):
    """Were the supervisor killed, its workers must not go on answering with nobody to restart them."""
    import time
    from pathlib import Path

    server = start(config_text(knot, workers=2))
    server.wait_until(lambda: len(server.workers()) == 2, "two workers")
    workers = server.workers()
    server.proc.kill()
    server.proc.wait(timeout=10)

    def gone(pid: int) -> bool:
        try:
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
        except OSError:
            return True

    deadline = time.monotonic() + 30  # they drain first: a check may take its deadline
    while not all(gone(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert all(gone(pid) for pid in workers)
