"""Rating services that answer for themselves, and the registry fallback, against knot.

knot serves DNSWL-, DBL- and VBR-shaped zones (tests/zones/dwl, wl, dbl,
vouch.regcheck.test), a registry for these tests (svcid.regcheck.test) and
senders no registry lists (tests/zones/zz.zone).
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import time

import pytest
from test_knot import run_check

from rspamd_regcheck import Action, Checker, Envelope, _services, build_reply
from rspamd_regcheck.config import config_from_mapping

REG = "svcid.regcheck.test"
SCALE = {"A": 9, "B": 7, "C": 5, "D": 0}
DNSWL_CODES = {"127.0.*.3": "A", "127.0.*.2": "B", "127.0.*.0-127.0.*.1": "C"}
DWL = {"zone": "dwl.regcheck.test", "ask": "id", "ratings": SCALE, "codes": DNSWL_CODES}
IPWL = {"zone": "wl.regcheck.test", "ask": "ip", "ratings": SCALE, "codes": DNSWL_CODES}
DBL = {"zone": "dbl.regcheck.test", "ask": "id", "ratings": {"D": 0}, "codes": {"127.0.1.0/24": "D"}}
VBR = {"ratings": SCALE, "vouchers": [{"domain": "vouch.regcheck.test", "rating": "A"}]}


def make_config(knot, services, fallback="authenticate", base_dir=".", zones=(REG,), **dns):
    data = {
        "registry": {"zones": list(zones), "fallback": fallback},
        "dns": {"nameservers": [knot.host], "port": knot.port, **dns},
        "policy": {"local_networks": []},
        "services": services,
    }
    return config_from_mapping(data, base_dir=base_dir)


def check(config, ip, helo, mail_from=None, headers=()):
    return run_check(config, ip, helo, mail_from=mail_from, headers=tuple(headers))


def symbols(result):
    return {s.name: list(s.options) for s in result.verdict.symbols}


# -- one DNS list at a time: each code, each failure, unlisted ---------------------------------

CODES = [
    # id, service, its table, helo, client, rating used ("" none), option noted
    pytest.param("DWL", DWL, "mx.new.zz", "192.0.2.1", "DWL:A", None, id="dwl-127.0.15.3-high-is-A"),
    pytest.param("DWL", DWL, "mx.med.zz", "192.0.2.1", "DWL:B", None, id="dwl-127.0.5.2-medium-is-B"),
    pytest.param("DWL", DWL, "mx.low.zz", "192.0.2.1", "DWL:C", None, id="dwl-127.0.10.1-low-is-C"),
    pytest.param("DWL", DWL, "mx.none.zz", "192.0.2.1", "DWL:C", None, id="dwl-127.0.3.0-none-is-C"),
    pytest.param("DWL", DWL, "mx.nobody.zz", "192.0.2.1", "", None, id="dwl-unlisted-no-rating"),
    pytest.param("DWL", {**DWL, "unlisted": "C"}, "mx.nobody.zz", "192.0.2.1", "DWL:C", None, id="dwl-unlisted-C"),
    pytest.param("DWL", DWL, "mx.odd.zz", "192.0.2.1", "", None, id="dwl-unknown-code-ignored"),
    pytest.param("DWL", DWL, "mx.refused.zz", "192.0.2.1", "", "DWL:refused 127.0.0.255", id="dwl-refusal-code"),
    pytest.param(
        "DWL",
        {**DWL, "unlisted": "C"},
        "mx.refused.zz",
        "192.0.2.1",
        "",
        "DWL:refused 127.0.0.255",
        id="dwl-refusal-is-not-unlisted",
    ),
    pytest.param(
        "DWL", DWL, "mx.lying.zz", "192.0.2.1", "", "DWL:dnsfail 10.0.0.1 is not a 127/8 code", id="dwl-not-127"
    ),
    pytest.param(
        "DWL",
        {**DWL, "zone": "not-served.test"},
        "mx.new.zz",
        "192.0.2.1",
        "",
        "DWL:dnsfail REFUSED",
        id="dwl-dns-failure",
    ),
    pytest.param("IPWL", IPWL, "mx.nobody.zz", "192.0.2.5", "IPWL:A", None, id="ipwl-by-client-ip-A"),
    pytest.param("IPWL", IPWL, "mx.nobody.zz", "192.0.2.6", "IPWL:C", None, id="ipwl-low-is-C"),
    pytest.param("IPWL", IPWL, "mx.nobody.zz", "2001:db8:7::5", "IPWL:B", None, id="ipwl-ipv6-nibbles"),
    pytest.param("IPWL", IPWL, "mx.nobody.zz", "192.0.2.7", "", "IPWL:refused 127.0.0.255", id="ipwl-refusal-code"),
    pytest.param("DBL", DBL, "mx.spammy.zz", "192.0.2.1", "DBL:D", None, id="dbl-127.0.1.2-spam-is-D"),
    pytest.param("DBL", DBL, "mx.phish.zz", "192.0.2.1", "DBL:D", None, id="dbl-127.0.1.4-phish-is-D"),
    pytest.param("DBL", DBL, "mx.abused.zz", "192.0.2.1", "DBL:D", None, id="dbl-127.0.1.102-abused-is-D"),
    pytest.param(
        "DBL", DBL, "mx.prohibit.zz", "192.0.2.1", "", "DBL:refused 127.0.1.255", id="dbl-127.0.1.255-refusal"
    ),
    pytest.param(
        "DBL",
        DBL,
        "mx.openresolver.zz",
        "192.0.2.1",
        "",
        "DBL:refused 127.255.255.254",
        id="dbl-public-resolver-refusal",
    ),
    pytest.param("DBL", DBL, "mx.new.zz", "192.0.2.1", "", None, id="dbl-unlisted"),
]


@pytest.mark.parametrize("code,service,helo,ip,used,note", CODES)
def test_each_code_and_failure(knot, code, service, helo, ip, used, note):
    result = check(make_config(knot, {code: service}), ip, helo)
    ratings = result.verdict.ratings
    assert ratings is not None
    assert ratings.text == used
    assert ratings.notes == ((note,) if note else ())
    syms = symbols(result)
    assert "REGCHECK_NO_RECORD" not in syms
    if not used:
        # no rating: the seed's "no trusted rating", with the reason and the assumed record said
        assert syms["REGCHECK_NO_RATINGS"] == [helo[3:], *([note] if note else []), "record=assumed"]
        assert result.verdict.seed.action is Action.FILTER


def test_a_d_rating_rejects_before_any_method(knot):
    # DBL lists spammy.zz: whatever the whitelist says, one D is below min_allowed
    result = check(make_config(knot, {"DWL": DWL, "DBL": DBL}), "192.0.2.1", "mx.spammy.zz", "a@spammy.zz")
    assert result.verdict.seed.action is Action.REJECT
    assert symbols(result) == {
        "REGCHECK_RATING_BAD": ["spammy.zz", "ratings=DWL:A,DBL:D", "record=assumed"],
        "REGCHECK_SERVICE_BAD": ["spammy.zz", "DBL:D"],  # the listing itself, whatever the weighing says
    }
    assert result.verdict.methods == ()


def test_a_record_copy_of_a_d_is_not_a_live_listing(knot):
    # the registry's own copy of a bad rating: weighed as the seed did, no REGCHECK_SERVICE_BAD
    services = {"S1": {"ratings": SCALE}, "M2": {"ratings": SCALE}}
    cfg = make_config(knot, services, fallback="none", zones=["id.regcheck.test"])
    result = check(cfg, "192.0.2.1", "mx.lowrated.example")
    assert set(symbols(result)) == {"REGCHECK_RATING_BAD"}


def test_registry_copy_is_ignored_once_the_service_answers(knot):
    # heaven.net's record says S1:A; S1 now answers for itself (B), and M2, H1 are read from the record
    services = {
        "S1": {**DWL},
        "M2": {"ratings": SCALE},
        "H1": {"ratings": SCALE},
    }
    result = check(make_config(knot, services, fallback="none"), "208.20.133.17", "mailout17.heaven.net")
    assert result.verdict.ratings is not None
    assert result.verdict.ratings.text == "S1:B,M2:A,H1:B"
    assert result.verdict.seed.action is Action.ACCEPT


def test_services_unused_without_a_record_when_fallback_is_off(knot):
    result = check(make_config(knot, {"DWL": DWL}, fallback="none"), "192.0.2.1", "mx.new.zz")
    assert symbols(result) == {"REGCHECK_NO_RECORD": ["new.zz"]}
    assert result.verdict.seed.action is Action.REJECT


# -- VBR ------------------------------------------------------------------------------------------


def vbr_info(md, mc, mv):
    return ("VBR-Info", f"md={md}; mc={mc}; mv={mv}")


VBR_CASES = [
    pytest.param("mx.new.zz", [vbr_info("new.zz", "all", "vouch.regcheck.test")], "VBR:A", id="header-all"),
    pytest.param(
        "mx.listy.zz",
        [vbr_info("listy.zz", "list", "other.test:vouch.regcheck.test")],
        "VBR:A",
        id="header-second-voucher-type-listed",
    ),
    pytest.param(
        "mx.listy.zz", [vbr_info("listy.zz", "transaction", "vouch.regcheck.test")], "", id="header-type-not-vouched"
    ),
    pytest.param("mx.new.zz", [vbr_info("other.zz", "all", "vouch.regcheck.test")], "", id="header-md-not-the-id"),
    pytest.param("mx.nobody.zz", [vbr_info("nobody.zz", "all", "vouch.regcheck.test")], "", id="no-vouch-record"),
    pytest.param("mx.odd.zz", [vbr_info("odd.zz", "all", "vouch.regcheck.test")], "", id="vouch-record-not-a-list"),
    pytest.param("mx.new.zz", [vbr_info("new.zz", "all", "untrusted.test")], "", id="untrusted-voucher-not-asked"),
    pytest.param("mx.vx.zz", [], "VBR:A", id="record-vx-claim"),
]


@pytest.mark.parametrize("helo,headers,used", VBR_CASES)
def test_vbr(knot, helo, headers, used):
    result = check(make_config(knot, {"VBR": VBR}), "192.0.2.1", helo, headers=headers)
    assert result.verdict.ratings is not None
    assert result.verdict.ratings.text == used


def test_vbr_asks_only_trusted_vouchers(knot):
    # vx.zz's record names a trusted and an untrusted voucher: registry, SPF's... and one vouch question
    before = knot.queries()
    result = check(make_config(knot, {"VBR": VBR}, fallback="none"), "192.0.2.1", "mx.vx.zz")
    asked = knot.queries() - before
    assert result.verdict.ratings is not None and result.verdict.ratings.text == "VBR:A"
    assert asked == result.queries == 3  # registry TXT, vx.zz._vouch TXT, SPF TXT of the HELO name


# -- budgets ---------------------------------------------------------------------------------------


def test_questions_counted_at_knot(knot):
    cfg = make_config(knot, {"DWL": DWL, "IPWL": IPWL, "DBL": DBL, "VBR": VBR})
    before = knot.queries()
    vouched = [vbr_info("new.zz", "all", "vouch.regcheck.test")]
    result = check(cfg, "192.0.2.5", "mx.new.zz", "a@new.zz", headers=vouched)
    asked = knot.queries() - before
    # registry, three lists, one voucher, the fallback's CSA probe, SPF: every one counted once, all at knot
    assert result.queries == asked == 7
    assert result.verdict.ratings is not None
    assert result.verdict.ratings.text == "DWL:A,IPWL:A,VBR:A"


def test_the_query_cap_stops_services_and_says_so(knot):
    cfg = make_config(knot, {"DWL": DWL, "DBL": DBL}, max_queries=2)
    result = check(cfg, "192.0.2.1", "mx.new.zz", "a@new.zz")
    assert result.queries == 2
    ratings = result.verdict.ratings
    assert ratings is not None and ratings.text == "DWL:A"
    assert ratings.notes == ("DBL:budget check query cap 2 reached",)


# -- the fallback ---------------------------------------------------------------------------------

FALLBACK = [
    pytest.param(
        "192.0.2.1",
        "mx.new.zz",
        "user@new.zz",
        Action.ACCEPT,
        {
            "REGCHECK_SPF_ALLOW": ["new.zz", "mailfrom=new.zz", "mechanism=ip4:192.0.2.0/24", "record=assumed"],
            "REGCHECK_RATING_HIGH": ["new.zz", "ratings=DWL:A", "record=assumed"],
        },
        "192.0.2.1 new.zz SPF pass ratings=DWL:A record=assumed",
        id="aligned-spf-pass",
    ),
    pytest.param(
        "192.0.2.1",
        "mx.new.zz",
        "user@borrowed.zz",
        Action.CONTINUE,
        {
            "REGCHECK_SPF_NA": [
                "new.zz",
                "helo=mx.new.zz",
                "unaligned=user@borrowed.zz",
                "ratings=DWL:A",
                "record=assumed",
            ],
            "REGCHECK_UNVERIFIED": ["new.zz", "ratings=DWL:A", "record=assumed"],
        },
        "192.0.2.1 new.zz NONE unverified ratings=DWL:A record=assumed",
        id="unaligned-mailfrom-checks-the-helo",
    ),
    pytest.param(
        "192.0.2.1",
        "mx.failing.zz",
        "user@failing.zz",
        Action.REJECT,
        {
            "REGCHECK_SPF_FAIL": [
                "failing.zz",
                "mailfrom=failing.zz",
                "mechanism=-all",
                "ratings=DWL:A",
                "record=assumed",
            ],
        },
        "192.0.2.1 failing.zz SPF fail ratings=DWL:A record=assumed",
        id="aligned-spf-fail",
    ),
    pytest.param(
        "192.0.2.30",
        "mx.csa.zz",
        "user@csa.zz",
        Action.ACCEPT,
        {
            "REGCHECK_CSA_ALLOW": ["csa.zz", "srv=_client._smtp.mx.csa.zz", "target=mx.csa.zz", "record=assumed"],
            "REGCHECK_RATING_HIGH": ["csa.zz", "ratings=DWL:A", "record=assumed"],
        },
        "192.0.2.30 csa.zz CSA pass ratings=DWL:A record=assumed",
        id="csa-where-the-helo-has-a-record",
    ),
]


@pytest.mark.parametrize("ip,helo,mail_from,action,expected,header", FALLBACK)
def test_fallback(knot, ip, helo, mail_from, action, expected, header):
    cfg = make_config(knot, {"DWL": DWL})
    result = check(cfg, ip, helo, mail_from)
    reply = build_reply(result.verdict, cfg, result.queries)
    assert result.verdict.seed.action is action, result.verdict.seed
    assert symbols(result) == expected
    assert reply["milter"]["add_headers"]["X-Regcheck"] == header


def test_fallback_keeps_a_registry_record_first(knot):
    # heaven.net has a record: the fallback changes nothing for it (QR1 from its netblocks)
    services = {"S1": {"ratings": SCALE}, "M2": {"ratings": SCALE}, "H1": {"ratings": SCALE}}
    result = check(make_config(knot, services), "208.20.133.17", "mailout17.heaven.net")
    assert "REGCHECK_QR1_ALLOW" in symbols(result)
    assert "record=assumed" not in str(result.verdict)


def test_fallback_needs_relaxed_alignment():
    from rspamd_regcheck import ConfigError

    with pytest.raises(ConfigError, match=r"registry\.fallback"):
        config_from_mapping({"registry": {"fallback": "authenticate"}, "spf": {"alignment": "none"}})


# -- the local list ------------------------------------------------------------------------------


def test_local_list_overrides_the_dns_lists(knot, tmp_path):
    (tmp_path / "ratings.txt").write_text("# our own word\nnew.zz D   # a customer we cut off\n198.51.100.0/24 A\n")
    services = {"LOCAL": {"weight": 20, "ratings": SCALE, "file": "ratings.txt"}, "DWL": DWL}
    cfg = make_config(knot, services, base_dir=str(tmp_path))
    # weight 20 is more than enough_weight (14): the local word is the only one read
    result = check(cfg, "192.0.2.1", "mx.new.zz", "a@new.zz")
    assert result.verdict.ratings is not None and result.verdict.ratings.text == "LOCAL:D"
    assert result.verdict.seed.action is Action.REJECT
    result = check(cfg, "198.51.100.9", "mx.nobody.zz", "a@nobody.zz")
    assert result.verdict.ratings is not None and result.verdict.ratings.text == "LOCAL:A"


def test_local_list_reloads_when_the_file_changes(knot, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(_services, "RELOAD_CHECK_INTERVAL", 0.0)
    path = tmp_path / "ratings.txt"
    path.write_text("new.zz A\n")
    cfg = make_config(knot, {"LOCAL": {"ratings": SCALE, "file": str(path)}}, base_dir=str(tmp_path))
    env = Envelope(ip=ipaddress.ip_address("192.0.2.1"), helo="mx.new.zz", mail_from="a@new.zz")

    def touch(text):
        stamp = path.stat().st_mtime_ns + 1_000_000_000
        path.write_text(text)
        os.utime(path, ns=(stamp, stamp))

    async def run():
        checker = Checker(cfg)
        try:
            first = (await checker.check(env)).verdict.ratings.text
            touch("new.zz D\n")
            second = (await checker.check(env)).verdict.ratings.text
            touch("new.zz Q\n")  # a bad line: logged, the list in use stays
            third = (await checker.check(env)).verdict.ratings.text
            return first, second, third
        finally:
            checker.close()

    assert asyncio.run(run()) == ("LOCAL:A", "LOCAL:D", "LOCAL:D")
    assert f"{path}:1: rating 'Q'" in caplog.text


def test_a_checker_made_after_the_list_changed_reads_the_new_one(knot, tmp_path):
    """A worker started (or restarted) after the file changed, from a config loaded before: it
    must not take the old entries for the file it finds (it once kept them for good)."""
    path = tmp_path / "ratings.txt"
    path.write_text("new.zz A\n")
    cfg = make_config(knot, {"LOCAL": {"ratings": SCALE, "file": str(path)}}, base_dir=str(tmp_path))
    stamp = path.stat().st_mtime_ns + 1_000_000_000
    path.write_text("new.zz D\n")
    os.utime(path, ns=(stamp, stamp))
    env = Envelope(ip=ipaddress.ip_address("192.0.2.1"), helo="mx.new.zz", mail_from="a@new.zz")

    async def run():
        checker = Checker(cfg)
        try:
            return (await checker.check(env)).verdict.ratings.text
        finally:
            checker.close()

    assert asyncio.run(run()) == "LOCAL:D"


def test_fingerprint_ignores_where_a_list_s_lines_are(knot, tmp_path):
    path = tmp_path / "ratings.txt"
    fingerprints = []
    for text in ("new.zz A\n", "# a comment moves the line\nnew.zz A\n", "new.zz D\n"):
        path.write_text(text)
        checker = Checker(make_config(knot, {"LOCAL": {"ratings": SCALE, "file": str(path)}}, base_dir=str(tmp_path)))
        fingerprints.append(checker.fingerprint)
        checker.close()
    assert fingerprints[0] == fingerprints[1] != fingerprints[2]


def test_local_list_error_names_the_line(tmp_path):
    from rspamd_regcheck import ConfigError

    (tmp_path / "r.txt").write_text("new.zz A\n\nnot an entry at all\n")
    with pytest.raises(ConfigError, match=r"r\.txt:3: expected 'ID-or-CIDR RATING'"):
        config_from_mapping({"services": {"LOCAL": {"ratings": SCALE, "file": "r.txt"}}}, base_dir=str(tmp_path))


def test_local_list_reloads_on_sighup(knot, tmp_path):
    import json
    import signal

    from test_serve import SECRET, Server

    from conftest import free_port

    lst = tmp_path / "ratings.txt"
    lst.write_text("new.zz A\n")
    conf = (
        f'[server]\nsecret = "{SECRET}"\n[registry]\nzones = ["{REG}"]\nfallback = "authenticate"\n'
        f'[dns]\nnameservers = ["{knot.host}"]\nport = {knot.port}\n[policy]\nlocal_networks = []\n'
        '[services.LOCAL]\nratings = { A = 9, B = 7, C = 5, D = 0 }\nfile = "ratings.txt"\n'
    )
    server = Server(tmp_path, conf, free_port())
    sender = b"IP: 192.0.2.1\r\nHelo: mx.new.zz\r\nFrom: a@new.zz\r\n"
    try:
        action = lambda: json.loads(server.check(sender)[2])["regcheck"]["verdict"]["action"]  # noqa: E731
        assert action() == "ACCEPT"
        # the same size and modification time: only the signal can tell the worker
        seen = lst.stat()
        lst.write_text("new.zz D\n")
        os.utime(lst, ns=(seen.st_atime_ns, seen.st_mtime_ns))
        time.sleep(_services.RELOAD_CHECK_INTERVAL * 1.5)
        assert action() == "ACCEPT"
        os.kill(server.proc.pid, signal.SIGHUP)
        server.wait_until(lambda: action() == "REJECT", "the list read again")
    finally:
        server.stop()


def test_demo_shows_a_sender_no_registry_lists():
    """`./dev demo`'s last case, offline: rated by demo/zones/dwl.zone, authenticated by its own SPF."""
    import json

    from test_cli import ROOT, cli

    proc = cli(
        "--config",
        str(ROOT / "demo" / "regcheck.toml"),
        "--nameserver",
        "127.0.0.1:9",
        "check",
        "--ip",
        "203.0.113.25",
        "--helo",
        "mail.newcomer.example",
        "--from",
        "news@newcomer.example",
        "--json",
    )
    assert proc.returncode == 0, proc.stderr
    reply = json.loads(proc.stdout)
    assert reply["regcheck"]["verdict"]["action"] == "ACCEPT"
    options = reply["symbols"]["REGCHECK_RATING_HIGH"]["options"]
    assert options == ["newcomer.example", "ratings=DWL:A", "record=assumed"]
    assert "REGCHECK_NO_RECORD" not in reply["symbols"]
    assert "203.0.113.25|mail.newcomer.example|news@newcomer.example|" in (ROOT / "dev").read_text()


def test_no_registry_zone_is_allowed_with_the_fallback(knot, tmp_path):
    import json

    from test_cli import cli

    args = ("--nameserver", knot.nameserver, "check", "--ip", "192.0.2.1", "--helo", "mx.new.zz", "--json")
    proc = cli(*args)
    assert proc.returncode == 2 and "no registry zone configured" in proc.stderr
    conf = tmp_path / "c.toml"
    conf.write_text('[registry]\nfallback = "authenticate"\n[policy]\nlocal_networks = []\n')
    proc = cli("--config", str(conf), *args)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["symbols"]["REGCHECK_NO_RATINGS"]["options"] == ["new.zz", "record=assumed"]


def test_idlevel_asks_the_lists_about_the_deeper_id(knot):
    # hoster.test's record says IDlevel=3: the real ID is cust1.hoster.test, asked of the list again
    services = {"DWL": DWL, "S1": {"ratings": SCALE}, "M2": {"ratings": SCALE}}
    cfg = make_config(knot, services, fallback="none", zones=["id.regcheck.test"])
    before = knot.queries()
    result = check(cfg, "203.0.113.5", "mx.cust1.hoster.test")
    assert result.verdict.ratings is not None
    assert result.verdict.ratings.text == "DWL:A,S1:A,M2:A"
    assert result.queries == knot.queries() - before == 4  # registry and list, for each ID
    assert result.verdict.seed.action is Action.ACCEPT


def test_hostile_vbr_info_against_the_real_worker(knot, tmp_path):
    """A message naming thousands of vouchers, the trusted one among them: one vouch question at most."""
    import json

    from test_serve import SECRET, Server

    from conftest import free_port

    conf = (
        f'[server]\nsecret = "{SECRET}"\n[registry]\nzones = ["{REG}"]\nfallback = "authenticate"\n'
        f'[dns]\nnameservers = ["{knot.host}"]\nport = {knot.port}\ncache_size = 0\nresult_cache_size = 0\n'
        "[policy]\nlocal_networks = []\n"
        '[services.VBR]\nratings = { A = 9 }\nvouchers = [{ domain = "vouch.regcheck.test", rating = "A" }]\n'
    )
    server = Server(tmp_path, conf, free_port())
    many = ":".join(f"v{i}.attacker.test" for i in range(2000))
    headers = (
        "".join(f"VBR-Info: md=new.zz; mc=all; mv=vouch.regcheck.test:{many}\r\n" for _ in range(50))
        + "VBR-Info: md=new.zz; mc="
        + "x" * 5000
        + "; mv=vouch.regcheck.test\r\nVBR-Info: ;;;==;md\r\n"
    )
    body = (headers + "Subject: hi\r\n\r\nbody\r\n").encode()
    request = (
        b"POST /checkv2 HTTP/1.1\r\nIP: 192.0.2.1\r\nHelo: mx.new.zz\r\nFrom: a@new.zz\r\n"
        + f"Password: {SECRET}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    try:
        before = knot.queries()
        status, _, reply = server.request(request)
        asked = knot.queries() - before
        assert status == 200
        out = json.loads(reply)
        # registry, one vouch question, the fallback's CSA probe, SPF: nothing for the 2000 strangers
        assert out["regcheck"]["queries"] == asked == 4
        assert out["regcheck"]["verdict"]["action"] == "ACCEPT"
        assert out["symbols"]["REGCHECK_RATING_HIGH"]["options"] == ["new.zz", "ratings=VBR:A", "record=assumed"]
    finally:
        server.stop()


def test_service_questions_are_coalesced_and_cached(knot):
    cfg = make_config(knot, {"DWL": DWL, "IPWL": IPWL}, result_cache_size=0)
    env = Envelope(ip=ipaddress.ip_address("192.0.2.5"), helo="mx.med.zz", mail_from="a@med.zz")

    async def run():
        checker = Checker(cfg)
        try:
            before = knot.queries()
            together = await asyncio.gather(checker.check(env), checker.check(env))  # one question each on the wire
            wire = knot.queries() - before
            again = await checker.check(env)  # every answer from the cache
            return together, wire, again, knot.queries() - before - wire
        finally:
            checker.close()

    together, wire, again, later = asyncio.run(run())
    assert [r.queries for r in together] == [again.queries, again.queries]  # each check counts every question
    assert wire == again.queries and later == 0
    assert again.verdict.ratings is not None and again.verdict.ratings.text == "DWL:B,IPWL:A"  # config order
