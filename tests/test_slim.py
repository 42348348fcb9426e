"""The slim reply the plugin asks for: its shape, and its max-age from the real worker against knot."""

from __future__ import annotations

import asyncio
import ipaddress
import math
import socket
from dataclasses import replace

import msgpack
import pytest

from rspamd_regcheck import Checker, Config, Facts, Policy, RegistryFacts, RegistryStatus, evaluate
from rspamd_regcheck._enforce import EnforcePolicy, enforce, rests_on_rcpts
from rspamd_regcheck._http import App, Limits, start_server
from rspamd_regcheck._slim import build_slim, encode_slim, max_age, wants_slim, with_max_age

from helpers import read_reply

REG = "id.regcheck.test"
CFG = Config()
POLICY = Policy(CFG.ratings, CFG.method_order, CFG.method_limits)
IP = ipaddress.ip_address("192.0.2.1")


def verdict(status, **kw):
    if status is None:  # a session not checked at all
        return evaluate(Facts(ip=None, skipped="no client IP"), POLICY)
    facts = Facts(ip=IP, helo="mx.x.example", id="x.example", registry=RegistryFacts(status, **kw))
    return evaluate(facts, POLICY)


@pytest.mark.parametrize(
    "valid_until,now,ceiling,expected",
    [
        pytest.param(math.inf, 10.0, 3600, 3600, id="no-dns-answer-ceiling"),
        pytest.param(310.9, 10.0, 3600, 300, id="whole-seconds-down"),
        pytest.param(0.0, 10.0, 3600, 0, id="dns-failure"),
        pytest.param(10.5, 10.0, 3600, 0, id="under-a-second"),
        pytest.param(99_999.0, 0.0, 600, 600, id="capped"),
    ],
)
def test_max_age(valid_until, now, ceiling, expected):
    assert max_age(valid_until, now, ceiling) == expected


@pytest.mark.parametrize(
    "headers,expected",
    [
        pytest.param([("Regcheck-Reply", "slim")], True, id="asked"),
        pytest.param([("regcheck-reply", " SLIM ")], True, id="case-and-space"),
        pytest.param([("Regcheck-Reply", "full")], False, id="other-form"),
        pytest.param([("Accept", "application/msgpack")], False, id="not-asked"),
    ],
)
def test_wants_slim(headers, expected):
    assert wants_slim(headers) is expected


ENFORCE_ALL = EnforcePolicy(no_record=True)


@pytest.mark.parametrize(
    "status,policy,rcpts,keys,action",
    [
        pytest.param(
            RegistryStatus.NO_RECORD, ENFORCE_ALL, (), {"symbols", "milter", "enforce", "rcpt"}, "reject",
            id="no-record-rejects-rests-on-rcpts",
        ),
        pytest.param(
            RegistryStatus.NO_RECORD, ENFORCE_ALL, ("Postmaster@x.test",), {"symbols", "milter", "enforce", "rcpt"},
            "add header", id="no-record-to-postmaster",
        ),
        pytest.param(
            RegistryStatus.NO_RECORD, EnforcePolicy(), (), {"symbols", "milter", "enforce"}, "no action",
            id="no-record-not-enforced",
        ),
        pytest.param(
            RegistryStatus.DNSFAIL, EnforcePolicy(), (), {"symbols", "milter", "enforce", "rcpt"}, "soft reject",
            id="dnsfail-tempfails",
        ),
        pytest.param(
            RegistryStatus.DNSFAIL, EnforcePolicy(tempfail=False), (), {"symbols", "milter", "enforce"}, "no action",
            id="dnsfail-tempfail-off",
        ),
        pytest.param(None, EnforcePolicy(), (), {"symbols", "enforce"}, "no action", id="skipped-nothing-else"),
    ],
)  # fmt: skip
def test_slim_carries_only_what_the_plugin_uses(status, policy, rcpts, keys, action):
    v = verdict(status)
    decision = enforce(v, policy, rcpts)
    slim = build_slim(v, decision, rests_on_rcpts(v, policy))
    assert set(slim) == keys
    assert slim["symbols"] == sorted([h.name, h.weight, list(h.options)] for h in v.symbols)
    assert slim["enforce"]["action"] == action  # the worker's decision, as regcheck.enforce carries it
    assert slim["enforce"].get("message") == decision.message
    assert ("message" in slim["enforce"]) is (action in ("reject", "soft reject"))
    if "milter" in slim:
        assert slim["milter"].get("add_headers", {}) == dict(v.add_headers)
        assert list(slim["milter"].get("remove_headers", {})) == list(v.remove_headers)


@pytest.mark.parametrize("age", [0, 1, 127, 128, 65_536, 604_800])
def test_max_age_is_spliced_into_a_valid_msgpack_map(age):
    v = verdict(RegistryStatus.NO_RECORD)
    slim = build_slim(v, enforce(v, ENFORCE_ALL), True)
    body = with_max_age(encode_slim(slim), len(slim), age)
    assert msgpack.unpackb(body) == {**slim, "max_age": age}


async def _ask(config: Config, headers: bytes, *more: bytes) -> list[dict]:
    """Slim checks through the in-process worker, on one connection: *headers* twice, then
    *headers* with each of *more* added."""
    checker = Checker(config)
    server = await start_server(App(checker, Limits()), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    out = []
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.setblocking(True)
            for extra in (b"", b"", *more):
                request = (
                    b"POST /checkv2 HTTP/1.1\r\nHost: x\r\nAccept: application/msgpack\r\n"
                    b"Regcheck-Reply: slim\r\n%s%sContent-Length: 0\r\n\r\n" % (headers, extra)
                )
                await asyncio.get_running_loop().sock_sendall(s, request)
                status, _, body = await asyncio.to_thread(read_reply, s)
                assert status == 200
                out.append(msgpack.unpackb(body))
    finally:
        server.close()
        await server.wait_closed()
        checker.close()
    return out


def config_for(knot, **kw) -> Config:
    return replace(
        Config(), registry_zones=(REG,), nameservers=(knot.host,), dns_port=knot.port, local_networks=(), **kw
    )


@pytest.mark.parametrize(
    "headers,low,high,symbol",
    [
        # the zone's TTL is 300 s: the age counts down from there (whole seconds)
        pytest.param(b"IP: 208.20.133.17\r\nHelo: mailout17.heaven.net\r\n", 290, 300, "REGCHECK_QR1_ALLOW", id="qr1"),
        # an answer with a TTL of 1 s: nothing the plugin should keep
        pytest.param(b"IP: 192.0.2.9\r\nHelo: mx.ttl1.example\r\n", 0, 1, "REGCHECK_QR1_ALLOW", id="ttl-1"),
        # no DNS at all: the worker's ceiling (dns.max_ttl)
        pytest.param(b"IP: 192.0.2.9\r\nHelo: JUPITER\r\n", 86_400, 86_400, "REGCHECK_BAD_HELO", id="bad-helo"),
    ],
)
def test_real_worker_returns_the_smallest_ttl_as_max_age(knot, headers, low, high, symbol):
    first, again = asyncio.run(_ask(config_for(knot), headers))
    assert symbol in [s[0] for s in first["symbols"]]
    assert low <= first["max_age"] <= high
    assert again["symbols"] == first["symbols"]  # the reused result, encoded once
    assert again["max_age"] <= first["max_age"]


def test_dns_failure_has_max_age_zero():
    """A registry answer that never comes: REGCHECK_DNSFAIL, and nothing the plugin may keep."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        config = replace(
            Config(),
            registry_zones=(REG,),
            nameservers=("127.0.0.1",),
            dns_port=silent.getsockname()[1],
            dns_timeout=0.2,
            dns_tries=1,
            local_networks=(),
        )
        first, _ = asyncio.run(_ask(config, b"IP: 192.0.2.9\r\nHelo: mx.heaven.net\r\n"))
    assert "REGCHECK_DNSFAIL" in [s[0] for s in first["symbols"]]
    assert first["max_age"] == 0
    assert first["enforce"] == {
        "action": "soft reject",
        "message": "451 4.4.3 Sender registry lookup for 'heaven.net' failed; please try again later",
    }
    assert first["rcpt"] is True


def test_real_worker_slim_enforce_follows_the_recipients(knot):
    """One cached result, three decisions: the slim reply's enforce action is per message (its
    recipients), and says when it rests on them; the encoded body is not shared across decisions."""
    config = config_for(knot, enforce_no_record=True)
    nowhere = b"IP: 192.0.2.1\r\nHelo: mx.nowhere.example\r\n"
    first, again, to_abuse, to_ann = asyncio.run(
        _ask(config, nowhere, b"Rcpt: <ann@x.test>\r\nRcpt: <ABUSE@x.test>\r\n", b"Rcpt: <ann@x.test>\r\n")
    )
    assert "REGCHECK_NO_RECORD" in [s[0] for s in first["symbols"]]
    assert first["enforce"]["action"] == again["enforce"]["action"] == to_ann["enforce"]["action"] == "reject"
    assert to_abuse["enforce"] == {"action": "add header"}
    assert first["rcpt"] is to_abuse["rcpt"] is True
    assert first["max_age"] > 0  # a decision resting on recipients is still kept, keyed on them


def test_real_worker_slim_no_rcpt_flag_when_recipients_cannot_matter(knot):
    config = config_for(knot)  # enforce_no_record off: no action, whoever the mail is for
    (first, _, to_abuse) = asyncio.run(
        _ask(config, b"IP: 192.0.2.1\r\nHelo: mx.nowhere.example\r\n", b"Rcpt: <abuse@x.test>\r\n")
    )
    assert first["enforce"] == to_abuse["enforce"] == {"action": "no action"}
    assert "rcpt" not in first and "rcpt" not in to_abuse


def test_real_worker_slim_carries_the_configuration_fingerprint(knot):
    first, again = asyncio.run(_ask(config_for(knot), b"IP: 208.20.133.17\r\nHelo: mailout17.heaven.net\r\n"))
    assert first["config"] == again["config"] == Checker(config_for(knot)).fingerprint


@pytest.mark.parametrize(
    "change,same",
    [
        pytest.param({}, True, id="same-config-same-fingerprint"),  # every worker process agrees
        # what changes no result: two workers that differ only so are asked in turn by one plugin
        pytest.param({"listen": ("127.0.0.1", 11472)}, True, id="another-port"),
        pytest.param({"spf_receiver": "other-host"}, True, id="another-host-name"),
        pytest.param({"dns_timeout": 1.5, "workers": 4}, True, id="timeouts-and-workers"),
        pytest.param({"enforce_no_record": True}, False, id="enforce-setting"),
        pytest.param({"max_queries": 20}, False, id="dns-budget"),
        pytest.param({"spf_alignment": "strict"}, False, id="spf-alignment"),
    ],
)
def test_fingerprint_follows_the_configuration(knot, change, same):
    base = Checker(config_for(knot))
    other = Checker(config_for(knot, **change))
    try:
        assert len(base.fingerprint) == 16
        assert (other.fingerprint == base.fingerprint) is same
    finally:
        base.close()
        other.close()


def test_fingerprint_follows_a_zone_file_s_contents(tmp_path):
    zone = tmp_path / "reg.zone"
    zone.write_text(f"$ORIGIN {REG}.\n$TTL 300\n@ SOA ns. host. 1 60 60 60 60\nheaven.net TXT \"v=QR1\"\n")
    config = replace(Config(), registry_zones=(REG,), zone_files=(str(zone),), local_networks=())
    before = Checker(config)
    zone.write_text(zone.read_text().replace("v=QR1", "v=QR1 stop=all"))
    after = Checker(config)
    try:
        assert before.fingerprint != after.fingerprint  # the same config, the file edited: a reload tells
    finally:
        before.close()
        after.close()
