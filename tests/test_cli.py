"""The command line without DNS: record lint, config check, usage errors, the offline demo."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent


def cli(*args, cwd=None):
    env = dict(os.environ, PYTHONWARNINGS="error")
    return subprocess.run(
        [sys.executable, "-m", "rspamd_regcheck", *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=cwd,
    )


def test_record_lint_valid():
    proc = cli("record", "lint", "v=reg1 svc=S1:A,M2:A,H1:B ip4=208.20.133.16/29 meth=SPF:10,SID:10")
    assert proc.returncode == 0
    assert proc.stdout.startswith("valid record\n")
    assert "S1 rates it A (score 9, weight 5)" in proc.stdout
    assert "QR1: IPv4 clients in 208.20.133.16/29 are authorised" in proc.stdout
    assert "SPF (up to 10 DNS questions), SID (up to 10 DNS questions)" in proc.stdout


def test_record_lint_invalid_names_each_key():
    proc = cli("record", "lint", "svc=S1 ip4=300.1.1.1")
    assert proc.returncode == 1
    assert "svc: rating missing" in proc.stdout
    assert "ip4: bad IPv4 item '300.1.1.1'" in proc.stdout


def test_version():
    proc = cli("--version")
    assert proc.returncode == 0 and proc.stdout.startswith("rspamd-regcheck ")


def test_config_check_prints_effective_config(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[registry]\nzones = ["id.regcheck.test"]\n[ratings]\nenough_weight = 20\n')
    proc = cli("--config", str(cfg), "config", "check")
    assert proc.returncode == 0, proc.stderr
    assert 'zones = ["id.regcheck.test"]' in proc.stdout
    assert "enough_weight = 20.0" in proc.stdout
    # what it prints is itself a valid config with the same values
    again = tmp_path / "again.toml"
    again.write_text(proc.stdout)
    proc2 = cli("--config", str(again), "config", "check")
    assert proc2.returncode == 0, proc2.stderr
    assert proc2.stdout == proc.stdout


@pytest.mark.parametrize(
    "text,key",
    [
        pytest.param("[ratings]\nenough_wieght = 3\n", "ratings.enough_wieght", id="unknown-key"),
        pytest.param("[dns]\ntimeout = 'x'\n", "dns.timeout", id="bad-type"),
        pytest.param("[registry\n", "not valid TOML", id="bad-toml"),
    ],
)
def test_config_check_rejects(tmp_path, text, key):
    cfg = tmp_path / "c.toml"
    cfg.write_text(text)
    proc = cli("--config", str(cfg), "config", "check")
    assert proc.returncode == 1
    assert key in proc.stderr


def test_missing_config_file_is_an_error(tmp_path):
    proc = cli("--config", str(tmp_path / "nope.toml"), "config", "check")
    assert proc.returncode == 1 and "cannot read" in proc.stderr


def test_check_needs_a_registry():
    proc = cli("check", "--ip", "192.0.2.1", "--helo", "mx.heaven.net")
    assert proc.returncode == 2
    assert "no registry zone configured" in proc.stderr


@pytest.mark.parametrize(
    "args,message",
    [
        pytest.param(
            ["--registry", "x.test", "check", "--ip", "300.1.2.3", "--helo", "a.b"], "not an IP address", id="bad-ip"
        ),
        pytest.param(["--registry", "bad zone", "check", "--ip", "192.0.2.1"], "--registry", id="bad-zone"),
        pytest.param(
            ["--registry", "x.test", "--nameserver", "ns.example:53", "check", "--ip", "192.0.2.1"],
            "--nameserver",
            id="nameserver-not-ip",
        ),
        pytest.param(
            ["--registry", "x.test", "check", "--ip", "2001:db8::1%eth0", "--helo", "a.b"],
            "not an IP address written plainly",
            id="scoped-ip",
        ),
        pytest.param(["--registry", "x.test", "check", "--ip", " 192.0.2.1"], "--ip", id="ip-with-space"),
        pytest.param(["--registry", "x.test", "check", "--ip", "[2001:db8::1]"], "--ip", id="ip-in-brackets"),
        pytest.param(["--registry", "x.test", "check", "--ip", ""], "--ip", id="ip-empty"),
        pytest.param(
            ["--registry", "x.test", "--zone-file", "/nonexistent.zone", "check", "--ip", "192.0.2.1"],
            "zone file /nonexistent.zone",
            id="missing-zone-file",
        ),
    ],
)
def test_usage_errors(args, message):
    proc = cli(*args)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_zone_file_without_origin(tmp_path):
    zone = tmp_path / "x.zone"
    zone.write_text('foo IN TXT "svc=S1:A"\n')
    proc = cli("--registry", "x.test", "--zone-file", str(zone), "check", "--ip", "192.0.2.1", "--helo", "a.b")
    assert proc.returncode == 2 and "no $ORIGIN" in proc.stderr


SEED = [
    pytest.param(["--ip", "208.20.133.17", "--helo", "mailout17.heaven.net"], "ACCEPT", id="heaven-pass"),
    pytest.param(["--ip", "208.20.133.32", "--helo", "mailout32.heaven.net"], "REJECT", id="heaven-fail"),
    pytest.param(["--ip", "192.168.0.1", "--helo", "mx1.spammer.tld"], "FILTER", id="spammer"),
    pytest.param(["--ip", "208.20.133.17", "--helo", "mx1.example.co.uk"], "REJECT", id="stop-all"),
    pytest.param(["--ip", "208.20.133.17", "--helo", "JUPITER"], "REJECT", id="jupiter"),
]


@pytest.mark.parametrize("args,action", SEED)
def test_demo_config_offline(args, action):
    """The demo answers from demo/zones/registry.zone: its nameserver is unreachable on purpose."""
    proc = cli(
        "--config", str(ROOT / "demo" / "regcheck.toml"), "--nameserver", "127.0.0.1:9", "check", *args, "--json"
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["regcheck"]["verdict"]["action"] == action


def test_text_output_like_rspamc():
    proc = cli(
        "--config",
        str(ROOT / "demo" / "regcheck.toml"),
        "check",
        "--ip",
        "208.20.133.32",
        "--helo",
        "mailout32.heaven.net",
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "Action: add header"
    assert lines[1] == "Score: 6.00 / 15.00"
    assert "Symbol: REGCHECK_QR1_FAIL (6.00)[heaven.net, 208.20.133.32, ratings=S1:A,M2:A,H1:B]" in lines
    assert any(line.startswith("Verdict: REJECT 550 5.7.1 ") for line in lines)
    assert "Header: X-Regcheck: 208.20.133.32 heaven.net QR1 fail ratings=S1:A,M2:A,H1:B" in lines


@pytest.mark.parametrize(
    "ident,status,text",
    [
        pytest.param("heaven.net", 0, "S1 rates it A", id="found"),
        pytest.param("Heaven.NET.", 0, "heaven.net.id.regcheck.example:", id="normalised"),
        pytest.param("nowhere.example", 1, "no record for nowhere.example", id="none"),
        pytest.param("JUPITER", 2, "", id="not-a-domain"),
    ],
)
def test_record_lint_by_id(ident, status, text):
    proc = cli("--config", str(ROOT / "demo" / "regcheck.toml"), "record", "lint", "--id", ident)
    assert proc.returncode == status, proc.stderr
    assert text in proc.stdout


def test_config_check_quiet_prints_nothing_but_warnings(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[registry]\nzones = ["id.regcheck.test"]\n[dns]\ndeadline = 4.5\n')
    proc = cli("--config", str(cfg), "config", "check", "--quiet")
    assert proc.returncode == 0 and proc.stdout == ""
    assert proc.stderr.startswith("rspamd-regcheck: warning: dns.deadline: 4.5 s is not below")


def test_nameservers_with_ports_and_ipv6_print_in_brackets(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        '[registry]\nzones = ["id.regcheck.test"]\n'
        '[dns]\nnameservers = ["192.0.2.53:5353", "2001:db8::53", "[2001:db8::54]:5300"]\nport = 54\n'
    )
    proc = cli("--config", str(cfg), "config", "check")
    assert proc.returncode == 0, proc.stderr
    assert 'nameservers = ["192.0.2.53:5353", "[2001:db8::53]:54", "[2001:db8::54]:5300"]' in proc.stdout


def test_config_check_takes_a_trusted_validator_with_a_port(tmp_path):
    # HOST:PORT is accepted like a nameserver; it once passed validation and then crashed the resolver
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        '[dns]\ntrusted_validators = ["192.0.2.53:5353", "[2001:DB8::53]:54", "192.0.2.54"]\n'
        '[registry]\nzones = ["id.regcheck.test"]\n'
    )
    proc = cli("--config", str(cfg), "config", "check")
    assert proc.returncode == 0, proc.stderr
    assert 'trusted_validators = ["192.0.2.53:5353", "[2001:db8::53]:54", "192.0.2.54"]' in proc.stdout


def test_config_check_takes_localhost_and_a_secret_file(tmp_path):
    (tmp_path / "secret").write_text("s" * 20 + "\n")
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        '[server]\nlisten = "localhost:11350"\nsecret_file = "secret"\nmetrics_listen = "localhost:9350"\n'
        '[registry]\nzones = ["id.regcheck.test"]\n'
    )
    proc = cli("--config", str(cfg), "config", "check")
    assert proc.returncode == 0, proc.stderr
    assert 'listen = "127.0.0.1:11350"' in proc.stdout and 'metrics_listen = "127.0.0.1:9350"' in proc.stdout
    assert f'secret_file = "{tmp_path / "secret"}"  # read: 20 characters' in proc.stdout
    assert "s" * 20 not in proc.stdout


@pytest.mark.parametrize("rcpt", ["postmaster@dest.test", "<postmaster@dest.test>", " <Postmaster@dest.test> "])
def test_check_rcpt_in_angle_brackets_is_the_same_recipient(rcpt):
    """--rcpt as written in SMTP (<...>) names the same recipient as on HTTP and RSPAMC, so mail to
    postmaster@ is marked, not rejected (the brackets once hid the local part from never_reject)."""
    proc = cli(
        "--config", str(ROOT / "demo" / "regcheck.toml"), "--nameserver", "127.0.0.1:9",
        "check", "--ip", "208.20.133.32", "--helo", "mailout32.heaven.net", "--rcpt", rcpt,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "\nEnforce: add header\n" in proc.stdout, proc.stdout


def test_zone_file_not_utf8_is_one_clear_line(tmp_path):
    """A zone file with a Latin-1 byte: the offset in the file, worded as for the configuration (it
    once printed Python's codec message, with an offset into a read buffer)."""
    zone = tmp_path / "bad.zone"
    zone.write_bytes(b"$ORIGIN id.example.\n" + b"x" * 9000 + b'\nfoo IN TXT "caf\xe9"\n')
    proc = cli("record", "lint", "--zone-file", str(zone))
    assert proc.returncode == 2
    assert proc.stderr == f"rspamd-regcheck: zone file {zone}: not UTF-8 text (byte 0xe9 at offset 9036)\n"
