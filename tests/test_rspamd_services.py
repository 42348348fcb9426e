"""Rating services and the registry fallback end to end in a real rspamd 3.4 (rspamc -> rspamd -> shim -> worker)."""

from __future__ import annotations

import pytest

from rspamd_procs import free_port, rspamc, start_rspamd, start_worker

SHIM_TIMEOUT = 1.5


def worker_config(knot) -> str:
    return (
        '[registry]\nzones = ["svcid.regcheck.test"]\nfallback = "authenticate"\n'
        f'[dns]\nnameservers = ["{knot.host}"]\nport = {knot.port}\n'
        '[policy]\nlocal_networks = []\n[spf]\nreceiver = "mx.receiver.test"\n'
        '[services.DWL]\nzone = "dwl.regcheck.test"\nratings = { A = 9, B = 7, C = 5 }\n'
        'codes = { "127.0.*.3" = "A", "127.0.*.2" = "B", "127.0.*.0-127.0.*.1" = "C" }\n'
        '[services.DBL]\nzone = "dbl.regcheck.test"\nratings = { D = 0 }\ncodes = { "127.0.1.0/24" = "D" }\n'
    )


@pytest.fixture(scope="module")
def ports(knot, tmp_path_factory):
    base = tmp_path_factory.mktemp("rspamd-services")
    worker_port = free_port()
    worker = start_worker(base, "worker", worker_config(knot), worker_port)
    eml = base / "message.eml"
    eml.write_bytes(b"From: <a@new.zz>\r\nTo: <ann@receiver.test>\r\nSubject: hello\r\n\r\nhello\r\n")
    procs = []
    try:
        out = {"eml": eml}
        for mode in ("score", "enforce"):
            block = f'regcheck {{ servers = "127.0.0.1:{worker_port}"; timeout = {SHIM_TIMEOUT}s; mode = "{mode}"; }}'
            proc, port = start_rspamd(base, mode, block, knot.port)
            procs.append(proc)
            out[mode] = port
        yield out
    finally:
        for proc in procs:
            proc.stop()
        worker.stop()


def regcheck(result: dict) -> dict:
    return {n: s.get("options", []) for n, s in result["symbols"].items() if n.startswith("REGCHECK")}


def test_a_sender_no_registry_lists_through_rspamd(ports):
    result, _ = rspamc(ports["score"], ports["eml"], "-i", "192.0.2.1", "--helo", "mx.new.zz", "-F", "a@new.zz")
    assert regcheck(result) == {
        "REGCHECK_RATING_HIGH": ["new.zz", "ratings=DWL:A", "record=assumed"],
        "REGCHECK_SPF_ALLOW": ["new.zz", "mailfrom=new.zz", "mechanism=ip4:192.0.2.0/24", "record=assumed"],
    }
    assert result["milter"]["add_headers"]["X-Regcheck"] == "192.0.2.1 new.zz SPF pass ratings=DWL:A record=assumed"


ENFORCE = [
    pytest.param(
        ["-i", "192.0.2.1", "--helo", "mx.spammy.zz", "-F", "a@spammy.zz", "-r", "ann@receiver.test"],
        "reject",
        "550 5.7.1 'spammy.zz' is rated DWL:A,DBL:D, below what this server accepts",
        id="a-D-rating-rejects",
    ),
    pytest.param(
        ["-i", "192.0.2.1", "--helo", "mx.new.zz", "-F", "a@new.zz"], "no action", None, id="rated-and-authenticated"
    ),
    pytest.param(["-i", "192.0.2.1", "--helo", "mx.nobody.zz"], "add header", None, id="unrated-goes-to-the-filter"),
]


@pytest.mark.parametrize("args,action,message", ENFORCE)
def test_enforce(ports, args, action, message):
    result, _ = rspamc(ports["enforce"], ports["eml"], *args)
    assert result["action"] == action
    assert result.get("messages", {}).get("smtp_message") == message
    assert "REGCHECK_NO_RECORD" not in result["symbols"]


def test_a_live_listing_has_its_own_symbol_and_score(ports):
    result, _ = rspamc(ports["score"], ports["eml"], "-i", "192.0.2.1", "--helo", "mx.spammy.zz", "-F", "a@spammy.zz")
    assert regcheck(result)["REGCHECK_SERVICE_BAD"] == ["spammy.zz", "DBL:D"]
    assert result["symbols"]["REGCHECK_SERVICE_BAD"]["score"] == 2.0
