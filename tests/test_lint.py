# ruff: noqa: E501  (spec tables: one case a line)
"""`record lint` for humans: sentences, warnings that do not invalidate, --id by any host name
following IDlevel (against knot), --json, and --zone-file over a whole registry zone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rspamd_regcheck._check import make_resolver
from rspamd_regcheck._lint import find_record, lint, lint_zone
from rspamd_regcheck._loop import run_loop
from rspamd_regcheck.config import Config

ROOT = Path(__file__).parent.parent
ZONES = ROOT / "tests" / "zones"
CFG = Config()


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rspamd_regcheck", *args],
        capture_output=True, text=True, timeout=60, check=False, env=dict(os.environ, PYTHONWARNINGS="error"),
    )  # fmt: skip


WARNINGS = [
    pytest.param("v=reg1 svc=S1:A meth=FOO:3,SPF:10", "meth: FOO is not a method any receiver knows", id="unknown-method"),
    pytest.param("v=reg1 svc=S1:A ip4=10.0.0.1/8", "ip4: 10.0.0.1/8 has host bits set: read as 10.0.0.0/8", id="ip4-host-bits"),
    pytest.param("v=reg1 svc=S1:A ip6=2001:db8::1/32", "ip6: 2001:db8::1/32 has host bits set", id="ip6-host-bits"),
    pytest.param("v=reg1 stop=all svc=S1:A", "stop: stop=all beside ratings", id="stop-beside-ratings"),
    pytest.param("v=reg1 ip4=192.0.2.0/24", "svc: no ratings", id="no-svc"),
    pytest.param("svc=S1:A ip4=192.0.2.0/24", "v: no v=reg1 tag", id="no-version"),
    pytest.param("v=reg1 svcs=S1:A svc=S1:A ip4=192.0.2.0/24", "svcs: not a REG1 key", id="typo-key"),
    pytest.param("v=reg1 svc=S1:A", "meth: no method and no netblocks", id="nothing-to-run"),
    pytest.param("v=reg1 IDlevel=3 svc=S1:A ip4=192.0.2.0/24", "IDlevel: the other keys apply only", id="idlevel-beside"),
    pytest.param("v=reg1 svc=S1:A meth=SPF:999", "meth: SPF asks the most questions allowed", id="max-queries"),
]  # fmt: skip


@pytest.mark.parametrize("text,warning", WARNINGS)
def test_warnings_do_not_invalidate(text, warning):
    report = lint(text, CFG)
    assert report.valid
    assert any(w.startswith(warning) for w in report.warnings), report.warnings


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("v=reg1 svc=S1:A,M2:A,H1:B ip4=192.0.2.0/24 meth=SPF:10", id="clean"),
        pytest.param("v=reg1 stop=all", id="stop-alone"),
        pytest.param("v=reg1 IDlevel=3", id="idlevel-alone"),
        pytest.param("v=reg1 svc=S1:A ip4=192.0.2.10-20,2.0.0.0/8", id="range-and-network"),
        pytest.param('v=reg1 svc=S1:A meth=SPF:5 spf="v=spf1 -all"', id="method-parameter"),
    ],
)
def test_clean_records_have_no_warnings(text):
    report = lint(text, CFG)
    assert report.valid and report.warnings == ()


MEANING = [
    pytest.param("v=reg1 stop=all", "stop=all: no server may send mail", id="stop"),
    pytest.param("v=reg1 IDlevel=3", "IDlevel=3: the IDs under this name are 3 labels deep", id="idlevel"),
    pytest.param("v=reg1 svc=S1:A,X9:A", "X9 rates it A (not a service trusted here: ignored)", id="untrusted"),
    pytest.param("v=reg1 svc=S1:Q", "S1 rates it Q (no score here for that rating: ignored)", id="unscored"),
    pytest.param("v=reg1 svc=S1:D,M2:D", "ratings: S1 rates it D (score 0, weight 5), M2 rates it D (score 0, weight 5): bad here", id="bad"),
    pytest.param("v=reg1 svc=S1:A ip4=192.0.2.0/24", "a receiver with this configuration runs, for IPv4 clients: QR1; for IPv6 clients: nothing", id="plan-by-family"),
    pytest.param("v=reg1 svc=S1:A meth=SPF:40", "SPF skipped: needs 40 queries, limit 30 (REGCHECK_BUDGET)", id="over-limit"),
    pytest.param("v=reg1 svc=S1:A meth=DKIM:1,CSV:2", "runs CSA, then DKIM, until", id="receiver-order"),
    pytest.param("v=reg1 svc=S1:A,VX:friend.example meth=SPF:1", "vouched for by friend.example", id="vouch"),
    pytest.param('v=reg1 svc=S1:A meth=SID:5 sid="v=spf1 -all"', "SID: the registry's record 'v=spf1 -all' is evaluated", id="sid-param"),
]  # fmt: skip


@pytest.mark.parametrize("text,sentence", MEANING)
def test_meaning(text, sentence):
    report = lint(text, CFG)
    assert report.valid
    assert any(sentence in m for m in report.meaning), report.meaning


def test_meaning_follows_the_receivers_config():
    cfg = Config(method_limits={**CFG.method_limits, **{m: 50 for m in CFG.method_limits}})
    assert not any("skipped" in m for m in lint("v=reg1 svc=S1:A meth=SPF:40", cfg).meaning)


def test_invalid_record_gives_reasons_and_no_meaning():
    report = lint("svc=S1 ip4=300.1.1.1", CFG)
    assert not report.valid and report.meaning == () and report.warnings == ()
    assert [r.split(":")[0] for r in report.reasons] == ["svc", "ip4"]


def test_cli_warning_exit_0_and_printed():
    proc = cli("record", "lint", "v=reg1 svc=S1:A meth=FOO:3,SPF:10")
    assert proc.returncode == 0, proc.stderr
    assert "warning: meth: FOO is not a method any receiver knows: ignored" in proc.stdout
    assert "versioned" not in proc.stdout and "None" not in proc.stdout  # no internal dump


def test_cli_json():
    proc = cli("record", "lint", "--json", "v=reg1 svc=S1:A ip4=10.0.0.1/8")
    assert proc.returncode == 0
    out = json.loads(proc.stdout)
    assert out["valid"] is True and out["reasons"] == []
    assert out["warnings"] == ["ip4: 10.0.0.1/8 has host bits set: read as 10.0.0.0/8"]
    bad = cli("record", "lint", "--json", "svc=S1")
    assert bad.returncode == 1 and json.loads(bad.stdout)["reasons"] == ["svc: rating missing in 'S1'"]


# -- --id: any host name, IDlevel followed, against knot --------------------------------------------


@pytest.mark.knot
@pytest.mark.parametrize(
    "host,asked,decides",
    [
        pytest.param("mailout17.heaven.net", ["heaven.net.id.regcheck.test"], "heaven.net.id.regcheck.test", id="host-to-id"),
        pytest.param("heaven.net", ["heaven.net.id.regcheck.test"], "heaven.net.id.regcheck.test", id="the-id-itself"),
        pytest.param("mx.cust1.hoster.test", ["hoster.test.id.regcheck.test", "cust1.hoster.test.id.regcheck.test"],
                     "cust1.hoster.test.id.regcheck.test", id="idlevel"),
        pytest.param("a.sub.chain.example", ["chain.example.id.regcheck.test", "sub.chain.example.id.regcheck.test"],
                     "sub.chain.example.id.regcheck.test", id="idlevel-once-never-twice"),
        pytest.param("mx.nowhere.example", ["nowhere.example.id.regcheck.test", "nowhere.example.id2.regcheck.test"],
                     None, id="none-in-either-zone"),
    ],
)  # fmt: skip
def test_find_record_as_a_check_does(knot, host, asked, decides):
    cfg = Config(registry_zones=("id.regcheck.test", "id2.regcheck.test"), nameservers=(knot.host,), dns_port=knot.port)

    async def go():
        resolver = make_resolver(cfg)
        try:
            return await find_record(resolver, host, cfg.registry_zones)
        finally:
            resolver.close()

    found = run_loop(go())
    assert [n for n, _ in found.asked] == asked
    assert found.name == decides and found.error is None


@pytest.mark.knot
def test_cli_id_finds_the_registered_id(knot):
    proc = cli("--registry", "id.regcheck.test", "--nameserver", f"{knot.host}:{knot.port}",
               "record", "lint", "--id", "mailout17.heaven.net")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith('heaven.net.id.regcheck.test: "v=reg1 ')
    assert "\nvalid record\n" in proc.stdout


def test_cli_id_dns_failure_is_exit_2():
    proc = cli(
        "--registry", "id.regcheck.test", "--nameserver", "127.0.0.1:9", "record", "lint", "--id", "a.heaven.net"
    )
    assert proc.returncode == 2 and "heaven.net.id.regcheck.test" in proc.stderr


# -- --zone-file: a whole registry zone --------------------------------------------------------------


def test_zone_file_lints_every_record():
    reports = lint_zone(str(ZONES / "id.regcheck.test.zone"), CFG)
    names = [r.name for r in reports]
    assert "heaven.net.id.regcheck.test" in names and len(names) == len(set(names)) > 20
    assert any(not r.valid for r in reports)  # the test zone holds broken records on purpose


def test_cli_zone_file_summary_and_exit(tmp_path):
    good = tmp_path / "good.zone"
    good.write_text(
        "$ORIGIN reg.example.\n$TTL 3600\n@ IN SOA ns1 hostmaster 1 3600 600 86400 300\n@ IN NS ns1\n"
        'ns1 IN A 192.0.2.53\na.example IN TXT "v=reg1 svc=S1:A ip4=192.0.2.0/24"\n'
        'b.example IN TXT "v=reg1 svc=S1:A meth=FOO:1,SPF:5"\n'
        '@ IN TXT "v=spf1 -all"\n_dmarc IN TXT "v=DMARC1; p=reject"\n'  # the zone's own TXT data: not IDs
    )
    proc = cli("record", "lint", "--zone-file", str(good))
    assert proc.returncode == 0, proc.stdout
    assert proc.stdout.rstrip().endswith("2 records: 0 invalid, 1 with warnings")
    bad = tmp_path / "bad.zone"
    bad.write_text(good.read_text() + 'c.example IN TXT "svc=S1"\n')
    proc = cli("record", "lint", "--zone-file", str(bad), "--json")
    assert proc.returncode == 1
    assert [r["valid"] for r in json.loads(proc.stdout)] == [True, True, False]


@pytest.mark.knot
def test_cli_id_json_follows_idlevel(knot):
    proc = cli("--registry", "id.regcheck.test", "--nameserver", f"{knot.host}:{knot.port}",
               "record", "lint", "--json", "--id", "mx.cust1.hoster.test")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert [a["name"] for a in out["asked"]] == ["hoster.test.id.regcheck.test", "cust1.hoster.test.id.regcheck.test"]
    assert out["error"] is None and out["record"]["valid"] is True
