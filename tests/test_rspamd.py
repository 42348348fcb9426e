"""End to end in a real rspamd 3.4: rspamc -> rspamd + the shim -> the worker -> knot."""

from __future__ import annotations

import contextlib

import pytest

from rspamd_procs import ROOT, free_port, rspamc, start_rspamd, start_worker

REG = "id.regcheck.test"
GOOD = "ratings=S1:A,M2:A,H1:B"
SHIM_TIMEOUT = 1.5  # seconds: the score profile below


def worker_config(knot, extra_dns: str = "") -> str:
    return (
        f'[registry]\nzones = ["{REG}"]\n'
        f'[dns]\nnameservers = ["{knot.host}"]\nport = {knot.port}\n{extra_dns}'
        '[policy]\nlocal_networks = []\n[spf]\nreceiver = "mx.receiver.test"\n'
    )


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return tmp_path_factory.mktemp("rspamd")


@pytest.fixture(scope="module")
def worker_port():
    return free_port()


@pytest.fixture(scope="module")
def worker(knot, base, worker_port):
    """The worker the score-profile rspamd talks to; tests may stop and replace it (see below)."""
    state = {"proc": start_worker(base, "worker", worker_config(knot), worker_port)}
    yield state
    state["proc"].stop()


@pytest.fixture(scope="module")
def rspamd(knot, base, worker, worker_port):
    block = f'regcheck {{ servers = "127.0.0.1:{worker_port}"; timeout = {SHIM_TIMEOUT}s; }}'
    proc, port = start_rspamd(base, "score", block, knot.port)
    yield port
    proc.stop()


@pytest.fixture(scope="module")
def eml(base):
    path = base / "message.eml"
    path.write_bytes(
        b"From: Tom <tway@optsw.com>\r\nTo: Ann <ann@receiver.test>\r\nSubject: hello\r\n"
        b"Message-ID: <1@optsw.com>\r\nDate: Fri, 27 Nov 2026 08:00:00 +0000\r\n\r\nhello\r\n"
    )
    return path


def regcheck_symbols(result: dict) -> dict:
    return {n: (s["score"], s.get("options", [])) for n, s in result["symbols"].items() if n.startswith("REGCHECK")}


SEED = [
    pytest.param(
        ["-i", "208.20.133.17", "--helo", "mailout17.heaven.net"],
        {
            "REGCHECK_QR1_ALLOW": (-2.0, ["heaven.net", "208.20.133.16/29"]),
            "REGCHECK_RATING_HIGH": (-2.6001, ["heaven.net", GOOD]),
        },
        id="heaven-pass",
    ),
    pytest.param(
        ["-i", "208.20.133.32", "--helo", "mailout32.heaven.net", "-F", "x@heaven.net", "-r", "a@b.test"],
        {"REGCHECK_QR1_FAIL": (6.0, ["heaven.net", "208.20.133.32", GOOD])},
        id="heaven-fail",
    ),
    pytest.param(
        ["-i", "192.168.0.1", "--helo", "mx1.spammer.tld"],
        {
            "REGCHECK_QR1_ALLOW": (-2.0, ["spammer.tld", "192.168.0.0/16"]),
            "REGCHECK_RATING_LOW": (0.6667, ["spammer.tld", "ratings=S1:C,M2:C"]),
        },
        id="spammer",
    ),
    pytest.param(
        ["-i", "69.55.226.139", "--helo", "mx1.wayforward.net", "-F", "tway@optsw.com"],
        {
            "REGCHECK_SPF_ALLOW": (
                -1.0,
                ["wayforward.net", "helo=mx1.wayforward.net", "unaligned=tway@optsw.com", "mechanism=a"],
            ),
            "REGCHECK_RATING_HIGH": (-2.6001, ["wayforward.net", GOOD]),
        },
        id="wayforward-spf",
    ),
    pytest.param(
        ["-i", "192.0.4.1", "--helo", "mx1.abilene.texas.rr.tld", "-F", ""],
        {"REGCHECK_SPF_SOFTFAIL": (1.5, ["rr.tld", "helo=mx1.abilene.texas.rr.tld", "mechanism=~all", GOOD])},
        id="rr-softfail",
    ),
    pytest.param(
        ["-i", "208.20.133.17", "--helo", "mx1.example.co.uk"],
        {"REGCHECK_STOP": (8.0, ["example.co.uk"])},
        id="stop-all",
    ),
    pytest.param(
        ["-i", "208.20.133.17", "--helo", "JUPITER"],
        {"REGCHECK_BAD_HELO": (1.5, ["bare-word", "JUPITER"])},
        id="jupiter",
    ),
]


@pytest.mark.parametrize("args,expected", SEED)
def test_seed_examples_through_rspamd(rspamd, eml, args, expected):
    result, _ = rspamc(rspamd, eml, *args)
    got = regcheck_symbols(result)
    assert {n: (pytest.approx(s, abs=1e-3), o) for n, (s, o) in expected.items()} == got
    assert "TEST_OTHER" in result["symbols"]


def test_milter_headers_are_applied(rspamd, eml):
    result, _ = rspamc(rspamd, eml, "-i", "208.20.133.32", "--helo", "mailout32.heaven.net")
    milter = result["milter"]
    assert milter["add_headers"]["X-Regcheck"] == "208.20.133.32 heaven.net QR1 fail " + GOOD
    assert milter["remove_headers"]["X-Regcheck"] == 0


def test_group_max_score_caps_the_sum(rspamd, eml):
    """QR1_FAIL (6) + DNS pre-screen and the rest can never push past the group's 10."""
    result, _ = rspamc(rspamd, eml, "-i", "208.20.133.32", "--helo", "mailout32.heaven.net")
    assert sum(s for s, _ in regcheck_symbols(result).values()) <= 10.0


def test_no_envelope_is_skipped_quietly(rspamd, eml):
    result, _ = rspamc(rspamd, eml)  # plain rspamc: no IP, no HELO
    assert regcheck_symbols(result) == {}
    assert "TEST_OTHER" in result["symbols"]


@pytest.fixture
def worker_stopped(worker, knot, base, worker_port):
    worker["proc"].stop()
    yield
    worker["proc"] = start_worker(base, "worker", worker_config(knot), worker_port)


def test_fail_open_when_the_worker_is_down(rspamd, eml, worker_stopped, worker_port):
    result, elapsed = rspamc(rspamd, eml, "-i", "208.20.133.32", "--helo", "mailout32.heaven.net")
    got = regcheck_symbols(result)
    assert list(got) == ["REGCHECK_FAIL"]
    score, options = got["REGCHECK_FAIL"]
    assert score == 0.0 and "Connection refused" in options[0]
    assert options[0].startswith(f"127.0.0.1:{worker_port}: ")  # the reason names the server with its port
    assert "TEST_OTHER" in result["symbols"]  # every other result kept
    assert result["action"] == "no action"
    assert elapsed < SHIM_TIMEOUT * 3


@pytest.fixture
def worker_hanging(worker, knot, base, worker_port):
    """A real worker whose DNS server never answers and whose deadline is far past the shim's timeout."""
    import socket

    worker["proc"].stop()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        config = worker_config(knot).replace(f"port = {knot.port}\n", f"port = {silent.getsockname()[1]}\n")
        config = config.replace("[dns]\n", "[dns]\ntimeout = 20.0\ndeadline = 20.0\n")
        hanging = start_worker(base, "hanging", config, worker_port)
        yield
        hanging.stop()
    worker["proc"] = start_worker(base, "worker", worker_config(knot), worker_port)


def test_fail_open_within_the_timeout_when_the_worker_hangs(rspamd, eml, worker_hanging):
    result, elapsed = rspamc(rspamd, eml, "-i", "208.20.133.17", "--helo", "mailout17.heaven.net")
    got = regcheck_symbols(result)
    assert list(got) == ["REGCHECK_FAIL"] and "timeout" in got["REGCHECK_FAIL"][1][0].lower()
    assert "TEST_OTHER" in result["symbols"]
    assert elapsed < SHIM_TIMEOUT * 3  # generous: the point is that the scan does not wait for the worker


def test_config_error_shows_on_every_scan(knot, base, eml):
    proc, port = start_rspamd(base, "broken", 'regcheck { mode = "bogus"; }', knot.port)
    try:
        result, _ = rspamc(port, eml, "-i", "208.20.133.17", "--helo", "mailout17.heaven.net")
    finally:
        proc.stop()
    got = regcheck_symbols(result)
    assert list(got) == ["REGCHECK_FAIL"]
    assert got["REGCHECK_FAIL"][1][0].startswith('config error: invalid settings: field "mode"')
    assert "TEST_OTHER" in result["symbols"]


# -- enforce mode, several servers, DKIM, Sender ID, the secret (issue 9) ------------------------


@pytest.fixture(scope="module")
def rspamd_enforce(knot, base, worker, worker_port):
    block = f'regcheck {{ servers = "127.0.0.1:{worker_port}"; timeout = {SHIM_TIMEOUT}s; mode = "enforce"; }}'
    proc, port = start_rspamd(base, "enforce", block, knot.port)
    yield port
    proc.stop()


ENFORCE = [
    pytest.param(["-i", "208.20.133.17", "--helo", "mailout17.heaven.net"], "no action", None, id="accept"),
    pytest.param(
        ["-i", "208.20.133.32", "--helo", "mailout32.heaven.net", "-r", "ann@receiver.test"],
        "reject",
        "550 5.7.1 Host 208.20.133.32 is not authorised to send mail for 'heaven.net' (QR1)",
        id="reject",
    ),
    pytest.param(["-i", "192.168.0.1", "--helo", "mx1.spammer.tld"], "add header", None, id="filter"),
    pytest.param(
        ["-i", "69.55.226.139", "--helo", "mx1.wayforward.net", "-F", "tway@optsw.com"],
        "no action",
        None,
        id="spf-accept",
    ),
    pytest.param(
        ["-i", "192.0.4.1", "--helo", "mx1.abilene.texas.rr.tld", "-F", ""],
        "add header",
        None,
        id="spf-softfail-filter",
    ),
    pytest.param(
        ["-i", "208.20.133.17", "--helo", "mx1.example.co.uk"],
        "reject",
        "550 5.7.1 The sender registry says 'example.co.uk' sends no mail",
        id="stop-all",
    ),
    pytest.param(
        ["-i", "208.20.133.17", "--helo", "JUPITER"],
        "reject",
        "550 5.7.1 HELO name 'JUPITER' is not a valid host name (bare-word)",
        id="bad-helo",
    ),
    pytest.param(
        ["-i", "192.0.2.1", "--helo", "mx.nowhere.example"], "no action", None, id="no-record-sets-nothing-by-default"
    ),
    pytest.param(
        ["-i", "192.0.2.1", "--helo", "mx.broken.example"],
        "no action",
        None,
        id="invalid-record-sets-nothing-by-default",
    ),
    pytest.param(
        ["-i", "208.20.133.32", "--helo", "mailout32.heaven.net", "-r", "postmaster@receiver.test"],
        "add header",
        None,
        id="postmaster-never-rejected",
    ),
]


@pytest.mark.parametrize("args,action,message", ENFORCE)
def test_enforce_mode(rspamd_enforce, eml, args, action, message):
    result, _ = rspamc(rspamd_enforce, eml, *args)
    assert result["action"] == action
    assert result.get("messages", {}).get("smtp_message") == message
    assert "TEST_OTHER" in result["symbols"]


def test_enforce_tempfail_is_a_soft_reject(rspamd_enforce, eml, worker_hanging_dns_fail):
    result, _ = rspamc(rspamd_enforce, eml, "-i", "208.20.133.17", "--helo", "mailout17.heaven.net")
    assert result["action"] == "soft reject"
    message = result["messages"]["smtp_message"]
    assert message == "451 4.4.3 Sender registry lookup for 'heaven.net' failed; please try again later"
    assert "127.0.0.1" not in message  # the resolver's address is for the log, not for strangers


def test_enforce_tempfail_off_lets_mail_through(rspamd_enforce, eml, worker_hanging_dns_fail_tempfail_off):
    """enforce_tempfail = false in the worker: DNS trouble is a symbol, never a deferral."""
    result, _ = rspamc(rspamd_enforce, eml, "-i", "208.20.133.17", "--helo", "mailout17.heaven.net")
    assert "REGCHECK_DNSFAIL" in result["symbols"]
    assert result["action"] == "no action" and "smtp_message" not in result.get("messages", {})
    log = logged(worker_hanging_dns_fail_tempfail_off, "event=check")
    assert 'enforce="no action"' in log and "detail=" in log  # the details went to the log


def test_enforce_settings_live_in_the_worker(knot, base, eml):
    """The worker's [policy] decides; old plugin keys are ignored with a warning, not a config error."""
    port = free_port()
    config = worker_config(knot).replace("[policy]\n", "[policy]\nenforce_no_record = true\n")
    strict = start_worker(base, "strict", config, port)
    block = (
        f'regcheck {{ servers = "127.0.0.1:{port}"; timeout = {SHIM_TIMEOUT}s; mode = "enforce"; '
        "enforce_no_record = false; never_reject = []; }"
    )
    proc, rport = start_rspamd(base, "strict", block, knot.port)
    try:
        nowhere = ["-i", "192.0.2.1", "--helo", "mx.nowhere.example"]
        result, _ = rspamc(rport, eml, *nowhere, "-r", "ann@receiver.test")
        assert "REGCHECK_FAIL" not in result["symbols"]
        assert result["action"] == "reject"
        assert result["messages"]["smtp_message"] == "550 5.7.1 'nowhere.example' is not listed in the sender registry"
        # the worker's never_reject (default postmaster, abuse) holds, whatever the plugin's old key said
        result, _ = rspamc(rport, eml, *nowhere, "-r", "ann@receiver.test", "-r", "Abuse@receiver.test")
        assert result["action"] == "add header"
    finally:
        proc.stop()
        strict.stop()
    assert "never_reject is ignored here" in (base / "strict" / "rspamd.log").read_text()
    lines = [line for line in logged(strict.log_path, "event=check").splitlines() if "event=check" in line]
    assert [line.split("enforce=")[1].split(" ms=")[0] for line in lines] == ["reject", '"add header"']


@contextlib.contextmanager
def dns_failing_worker(state, knot, base, worker_port, name, policy=""):
    """Replace the module's worker with one whose DNS server never answers, with a deadline inside
    the shim's timeout (a DNS failure); *policy* is added to its [policy]. Yields the new worker."""
    import socket

    state["proc"].stop()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        config = worker_config(knot).replace(f"port = {knot.port}\n", f"port = {silent.getsockname()[1]}\n")
        config = config.replace("[dns]\n", "[dns]\ntimeout = 0.3\ndeadline = 0.5\n")
        config = config.replace("[policy]\n", f"[policy]\n{policy}")
        slow = start_worker(base, name, config, worker_port)
        try:
            yield slow
        finally:
            slow.stop()
            state["proc"] = start_worker(base, "worker", worker_config(knot), worker_port)


@pytest.fixture
def worker_hanging_dns_fail(worker, knot, base, worker_port):
    """A worker whose DNS server never answers, with a deadline inside the shim's timeout: a TEMPFAIL."""
    with dns_failing_worker(worker, knot, base, worker_port, "dnsfail"):
        yield


def logged(path, text: str, timeout: float = 5.0) -> str:
    """The log at *path* once it holds *text* (check lines are written in batches, at most 0.25 s late)."""
    import time

    deadline = time.monotonic() + timeout
    while text not in path.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    return path.read_text()


@pytest.fixture
def worker_hanging_dns_fail_tempfail_off(worker, knot, base, worker_port):
    """As worker_hanging_dns_fail, with enforce_tempfail = false; yields the worker's log path."""
    with dns_failing_worker(worker, knot, base, worker_port, "dnsfail-open", "enforce_tempfail = false\n") as slow:
        yield slow.log_path


def test_two_servers_one_stopped(knot, base, eml, worker_port):
    """Round robin over two workers; with one stopped, every scan is still answered by the other."""
    second_port = free_port()
    second = start_worker(base, "second", worker_config(knot), second_port)
    block = f'regcheck {{ servers = "127.0.0.1:{worker_port},127.0.0.1:{second_port}"; timeout = {SHIM_TIMEOUT}s; }}'
    proc, port = start_rspamd(base, "two", block, knot.port)
    try:
        for _ in range(4):
            result, _ = rspamc(port, eml, "-i", "208.20.133.32", "--helo", "mailout32.heaven.net")
            assert "REGCHECK_QR1_FAIL" in result["symbols"]
        second.stop()
        for _ in range(6):
            result, elapsed = rspamc(port, eml, "-i", "208.20.133.32", "--helo", "mailout32.heaven.net")
            assert "REGCHECK_FAIL" not in result["symbols"]
            assert "REGCHECK_QR1_FAIL" in result["symbols"]
            assert elapsed < SHIM_TIMEOUT * 3
    finally:
        proc.stop()
        second.stop()


def test_dkim_signature_of_the_id(knot, base, worker, worker_port):
    """rspamd verifies a dkimpy signature (key in knot); the plugin sends d= and the worker credits it."""
    import dkim

    message = (
        b"From: Ann <ann@dkim.example>\r\nTo: bob@receiver.test\r\nSubject: signed\r\n"
        b"Message-ID: <2@dkim.example>\r\nDate: Fri, 27 Nov 2026 08:00:00 +0000\r\n\r\nsigned body\r\n"
    )
    key = (ROOT / "tests" / "keys" / "dkim-test.key").read_bytes()
    signature = dkim.sign(message, b"test", b"dkim.example", key, include_headers=[b"From", b"To", b"Subject"])
    eml = base / "signed.eml"
    eml.write_bytes(signature + message)
    block = f'regcheck {{ servers = "127.0.0.1:{worker_port}"; timeout = {SHIM_TIMEOUT}s; }}'
    proc, port = start_rspamd(base, "dkim", block, knot.port, extra='filters = "dkim";')
    try:
        result, _ = rspamc(port, eml, "-i", "192.0.2.1", "--helo", "mx.dkim.example")
        assert "R_DKIM_ALLOW" in result["symbols"], result["symbols"]
        assert regcheck_symbols(result)["REGCHECK_DKIM_ALLOW"] == (-1.0, ["dkim.example", "d=dkim.example"])
        # the same message from another ID's HELO: the signature is not that ID's
        result, _ = rspamc(port, eml, "-i", "192.0.2.9", "--helo", "mx.spfonly.example")
        assert "REGCHECK_DKIM_ALLOW" not in result["symbols"]
    finally:
        proc.stop()


def test_sender_id_from_the_header_block(rspamd, base):
    eml = base / "pra.eml"
    eml.write_bytes(b"From: Alice <alice@fail.sid.example>\r\nTo: bob@receiver.test\r\nSubject: x\r\n\r\nbody\r\n")
    result, _ = rspamc(rspamd, eml, "-i", "192.0.2.77", "--helo", "mx.sid.example")
    got = regcheck_symbols(result)
    assert got["REGCHECK_SID_FAIL"][1][:3] == ["sid.example", "pra=alice@fail.sid.example", "from-header=From"]


SECRET = "a secret of more than sixteen characters"


@pytest.mark.parametrize(
    "secret,expect",
    [
        pytest.param(SECRET, "REGCHECK_QR1_FAIL", id="right-secret"),
        pytest.param("not the right secret at all", "REGCHECK_FAIL", id="wrong-secret"),
        pytest.param(None, "REGCHECK_FAIL", id="no-secret"),
    ],
)
def test_shared_secret(knot, base, eml, secret, expect):
    port = free_port()
    config = worker_config(knot).replace("[registry]", f'[server]\nsecret = "{SECRET}"\n[registry]')
    guarded = start_worker(base, f"guarded-{expect}-{bool(secret)}", config, port)
    password = f'secret = "{secret}";' if secret else ""
    block = f'regcheck {{ servers = "127.0.0.1:{port}"; timeout = {SHIM_TIMEOUT}s; {password} }}'
    proc, rport = start_rspamd(base, f"secret-{expect}-{bool(secret)}", block, knot.port)
    try:
        result, _ = rspamc(rport, eml, "-i", "208.20.133.32", "--helo", "mailout32.heaven.net")
    finally:
        proc.stop()
        guarded.stop()
    got = regcheck_symbols(result)
    assert expect in got
    if expect == "REGCHECK_FAIL":
        assert got["REGCHECK_FAIL"][1][0].endswith("HTTP 403: wrong or missing Password")
