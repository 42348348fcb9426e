"""The plugin's result cache in a real rspamd 3.4, per process and shared through a real Redis.

Three rspamd instances share one Redis (Debian's redis-server on a private
loopback port): A and B ask a worker that answers from knot, C a worker whose
DNS never answers (every check of its own is REGCHECK_DNSFAIL, max-age 0) and
whose configuration differs in a setting that can change a result (max_queries).  So
a B scan of a sender A just scanned that did not reach the worker came from
Redis; and C, whose worker has another configuration, does not use A's.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time

import pytest
from test_rspamd import regcheck_symbols, worker_config

from rspamd_procs import Proc, free_port, rspamc, start_rspamd, start_worker

CACHE_EXPIRE = 120  # seconds: below the zone's TTL of 300, so the Redis TTL shows the cap


class Redis:
    """redis-server on a free loopback port, in a directory of its own, saving nothing."""

    def __init__(self, base):
        exe = shutil.which("redis-server")
        if exe is None:
            pytest.fail("redis-server not found: ./dev setup installs Debian's redis-server")
        self.port = free_port()
        self.proc = Proc(
            [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(base), "--save", "",
             "--appendonly", "no", "--protected-mode", "yes"],
            base / "redis.log",
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if self.command("PING") == "PONG":
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError((base / "redis.log").read_text())

    def command(self, *args: str) -> str:
        """One command in RESP; the reply's first line without its type byte."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
            s.sendall(b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a.encode()) for a in args))
            return s.recv(65536).split(b"\r\n", 1)[0][1:].decode()

    def cli(self, *args: str) -> str:
        return subprocess.run(
            [shutil.which("redis-cli") or "redis-cli", "-p", str(self.port), "--raw", *args],
            capture_output=True, text=True, check=True, timeout=10,
        ).stdout

    def cached_keys(self) -> list[str]:
        return self.cli("KEYS", "rgc_*").split()

    def get(self, key: str) -> str:
        return self.cli("GET", key)


@pytest.fixture(scope="module")
def setup(knot, tmp_path_factory):
    base = tmp_path_factory.mktemp("plugin-cache")
    redis = Redis(base)
    good_port, dead_port = free_port(), free_port()
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # a DNS server that never answers
    silent.bind(("127.0.0.1", 0))
    good = start_worker(base, "good", worker_config(knot), good_port)
    dead_dns = type(knot)(knot.host, silent.getsockname()[1], knot.zones, knot.conf)
    dead_config = worker_config(dead_dns, "timeout = 0.3\ntries = 1\nmax_queries = 99\n")
    dead = start_worker(base, "dead", dead_config, dead_port)
    procs = [good, dead]
    try:
        ports = {}
        for name, wport in (("a", good_port), ("b", good_port), ("c", dead_port)):
            block = (
                f'regcheck {{ servers = "127.0.0.1:{wport}"; timeout = 1.5s; cache_expire = {CACHE_EXPIRE}s; '
                f'redis {{ servers = "127.0.0.1:{redis.port}"; }} }}'
            )
            proc, ports[name] = start_rspamd(base, name, block, knot.port)
            procs.append(proc)
        eml = base / "message.eml"
        eml.write_bytes(
            b"From: Tom <tway@optsw.com>\r\nTo: Ann <ann@receiver.test>\r\nSubject: hello\r\n"
            b"Message-ID: <1@optsw.com>\r\n\r\nhello\r\n"
        )
        yield {"redis": redis, **ports, "good": good_port, "dead": dead_port, "eml": eml}
    finally:
        for p in procs:
            p.stop()
        redis.proc.stop()
        silent.close()


def checks_answered(port: int) -> int:
    """POST /checkv2 requests the worker answered, from its /metrics."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    found = re.search(rb'regcheck_requests_total\{path="/checkv2",status="200"\} ([\d.e+]+)', data)
    return int(float(found.group(1))) if found else 0


def scan(port, eml, *args):
    result, _ = rspamc(port, eml, *args)
    return regcheck_symbols(result), result.get("milter")


HEAVEN = ["-i", "208.20.133.17", "--helo", "mailout17.heaven.net"]


def test_second_scan_is_answered_by_the_process_cache(setup):
    env = [*HEAVEN, "-F", "a@heaven.net"]
    before = checks_answered(setup["good"])
    first = scan(setup["a"], setup["eml"], *env)
    second = scan(setup["a"], setup["eml"], *env)
    assert "REGCHECK_QR1_ALLOW" in first[0]
    assert second == first  # symbols, weights, options and milter headers alike
    assert checks_answered(setup["good"]) - before == 1


def test_another_mail_from_is_another_key(setup):
    before = checks_answered(setup["good"])
    scan(setup["a"], setup["eml"], *HEAVEN, "-F", "b@heaven.net")
    scan(setup["a"], setup["eml"], *HEAVEN, "-F", "c@heaven.net")
    assert checks_answered(setup["good"]) - before == 2


def test_results_are_shared_through_redis(setup):
    env = [*HEAVEN, "-F", "shared@heaven.net"]
    first = scan(setup["a"], setup["eml"], *env)
    before = checks_answered(setup["good"])
    other_host = scan(setup["b"], setup["eml"], *env)
    assert other_host == first
    assert checks_answered(setup["good"]) == before  # B did not ask: it read A's result
    ttls = [int(setup["redis"].command("TTL", k)) for k in setup["redis"].cached_keys()]
    assert ttls and all(0 < t <= CACHE_EXPIRE for t in ttls)  # capped by cache_expire (the TTL is 300)


def test_dns_failures_are_not_cached(setup):
    env = ["-i", "192.0.2.77", "--helo", "mx.nocache.heaven.net"]
    keys = set(setup["redis"].cached_keys())
    before = checks_answered(setup["dead"])
    first = scan(setup["c"], setup["eml"], *env)
    second = scan(setup["c"], setup["eml"], *env)
    assert "REGCHECK_DNSFAIL" in first[0] and second[0] == first[0]
    assert checks_answered(setup["dead"]) - before == 2
    assert set(setup["redis"].cached_keys()) == keys


def test_redis_entries_of_another_worker_configuration_are_not_used(setup):
    """C's worker has another configuration than A's: once C knows its own (from any reply), what
    A kept in Redis is not C's to use, and C asks its worker."""
    scan(setup["c"], setup["eml"], "-i", "192.0.2.78", "--helo", "mx.learn.heaven.net")
    env = [*HEAVEN, "-F", "not-shared@heaven.net"]
    assert "REGCHECK_QR1_ALLOW" in scan(setup["a"], setup["eml"], *env)[0]
    before = checks_answered(setup["dead"])
    assert "REGCHECK_DNSFAIL" in scan(setup["c"], setup["eml"], *env)[0]
    assert checks_answered(setup["dead"]) - before == 1


def test_redis_holds_prepared_symbols_not_the_reply(setup):
    scan(setup["a"], setup["eml"], *HEAVEN, "-F", "look@heaven.net")
    values = [setup["redis"].get(k) for k in setup["redis"].cached_keys()]
    assert values and all('"name":"REGCHECK_' in v for v in values)
    assert not any("description" in v or "metric_score" in v for v in values)


def test_redis_down_means_asking_the_worker(knot, setup, tmp_path):
    """Redis configured but not listening: every scan is still answered, by the worker."""
    block = (
        f'regcheck {{ servers = "127.0.0.1:{setup["good"]}"; timeout = 1.5s; cache_size = 0; '
        f'redis {{ servers = "127.0.0.1:{free_port()}"; timeout = 0.5s; }} }}'
    )
    proc, port = start_rspamd(tmp_path, "no-redis", block, knot.port)
    try:
        before = checks_answered(setup["good"])
        for _ in range(2):
            got, _ = scan(port, setup["eml"], *HEAVEN, "-F", "down@heaven.net")
            assert "REGCHECK_QR1_ALLOW" in got and "REGCHECK_FAIL" not in got
        assert checks_answered(setup["good"]) - before == 2
    finally:
        proc.stop()


def message(tmp_path, sender: str):
    path = tmp_path / f"{sender}.eml"
    path.write_bytes(f"From: {sender}\r\nTo: bob@receiver.test\r\nSubject: x\r\n\r\nbody\r\n".encode())
    return path


def test_only_a_result_resting_on_the_pra_is_keyed_on_the_message(setup, tmp_path):
    """QR1 reads no header: another message of the session is answered from the cache.  Sender ID reads
    the PRA: the same PRA is, another one is checked again (and finds another result)."""
    before = checks_answered(setup["good"])
    qr1 = [*HEAVEN, "-F", "pra@heaven.net"]
    first = scan(setup["a"], message(tmp_path, "a@x.example"), *qr1)
    assert scan(setup["a"], message(tmp_path, "b@y.example"), *qr1)[0] == first[0]
    assert checks_answered(setup["good"]) - before == 1
    sid = ["-i", "192.0.2.77", "--helo", "mx.sid.example"]
    failing = scan(setup["a"], message(tmp_path, "alice@fail.sid.example"), *sid)[0]
    again = scan(setup["a"], message(tmp_path, "alice@fail.sid.example"), *sid)[0]
    passing = scan(setup["a"], message(tmp_path, "alice@pass.sid.example"), *sid)[0]
    assert "REGCHECK_SID_FAIL" in failing and again == failing
    assert "REGCHECK_SID_ALLOW" in passing
    assert checks_answered(setup["good"]) - before == 3


def test_enforce_decisions_are_keyed_on_the_recipients_only_when_they_rest_on_them(knot, setup, tmp_path):
    """Enforce mode applies the worker's decision from the cache.  A reject that mail to abuse@
    would turn into add header (the worker's never_reject) is kept per recipients' local parts;
    a decision no recipient can change is kept for the session, whoever the mail is for."""
    port = free_port()
    config = worker_config(knot).replace("[policy]\n", "[policy]\nenforce_no_record = true\n")
    worker = start_worker(tmp_path, "enforcing", config, port)
    block = f'regcheck {{ servers = "127.0.0.1:{port}"; timeout = 1.5s; mode = "enforce"; use_redis = false; }}'
    proc, rport = start_rspamd(tmp_path, "enforce-cache", block, knot.port)

    def action(env, *rcpts):
        result, _ = rspamc(rport, setup["eml"], *env, *[a for r in rcpts for a in ("-r", r)])
        assert "REGCHECK_FAIL" not in result["symbols"]
        return result["action"], result.get("messages", {}).get("smtp_message")

    try:
        nowhere = ["-i", "192.0.2.1", "--helo", "mx.nowhere.example"]
        refused = ("reject", "550 5.7.1 'nowhere.example' is not listed in the sender registry")
        before = checks_answered(port)
        assert action(nowhere, "ann@receiver.test") == refused
        assert action(nowhere, "ANN@other.test") == refused  # the same local part: from the cache
        assert action(nowhere, "ann@receiver.test", "abuse@receiver.test") == ("add header", None)
        assert action(nowhere, "Abuse@receiver.test", "ann@receiver.test") == ("add header", None)  # cached
        assert action(nowhere, "ann@receiver.test") == refused  # each recipients' decision kept apart
        assert checks_answered(port) - before == 2
        before = checks_answered(port)
        assert action(HEAVEN, "ann@receiver.test") == ("no action", None)
        assert action(HEAVEN, "abuse@receiver.test") == ("no action", None)
        assert checks_answered(port) - before == 1
    finally:
        proc.stop()
        worker.stop()


def test_a_worker_reload_drops_what_the_plugin_kept(knot, tmp_path):
    """Kept results rest on the worker's configuration: after a reload (here: the sender's network
    made local, so it is no longer checked) the first reply under the new one drops them, and a
    sender kept a moment ago is asked again instead of being answered from the old decision."""
    port = free_port()
    worker = start_worker(tmp_path, "reloading", worker_config(knot), port)
    block = f'regcheck {{ servers = "127.0.0.1:{port}"; timeout = 1.5s; use_redis = false; }}'
    proc, rport = start_rspamd(tmp_path, "reload-cache", block, knot.port)
    env = [*HEAVEN, "-F", "kept@heaven.net"]
    try:
        before = checks_answered(port)
        first = scan(rport, setup_message(tmp_path), *env)
        assert scan(rport, setup_message(tmp_path), *env) == first and "REGCHECK_QR1_ALLOW" in first[0]
        assert checks_answered(port) - before == 1
        conf = tmp_path / "reloading.toml"
        conf.write_text(conf.read_text().replace("local_networks = []", 'local_networks = ["208.20.133.0/24"]'))
        os.kill(worker.proc.pid, signal.SIGHUP)
        deadline = time.monotonic() + 20
        while not any(line.rstrip().endswith("configuration reloaded")
                      for line in worker.log_path.read_text().splitlines()):
            assert time.monotonic() < deadline, worker.log_path.read_text()
            time.sleep(0.05)
        scan(rport, setup_message(tmp_path), *HEAVEN, "-F", "new@heaven.net")  # a new key: its reply says so
        before = checks_answered(port)
        again = scan(rport, setup_message(tmp_path), *env)
        assert checks_answered(port) - before == 1  # asked again, not answered from the old decision
        assert "REGCHECK_QR1_ALLOW" not in again[0]
    finally:
        proc.stop()
        worker.stop()


def setup_message(tmp_path):
    path = tmp_path / "reload.eml"
    if not path.exists():
        path.write_bytes(b"From: a@heaven.net\r\nTo: ann@receiver.test\r\nSubject: x\r\n\r\nbody\r\n")
    return path


def test_workers_asked_in_turn_with_one_configuration_keep_the_cache(knot, tmp_path):
    """Two workers with the same file on two ports (or hosts), asked round robin: one
    configuration, so no reply drops what the plugin kept (the port once made them differ)."""
    p1, p2 = free_port(), free_port()
    workers = [start_worker(tmp_path, f"w{n}", worker_config(knot), p) for n, p in enumerate((p1, p2))]
    block = f'regcheck {{ servers = "127.0.0.1:{p1},127.0.0.1:{p2}"; timeout = 1.5s; use_redis = false; }}'
    proc, rport = start_rspamd(tmp_path, "round-robin", block, knot.port)
    eml = setup_message(tmp_path)
    env = [*HEAVEN, "-F", "x@heaven.net"]
    try:
        scan(rport, eml, *env)
        for other in ("y1", "y2", "y3"):  # replies from both workers
            scan(rport, eml, *HEAVEN, "-F", f"{other}@heaven.net")
        before = checks_answered(p1) + checks_answered(p2)
        scan(rport, eml, *env)
        assert checks_answered(p1) + checks_answered(p2) == before  # still kept
    finally:
        proc.stop()
        for w in workers:
            w.stop()
