"""One validation path: `config check`, `serve` at start and `serve` on SIGHUP judge a file alike.

Every bad file below is refused by all three with the same one line naming
the key (never a traceback); on SIGHUP the supervisor lives on, its workers
keep their pids and the running configuration keeps answering.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from test_serve import REG, SECRET, Server, config_text

from rspamd_regcheck import Config
from rspamd_regcheck._validate import check_config
from rspamd_regcheck.config import config_from_mapping
from rspamd_regcheck.errors import ConfigError

from conftest import free_port

SECRET_LINE = f'secret = "{SECRET}"\n'


def _replace(old: str, new: str):
    def edit(good: str) -> bytes:
        assert old in good
        return good.replace(old, new, 1).encode()

    return edit


def _append(text: str):
    return lambda good: (good + text).encode()


# (how to spoil the good file, what the one line says); None: the file is deleted
BAD_FILES = [
    pytest.param(lambda good: b"\xff\xfe[server]\n", "not UTF-8 text (byte 0xff at offset 0)", id="not-utf8"),
    pytest.param(_append("[registry\n"), "not valid TOML", id="toml-syntax"),
    pytest.param(lambda good: b"a = " + b"[" * 5000, "nested too deeply", id="nested-too-deeply"),
    pytest.param(None, "cannot read: No such file or directory", id="missing-file"),
    pytest.param(lambda good: b"#" * (1024 * 1024 + 1), "larger than 1048576 bytes", id="too-large"),
    pytest.param(
        _replace('zones = ["id.regcheck.test"]', "zones = []"), "registry.zones: no registry zone", id="no-zone"
    ),
    pytest.param(
        _replace(SECRET_LINE, ""), "server.secret: not set, and server.listen", id="no-secret-beyond-loopback"
    ),
    pytest.param(_replace("[dns]\n", '[dns]\nzone_files = ["nope.zone"]\n'), "nope.zone", id="missing-zone-file"),
    pytest.param(
        _replace(SECRET_LINE, 'secret_file = "nope.secret"\n'), "server.secret_file: cannot read", id="secret-file"
    ),
    pytest.param(
        _append("[ratings]\nenough_weight = -1\n"), "ratings.enough_weight: -1 is below 0", id="enough-weight"
    ),
    pytest.param(
        _append("[ratings]\nreject_below = 100\n"), "ratings.reject_below: 100 is above every", id="reject-below"
    ),
    pytest.param(_append("[services]\n"), "services: no rating service", id="no-services"),
    pytest.param(_append("[methods]\norder = []\n"), "methods.order: empty", id="no-methods"),
    pytest.param(
        _append("[policy_server]\nnever_reject = []\n"),
        "policy_server.never_reject: set policy.never_reject instead",
        id="enforce-key-under-policy-server",
    ),
    pytest.param(_replace("[dns]\n", "[dns]\ntimeout = 'soon'\n"), "dns.timeout: expected a number", id="bad-value"),
]


def good_config(knot, port: int) -> str:
    """A file serve runs with: listening beyond loopback (with the secret) on *port*."""
    return config_text(knot, extra=f'listen = "0.0.0.0:{port}"')


def write(path: Path, spoil, good: str) -> None:
    if spoil is None:
        path.unlink(missing_ok=True)
    else:
        path.write_bytes(spoil(good))


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rspamd_regcheck", *args], capture_output=True, text=True, timeout=60, check=False
    )


@pytest.mark.parametrize("spoil,message", BAD_FILES)
def test_config_check_and_serve_refuse_alike(knot, tmp_path, spoil, message):
    conf = tmp_path / "regcheck.toml"
    write(conf, spoil, good_config(knot, free_port()))
    checked = run("--config", str(conf), "config", "check")
    served = run("--config", str(conf), "serve")  # listens on the file's address, as under systemd
    assert checked.returncode == 1 and served.returncode == 2
    for proc in (checked, served):
        assert proc.stdout == "" and "Traceback" not in proc.stderr
        (line,) = proc.stderr.splitlines()
        assert message in line
    assert checked.stderr == served.stderr  # the same judgement, the same words


def test_config_check_passes_what_serve_runs_with(knot, tmp_path):
    conf = tmp_path / "regcheck.toml"
    conf.write_text(good_config(knot, free_port()))
    assert run("--config", str(conf), "config", "check", "--quiet").stdout == ""
    assert run("--config", str(conf), "config", "check").returncode == 0


@pytest.fixture(scope="module")
def running(knot, tmp_path_factory):
    """One serve on 0.0.0.0 (so a missing secret matters), reloaded with every bad file in turn."""
    base = tmp_path_factory.mktemp("reload")
    port = free_port()
    server = Server(base, good_config(knot, port), port, host="0.0.0.0")
    yield server
    server.stop()


@pytest.mark.parametrize("spoil,message", BAD_FILES)
def test_a_bad_reload_keeps_the_supervisor_and_the_running_config(running, knot, spoil, message):
    good = good_config(knot, running.port)
    workers = running.workers()
    refusals = running.log_path.read_text().count("reload refused")
    write(running.conf, spoil, good)
    os.kill(running.proc.pid, signal.SIGHUP)
    running.wait_until(lambda: running.log_path.read_text().count("reload refused") > refusals, "the refusal")
    last = [line for line in running.log_path.read_text().splitlines() if "reload refused" in line][-1]
    assert " error " in last and message in last
    assert "Traceback" not in running.log_path.read_text()
    assert running.proc.poll() is None and running.workers() == workers  # nobody died, nobody orphaned
    status, _, body = running.check()
    assert status == 200 and json.loads(body)["regcheck"]["verdict"]["action"] == "ACCEPT"
    running.conf.write_text(good)


def test_normal_events_are_info_and_warnings_are_warnings(running, knot):
    good = good_config(knot, running.port)
    running.conf.write_text(good.replace("[dns]\n", "[dns]\ndeadline = 5.0\n"))
    os.kill(running.proc.pid, signal.SIGHUP)
    running.wait_until(lambda: "configuration reloaded" in running.log_path.read_text(), "the reload")
    log = running.log_path.read_text()
    assert " info rspamd-regcheck listening on 0.0.0.0:" in log
    assert " info configuration reloaded" in log
    assert " warning dns.deadline: 5 s is not below the plugin's default timeout" in log
    running.conf.write_text(good)


# -- the judgement itself, without processes ---------------------------------------------------

BAD_CONFIGS = [
    pytest.param({}, "registry.zones", id="no-zone"),
    pytest.param({"server": {"listen": "192.0.2.1:11340"}}, "server.secret", id="no-secret-beyond-loopback"),
    pytest.param({"server": {"metrics_listen": "0.0.0.0:9000"}}, "server.metrics_listen", id="metrics-beyond-loopback"),
    pytest.param({"server": {"metrics_listen": "127.0.0.1:11340"}}, "server.metrics_listen", id="metrics-same-port"),
    pytest.param({"policy_server": {"listen": "127.0.0.1:11340"}}, "policy_server.listen", id="policy-http-port"),
    pytest.param(
        {"server": {"metrics_listen": "127.0.0.1:9000"}, "policy_server": {"listen": "127.0.0.1:9000"}},
        "policy_server.listen",
        id="policy-metrics-port",
    ),
    pytest.param({"services": {}}, "services", id="no-services"),
    pytest.param({"ratings": {"enough_weight": -0.5}}, "ratings.enough_weight", id="enough-weight"),
    pytest.param({"ratings": {"reject_below": 9.5}}, "ratings.reject_below", id="reject-below"),
    pytest.param({"ratings": {"min_allowed": 10}}, "ratings.min_allowed", id="min-allowed"),
    pytest.param({"methods": {"order": []}}, "methods.order", id="no-methods"),
]


@pytest.mark.parametrize("data,key", BAD_CONFIGS)
def test_check_config_names_the_key(data, key):
    data = {"registry": {"zones": ["r.example"]}, **data} if data else data
    with pytest.raises(ConfigError) as info:
        check_config(config_from_mapping(data))
    assert info.value.key == key


def test_the_defaults_with_a_zone_pass_without_warnings():
    assert check_config(Config(registry_zones=("r.example",))) == ()


def test_the_deadline_warning_names_both_settings():
    (warning,) = check_config(Config(registry_zones=("r.example",), deadline=4.0))
    assert warning.startswith("dns.deadline:") and "plugin's default timeout" in warning


def test_a_reload_cannot_drop_the_secret_by_moving_listen_to_loopback(knot, tmp_path):
    """The file now says loopback, but the workers listen on 0.0.0.0 until a restart: still refused."""
    port = free_port()
    good = good_config(knot, port)
    server = Server(tmp_path, good, port, host=None)  # listening where the file says, as under systemd
    try:
        server.conf.write_text(good.replace(SECRET_LINE, "").replace("0.0.0.0:", "127.0.0.1:"))
        os.kill(server.proc.pid, signal.SIGHUP)
        server.wait_until(lambda: "reload refused" in server.log_path.read_text(), "the refusal")
        assert "server.secret: not set, and 0.0.0.0 is beyond loopback" in server.log_path.read_text()
        assert server.check(password=None)[0] == 403
    finally:
        server.stop()


def test_workers_run_what_the_supervisor_accepted(running, knot):
    """A worker reloads the configuration the supervisor judged, not whatever the file holds now."""
    good = good_config(knot, running.port)
    running.conf.write_text(good.replace(f'zones = ["{REG}"]', f'zones = ["id2.regcheck.test", "{REG}"]'))
    os.kill(running.proc.pid, signal.SIGHUP)
    running.wait_until(lambda: json.loads(running.check()[2])["regcheck"]["verdict"]["action"] == "REJECT", "reload")
    running.conf.write_bytes(b"\xff\xfe[server]\n")  # spoilt after the supervisor's judgement
    (worker,) = running.workers()
    reloads = running.log_path.read_text().count("configuration reloaded")
    os.kill(worker, signal.SIGHUP)  # as a stray signal would
    running.wait_until(lambda: running.log_path.read_text().count("configuration reloaded") > reloads, "the reload")
    assert "reload failed" not in running.log_path.read_text()
    assert json.loads(running.check()[2])["regcheck"]["verdict"]["action"] == "REJECT"  # still the accepted one
    running.conf.write_text(good)
    os.kill(running.proc.pid, signal.SIGHUP)
    running.wait_until(lambda: json.loads(running.check()[2])["regcheck"]["verdict"]["action"] == "ACCEPT", "reload")
