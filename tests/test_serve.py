"""Operating the worker with real processes: supervisor, signals, metrics, secret, limits."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rspamd_regcheck import Cache, Resolver, Transport
from rspamd_regcheck._wire import RType

from conftest import free_port
from helpers import children, read_reply

REG = "id.regcheck.test"
SECRET = "correct horse battery staple"
HEAVEN = b"IP: 208.20.133.17\r\nHelo: mailout17.heaven.net\r\n"


class Server:
    """`rspamd-regcheck serve` in its own process group, with helpers to poke it."""

    def __init__(self, base: Path, config: str, port: int, host: str | None = "127.0.0.1"):
        """*host* None: no --listen, the file's server.listen (at *port*) is used, as under systemd."""
        self.base = base
        self.conf = base / "regcheck.toml"
        self.conf.write_text(config)
        self.port = port
        self.log_path = base / "serve.log"
        self.log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "rspamd_regcheck",
                "--config",
                str(self.conf),
                "serve",
                *(["--listen", f"{host}:{port}"] if host is not None else []),
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.wait_until(lambda: len(self.workers()) >= 1 and self.ping(), "the worker to answer")

    def wait_until(self, ok, what, timeout=20.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"serve exited ({self.proc.returncode}): {self.log_path.read_text()}")
            if ok():
                return
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}: {self.log_path.read_text()[-3000:]}")

    def workers(self) -> list[int]:
        return children(self.proc.pid)

    def listeners(self) -> int:
        """Listening TCP sockets on our port (one per ready worker: SO_REUSEPORT)."""
        count = 0
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == self.port:
                count += 1
        return count

    def request(self, data: bytes, timeout=10.0):
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as s:
            s.sendall(data)
            return read_reply(s)

    def ping(self) -> bool:
        try:
            return self.request(b"GET /ping HTTP/1.1\r\n\r\n", timeout=1.0)[0] == 200
        except OSError:
            return False

    def check(self, headers: bytes = HEAVEN, password: str | None = SECRET):
        extra = f"Password: {password}\r\n".encode() if password is not None else b""
        return self.request(b"POST /checkv2 HTTP/1.1\r\n" + headers + extra + b"Content-Length: 0\r\n\r\n")

    def metrics(self) -> str:
        status, _, body = self.request(f"GET /metrics HTTP/1.1\r\nPassword: {SECRET}\r\n\r\n".encode())
        assert status == 200
        return body.decode()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def config_text(knot, workers=1, extra="", zones=REG, dns_port=None):
    return (
        f'[server]\nworkers = {workers}\nsecret = "{SECRET}"\nrequest_timeout = 2.0\n{extra}\n'
        f'[registry]\nzones = ["{zones}"]\n'
        f'[dns]\nnameservers = ["{knot.host}"]\nport = {dns_port or knot.port}\n'
        '[policy]\nlocal_networks = []\n[log]\nlevel = "info"\n'
    )


@pytest.fixture
def start(tmp_path):
    servers = []

    def make(config: str) -> Server:
        server = Server(tmp_path, config, free_port())
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


def metric(text: str, name: str, labels: str = "") -> float:
    m = re.search(rf"^{re.escape(name)}{re.escape(labels)} (\S+)$", text, re.MULTILINE)
    return float(m.group(1)) if m else 0.0


# -- processes -------------------------------------------------------------------------------


def test_killed_worker_is_replaced_and_serves(knot, start):
    server = start(config_text(knot, workers=2))
    server.wait_until(lambda: len(server.workers()) == 2 and server.listeners() == 2, "two listening workers")
    victim = server.workers()[0]
    os.kill(victim, signal.SIGKILL)
    server.wait_until(lambda: victim not in server.workers() and server.listeners() == 2, "a listening replacement")
    assert len(server.workers()) == 2
    for _ in range(6):  # new connections reach both workers (SO_REUSEPORT)
        assert server.check()[0] == 200
    assert f"worker {victim} died (signal SIGKILL)" in server.log_path.read_text()


def test_metrics_add_up_across_workers(knot, start):
    server = start(config_text(knot, workers=2))
    server.wait_until(lambda: len(server.workers()) == 2 and server.listeners() == 2, "two listening workers")
    for _ in range(30):
        assert server.check()[0] == 200
    # workers hand their counts over at least once a second; their log lines at most 0.25 s late
    server.wait_until(
        lambda: (
            metric(server.metrics(), "regcheck_checks_total", '{protocol="http",verdict="ACCEPT"}') == 30
            and server.log_path.read_text().count("event=check") == 30
        ),
        "the counts and the log lines",
        timeout=5,
    )
    pids = set(re.findall(r"rspamd_regcheck\.check pid=(\d+)", server.log_path.read_text()))
    assert len(pids) == 2, "both workers answered checks"
    for _ in range(6):  # every scrape, whichever worker answers it, sees all 30
        text = server.metrics()
        assert metric(text, "regcheck_checks_total", '{protocol="http",verdict="ACCEPT"}') == 30
        assert metric(text, "regcheck_requests_total", '{path="/checkv2",status="200"}') == 30
        assert metric(text, "regcheck_symbols_total", '{symbol="REGCHECK_QR1_ALLOW"}') == 30
        assert metric(text, "regcheck_check_seconds_count", '{protocol="http"}') == 30
        assert metric(text, "regcheck_dns_total", '{event="question"}') >= 2  # one per worker, then cached
        assert metric(text, "regcheck_dns_total", '{event="result_reused"}') >= 28  # same envelope: reused


def test_sighup_reloads_a_good_config_and_keeps_the_old_on_a_bad_one(knot, start):
    server = start(config_text(knot))
    assert json.loads(server.check()[2])["regcheck"]["verdict"]["action"] == "ACCEPT"
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as kept:  # an open keep-alive connection
        kept.sendall(b"GET /ping HTTP/1.1\r\n\r\n")
        assert read_reply(kept)[0] == 200
        # a good new config: the second registry zone first (it says stop=all for heaven.net)
        server.conf.write_text(config_text(knot, zones=f'id2.regcheck.test", "{REG}'))
        os.kill(server.proc.pid, signal.SIGHUP)
        server.wait_until(lambda: "configuration reloaded" in server.log_path.read_text(), "the reload")
        server.wait_until(
            lambda: json.loads(server.check()[2])["regcheck"]["verdict"]["action"] == "REJECT", "the new zones"
        )
        kept.sendall(b"GET /ping HTTP/1.1\r\n\r\n")  # the connection survived the reload
        assert read_reply(kept)[0] == 200
    # a bad one: logged, the running configuration kept
    server.conf.write_text("[dns]\ntimeout = 'soon'\n")
    os.kill(server.proc.pid, signal.SIGHUP)
    server.wait_until(lambda: "reload refused" in server.log_path.read_text(), "the refusal")
    assert "dns.timeout: expected a number" in server.log_path.read_text()
    assert json.loads(server.check()[2])["regcheck"]["verdict"]["action"] == "REJECT"


def test_sigterm_drains_running_checks_then_exits(knot, start):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        config = config_text(knot, dns_port=silent.getsockname()[1]).replace(
            "[dns]\n", "[dns]\ntimeout = 1.5\ndeadline = 1.5\n"
        )
        server = start(config)
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
            s.sendall(
                b"POST /checkv2 HTTP/1.1\r\n"
                + HEAVEN
                + f"Password: {SECRET}\r\n".encode()
                + b"Content-Length: 0\r\n\r\n"
            )
            time.sleep(0.3)  # the check is waiting for DNS now
            server.proc.send_signal(signal.SIGTERM)
            status, headers, body = read_reply(s)
        assert status == 200 and headers["connection"] == "close"
        assert json.loads(body)["regcheck"]["verdict"]["action"] == "TEMPFAIL"  # answered, by its deadline
        assert server.proc.wait(timeout=15) == 0
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", server.port), timeout=1).close()


# -- exposure --------------------------------------------------------------------------------


def test_password(knot, start):
    server = start(config_text(knot))
    status, _, body = server.check(password=None)
    assert status == 403 and "Password" in json.loads(body)["error"]
    assert server.check(password="wrong")[0] == 403
    assert server.check(password=SECRET[:-1])[0] == 403
    assert server.check()[0] == 200
    assert server.request(b"GET /metrics HTTP/1.1\r\n\r\n")[0] == 403
    assert server.ping()  # health checks need no secret


@pytest.mark.parametrize(
    "listen,config,message",
    [
        pytest.param(
            "0.0.0.0",
            "",
            "server.secret: not set, and server.listen (0.0.0.0:",
            id="no-secret-beyond-loopback",
        ),
        pytest.param(
            "127.0.0.1", '[server]\nsecret = "short"\n', "server.secret: use at least 16 characters", id="short-secret"
        ),
    ],
)
def test_refuses_to_start(tmp_path, listen, config, message):
    conf = tmp_path / "c.toml"
    conf.write_text(config + '[registry]\nzones = ["x.test"]\n')
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "rspamd_regcheck",
            "--config",
            str(conf),
            "serve",
            "--listen",
            f"{listen}:{free_port()}",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode in (1, 2) and message in proc.stderr


def test_address_in_use(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = subprocess.run(
            [sys.executable, "-m", "rspamd_regcheck", "--registry", "x.test", "serve", "--listen", f"127.0.0.1:{port}"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    assert proc.returncode == 2 and "cannot listen on 127.0.0.1" in proc.stderr


# -- limits ----------------------------------------------------------------------------------


def test_connection_limit(knot, start):
    server = start(config_text(knot, extra="max_connections = 2"))
    a = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    b = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    try:
        time.sleep(0.2)
        status, _, body = server.request(b"GET /ping HTTP/1.1\r\n\r\n")
        assert status == 503 and "too many connections" in json.loads(body)["error"]
    finally:
        a.close(), b.close()
    server.wait_until(server.ping, "a free slot again")


def test_idle_connection_is_closed(knot, start):
    server = start(config_text(knot, extra="idle_timeout = 0.5"))
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(b"GET /ping HTTP/1.1\r\n\r\n")
        assert read_reply(s)[0] == 200
        started = time.monotonic()
        assert s.recv(10) == b""
        assert time.monotonic() - started < 0.5 * 6


def test_header_bytes_limit(knot, start):
    server = start(config_text(knot, extra="max_header_bytes = 2048"))
    status, _, _ = server.request(b"POST /checkv2 HTTP/1.1\r\nX-Pad: " + b"p" * 3000 + b"\r\n\r\n")
    assert status == 431


def test_dns_questions_in_flight_are_capped():
    """With max_inflight = 1, a second question waits for the first: the server sees one at a time."""

    async def go():
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
            silent.bind(("127.0.0.1", 0))
            silent.setblocking(False)
            transport = Transport([("127.0.0.1", silent.getsockname()[1])], timeout=0.6, tries=1)
            resolver = Resolver(transport, Cache(), max_inflight=1)
            tasks = [asyncio.ensure_future(resolver.query(f"q{i}.example", RType.TXT)) for i in range(3)]
            await asyncio.sleep(0.3)
            seen = 0
            while True:
                try:
                    silent.recv(512)
                    seen += 1
                except BlockingIOError:
                    break
            await asyncio.gather(*tasks)
            resolver.close()
            return seen

    assert asyncio.run(go()) == 1
