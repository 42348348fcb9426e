"""Checks against a real knot server serving tests/zones/ (the seed's examples and more)."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from rspamd_regcheck import Action, Checker, Config, Envelope, build_reply
from rspamd_regcheck.config import config_from_mapping

ZONES = Path(__file__).parent / "zones"
REG = "id.regcheck.test"
REG2 = "id2.regcheck.test"


@pytest.fixture(scope="module")
def config(knot) -> Config:
    return replace(
        config_from_mapping({"policy": {"local_networks": []}}),
        registry_zones=(REG,),
        nameservers=(knot.host,),
        dns_port=knot.port,
        dns_timeout=2.0,
    )


def run_check(config, ip, helo, **kw):
    env = Envelope(ip=ipaddress.ip_address(ip) if ip else None, helo=helo, **kw)

    async def once():
        checker = Checker(config)
        try:
            return await checker.check(env)
        finally:
            checker.close()

    return asyncio.run(once())


HEAVEN_RATINGS = "ratings=S1:A,M2:A,H1:B"
CASES = [
    pytest.param(
        "208.20.133.17",
        "mailout17.heaven.net",
        Action.ACCEPT,
        {
            "REGCHECK_QR1_ALLOW": ["heaven.net", "208.20.133.16/29"],
            "REGCHECK_RATING_HIGH": ["heaven.net", HEAVEN_RATINGS],
        },
        "208.20.133.17 heaven.net QR1 pass ratings=S1:A,M2:A,H1:B",
        id="seed-heaven-qr1-pass",
    ),
    pytest.param(
        "208.20.133.32",
        "mailout32.heaven.net",
        Action.REJECT,
        {"REGCHECK_QR1_FAIL": ["heaven.net", "208.20.133.32", HEAVEN_RATINGS]},
        "208.20.133.32 heaven.net QR1 fail ratings=S1:A,M2:A,H1:B",
        id="seed-heaven-qr1-fail",
    ),
    pytest.param(
        "192.168.0.1",
        "mx1.spammer.tld",
        Action.FILTER,
        {
            "REGCHECK_QR1_ALLOW": ["spammer.tld", "192.168.0.0/16"],
            "REGCHECK_RATING_LOW": ["spammer.tld", "ratings=S1:C,M2:C"],
        },
        "192.168.0.1 spammer.tld QR1 pass ratings=S1:C,M2:C",
        id="seed-spammer-low-ratings",
    ),
    pytest.param(
        "208.20.133.17",
        "mx1.example.co.uk",
        Action.REJECT,
        {"REGCHECK_STOP": ["example.co.uk"]},
        None,
        id="seed-stop-all",
    ),
    pytest.param(
        "208.20.133.17",
        "JUPITER",
        Action.REJECT,
        {"REGCHECK_BAD_HELO": ["bare-word", "JUPITER"]},
        None,
        id="seed-bad-helo",
    ),
    pytest.param(
        "192.0.2.1",
        "mx.nowhere.example",
        Action.REJECT,
        {"REGCHECK_NO_RECORD": ["nowhere.example"]},
        None,
        id="no-record",
    ),
    pytest.param(
        "192.0.2.1",
        "mx.broken.example",
        Action.TEMPFAIL,
        {"REGCHECK_RECORD_PERMFAIL": ["broken.example", "svc: given twice"]},
        None,
        id="invalid-record",
    ),
    pytest.param(
        "192.0.2.1",
        "mx.twotags.example",
        Action.TEMPFAIL,
        {"REGCHECK_RECORD_PERMFAIL": ["twotags.example", "v: several TXT records start with v=reg1"]},
        None,
        id="two-tagged-records",
    ),
    pytest.param(
        "192.0.2.1",
        "mx.untrusted.example",
        Action.FILTER,
        {"REGCHECK_NO_RATINGS": ["untrusted.example"]},
        "192.0.2.1 untrusted.example NONE unverified ratings=",
        id="untrusted-only-ratings",
    ),
    pytest.param(
        "192.0.2.1",
        "mx.lowrated.example",
        Action.REJECT,
        {"REGCHECK_RATING_BAD": ["lowrated.example", "ratings=S1:D,M2:C"]},
        None,
        id="bad-ratings",
    ),
    pytest.param(
        "2001:db8:6::25",
        "mx.six.example",
        Action.ACCEPT,
        {
            "REGCHECK_QR1_ALLOW": ["six.example", "2001:db8:6::/48"],
            "REGCHECK_RATING_HIGH": ["six.example", HEAVEN_RATINGS],
        },
        "2001:db8:6::25 six.example QR1 pass ratings=S1:A,M2:A,H1:B",
        id="ipv6-client-pass",
    ),
    pytest.param(
        "2001:db8:99::25",
        "mx.six.example",
        Action.REJECT,
        {"REGCHECK_QR1_FAIL": ["six.example", "2001:db8:99::25", HEAVEN_RATINGS]},
        "2001:db8:99::25 six.example QR1 fail ratings=S1:A,M2:A,H1:B",
        id="ipv6-client-fail",
    ),
    pytest.param(
        "208.20.133.18",
        "MAILOUT18.Heaven.NET.",
        Action.ACCEPT,
        {
            "REGCHECK_QR1_ALLOW": ["heaven.net", "208.20.133.16/29"],
            "REGCHECK_RATING_HIGH": ["heaven.net", HEAVEN_RATINGS],
        },
        "208.20.133.18 heaven.net QR1 pass ratings=S1:A,M2:A,H1:B",
        id="uppercase-helo-trailing-dot",
    ),
    pytest.param(
        "198.51.100.7",
        "mx.Bücher.example",
        Action.ACCEPT,
        {
            "REGCHECK_QR1_ALLOW": ["xn--bcher-kva.example", "198.51.100.0/24"],
            "REGCHECK_RATING_HIGH": ["xn--bcher-kva.example", HEAVEN_RATINGS],
        },
        "198.51.100.7 xn--bcher-kva.example QR1 pass ratings=S1:A,M2:A,H1:B",
        id="idn-helo",
    ),
    pytest.param(
        "203.0.113.5",
        "mx.cust1.hoster.test",
        Action.ACCEPT,
        {
            "REGCHECK_QR1_ALLOW": ["cust1.hoster.test", "203.0.113.0/24"],
            "REGCHECK_RATING_HIGH": ["cust1.hoster.test", HEAVEN_RATINGS],
        },
        "203.0.113.5 cust1.hoster.test QR1 pass ratings=S1:A,M2:A,H1:B",
        id="idlevel-reask",
    ),
    pytest.param(
        "203.0.113.5",
        "mx.cust2.hoster.test",
        Action.REJECT,
        {"REGCHECK_NO_RECORD": ["cust2.hoster.test"]},
        None,
        id="idlevel-reask-no-record",
    ),
    pytest.param(
        "192.0.2.217",
        "mx.range.example",
        Action.ACCEPT,
        {
            "REGCHECK_QR1_ALLOW": ["range.example", "192.0.2.216-218"],
            "REGCHECK_RATING_HIGH": ["range.example", HEAVEN_RATINGS],
        },
        "192.0.2.217 range.example QR1 pass ratings=S1:A,M2:A,H1:B",
        id="last-octet-range",
    ),
    pytest.param(
        "192.0.2.9",
        "mx.withspf.example",
        Action.ACCEPT,
        {
            "REGCHECK_QR1_ALLOW": ["withspf.example", "192.0.2.0/24"],
            "REGCHECK_RATING_HIGH": ["withspf.example", HEAVEN_RATINGS],
        },
        "192.0.2.9 withspf.example QR1 pass ratings=S1:A,M2:A,H1:B",
        id="tagged-record-among-txt",
    ),
    pytest.param(
        "192.0.2.9",
        "mx.split.example",
        Action.ACCEPT,
        {
            "REGCHECK_QR1_ALLOW": ["split.example", "192.0.2.0/24"],
            "REGCHECK_RATING_HIGH": ["split.example", HEAVEN_RATINGS],
        },
        "192.0.2.9 split.example QR1 pass ratings=S1:A,M2:A,H1:B",
        id="split-txt-strings",
    ),
    pytest.param(
        "192.0.2.9",
        "mx.spfonly.example",
        Action.CONTINUE,
        {
            "REGCHECK_SID_NA": [
                "spfonly.example",
                "no PRA: no Resent-Sender, Resent-From, Sender or From header",
                HEAVEN_RATINGS,
            ],
            "REGCHECK_UNVERIFIED": ["spfonly.example", HEAVEN_RATINGS],
        },
        "192.0.2.9 spfonly.example NONE unverified ratings=S1:A,M2:A,H1:B",
        id="sid-without-headers",
    ),
    pytest.param(
        "192.0.2.9",
        "mx.greedy.example",
        Action.CONTINUE,
        {
            "REGCHECK_BUDGET": ["greedy.example", "SPF", "needs 31 queries, limit 30"],
            "REGCHECK_UNVERIFIED": ["greedy.example", HEAVEN_RATINGS],
        },
        "192.0.2.9 greedy.example NONE unverified ratings=S1:A,M2:A,H1:B",
        id="method-over-limit",
    ),
]


@pytest.mark.parametrize("ip,helo,action,symbols,header", CASES)
def test_check_against_knot(config, ip, helo, action, symbols, header):
    result = run_check(config, ip, helo)
    reply = build_reply(result.verdict, config, result.queries)
    assert result.verdict.seed.action is action, result.verdict.seed
    assert reply["regcheck"]["verdict"]["action"] == action.value
    got = {name: sym.get("options", []) for name, sym in reply["symbols"].items()}
    assert got == symbols
    assert reply["milter"]["add_headers"].get("X-Regcheck") == header
    assert reply["milter"]["remove_headers"] == {"X-Regcheck": 0}
    assert result.queries >= (0 if action is Action.REJECT and "BAD_HELO" in str(symbols) else 1)


def test_queries_counted(config):
    assert run_check(config, "208.20.133.17", "mailout17.heaven.net").queries == 1
    assert run_check(config, "203.0.113.5", "mx.cust1.hoster.test").queries == 2  # IDlevel re-ask
    assert run_check(config, "208.20.133.17", "JUPITER").queries == 0


def test_registry_zones_asked_in_order(config):
    both = replace(config, registry_zones=(REG, REG2))
    # heaven.net is in both: the first zone's record wins (the second says stop=all)
    assert run_check(both, "208.20.133.17", "mailout17.heaven.net").verdict.seed.action is Action.ACCEPT
    # fallback.example is only in the second: NXDOMAIN in the first falls through
    result = run_check(both, "192.0.2.1", "mx.fallback.example")
    assert result.verdict.seed.action is Action.ACCEPT
    assert result.queries == 2
    reversed_ = replace(config, registry_zones=(REG2, REG))
    assert run_check(reversed_, "208.20.133.17", "mailout17.heaven.net").verdict.seed.action is Action.REJECT


def test_zone_knot_does_not_serve_is_a_dns_failure(config):
    # knot answers REFUSED for a zone it is not authoritative for
    cfg = replace(config, registry_zones=("not-served.test",))
    result = run_check(cfg, "192.0.2.1", "mx.heaven.net")
    assert result.verdict.seed.action is Action.TEMPFAIL
    assert [s.name for s in result.verdict.symbols] == ["REGCHECK_DNSFAIL"]


def test_dead_server_times_out_within_the_timeout():
    from conftest import free_port

    cfg = Config(
        registry_zones=(REG,), nameservers=("127.0.0.1",), dns_port=free_port(), dns_timeout=0.5, local_networks=()
    )
    # a UDP port with nobody listening: ICMP unreachable or silence, either way a DNS failure
    started = time.monotonic()
    result = run_check(cfg, "192.0.2.1", "mx.heaven.net")
    assert time.monotonic() - started < 0.5 * 6  # generous: the point is that it does not hang
    assert result.verdict.seed.action is Action.TEMPFAIL
    assert result.verdict.symbols[0].name == "REGCHECK_DNSFAIL"


def test_local_and_missing_ips_are_skipped(knot):
    cfg = Config(registry_zones=(REG,), nameservers=(knot.host,), dns_port=knot.port)  # default local networks
    for ip in ("192.168.0.1", "10.1.2.3", "127.0.0.1", "::1", "fe80::1", "::ffff:192.168.0.1", None):
        result = run_check(cfg, ip, "mx1.spammer.tld")
        assert result.verdict.skipped is not None, ip
        assert result.verdict.symbols == () and result.queries == 0
    # documentation ranges are not local
    assert run_check(cfg, "192.0.2.1", "mx.nowhere.example").verdict.skipped is None
    authed = run_check(cfg, "192.0.2.1", "mx.nowhere.example", user="alice")
    assert authed.verdict.skipped == "authenticated session"


# -- the command line, as an admin runs it ---------------------------------------------------


def cli(*args, check=True):
    env = dict(os.environ, PYTHONWARNINGS="error")
    proc = subprocess.run(
        [sys.executable, "-m", "rspamd_regcheck", *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


@pytest.mark.parametrize(
    "ip,helo,action,score",
    [
        pytest.param("208.20.133.17", "mailout17.heaven.net", "ACCEPT", -2.0 - 3.0 * (25 / 3 - 4) / 5, id="pass"),
        pytest.param("208.20.133.32", "mailout32.heaven.net", "REJECT", 6.0, id="fail"),
        pytest.param("208.20.133.17", "JUPITER", "REJECT", 1.5, id="bad-helo"),
    ],
)
def test_cli_json_against_knot(knot, ip, helo, action, score):
    proc = cli("--registry", REG, "--nameserver", knot.nameserver, "check", "--ip", ip, "--helo", helo, "--json")
    reply = json.loads(proc.stdout)
    assert reply["regcheck"]["verdict"]["action"] == action
    assert reply["score"] == pytest.approx(score, abs=1e-3)
    assert set(reply) >= {"is_skipped", "score", "required_score", "action", "symbols", "messages", "milter"}


def test_zone_file_overlay_answers_like_knot(knot, tmp_path):
    """The same zone, once from knot and once from --zone-file with no DNS server at all."""
    dead = "127.0.0.1:9"  # discard port: nothing answers DNS there
    cfg = tmp_path / "c.toml"
    cfg.write_text("[policy]\nlocal_networks = []\n[dns]\ntimeout = 0.5\n")
    for ip, helo in [
        ("208.20.133.17", "mailout17.heaven.net"),
        ("192.168.0.1", "mx1.spammer.tld"),
        ("192.0.2.1", "mx.broken.example"),
        ("192.0.2.1", "mx.nowhere.example"),
        ("203.0.113.5", "mx.cust1.hoster.test"),
    ]:
        common = ("--config", str(cfg), "--registry", REG)
        via_knot = json.loads(
            cli(*common, "--nameserver", knot.nameserver, "check", "--ip", ip, "--helo", helo, "--json").stdout
        )
        via_file = json.loads(
            cli(
                *common,
                "--nameserver",
                dead,
                "--zone-file",
                str(ZONES / f"{REG}.zone"),
                "check",
                "--ip",
                ip,
                "--helo",
                helo,
                "--json",
            ).stdout
        )
        assert via_file == via_knot, helo
        assert via_file["symbols"], helo


def test_zone_file_does_not_answer_other_names(tmp_path):
    """A name outside the file's origin goes to DNS: here a dead server, so a DNS failure."""
    proc = cli(
        "--registry",
        "elsewhere.test",
        "--nameserver",
        "127.0.0.1:9",
        "--zone-file",
        str(ZONES / f"{REG}.zone"),
        "--config",
        str(_timeout_config(tmp_path)),
        "check",
        "--ip",
        "192.0.2.1",
        "--helo",
        "mx.heaven.net",
        "--json",
    )
    reply = json.loads(proc.stdout)
    assert list(reply["symbols"]) == ["REGCHECK_DNSFAIL"]
    assert reply["regcheck"]["verdict"]["action"] == "TEMPFAIL"


def _timeout_config(tmp_path):
    path = tmp_path / "t.toml"
    path.write_text("[dns]\ntimeout = 0.5\n")
    return path


def test_cli_header_file_and_dkim_domain(knot, tmp_path):
    message = tmp_path / "m.eml"
    message.write_bytes(b"From: Alice <alice@fail.sid.example>\r\nSubject: x\r\n\r\nFrom: nobody@pass.sid.example\r\n")
    common = ("--registry", REG, "--nameserver", knot.nameserver)
    proc = cli(
        *common, "check", "--ip", "192.0.2.77", "--helo", "mx.sid.example", "--header-file", str(message), "--json"
    )
    assert "REGCHECK_SID_FAIL" in json.loads(proc.stdout)["symbols"]
    proc = cli(
        *common, "check", "--ip", "192.0.2.1", "--helo", "mx.dkim.example", "--dkim-domain", "dkim.example", "--json"
    )
    assert json.loads(proc.stdout)["regcheck"]["verdict"]["action"] == "ACCEPT"
    missing = cli(
        *common, "check", "--ip", "192.0.2.1", "--helo", "a.b", "--header-file", str(tmp_path / "none"), check=False
    )
    assert missing.returncode == 2 and "--header-file" in missing.stderr
