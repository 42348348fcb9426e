"""Configuration: seed defaults, every key optional, bad input named by key."""

from __future__ import annotations

import ipaddress
import tomllib

import pytest

from rspamd_regcheck import Config, ConfigError, Method
from rspamd_regcheck.config import config_from_mapping, parse_hostport
from rspamd_regcheck.symbols import BY_NAME


def test_defaults_are_the_seeds():
    c = config_from_mapping({})
    assert c == Config()
    assert c.registry_zones == ()  # no default registry (docs/configuration.md)
    assert c.method_order == (Method.QR1, Method.CSA, Method.SPF, Method.SID, Method.DKIM)
    assert dict(c.method_limits) == {Method.QR1: 0, Method.CSA: 4, Method.SPF: 30, Method.SID: 30, Method.DKIM: 10}
    r = c.ratings
    assert (r.enough_weight, r.reject_below, r.min_allowed, r.high_min, r.high_max) == (14, 3.0, 1, 4, 8)
    assert set(r.services) == {"S1", "M2", "H1"}
    assert all(s.weight == 5 and dict(s.scores) == {"A": 9, "B": 7, "C": 5, "D": 0} for s in r.services.values())
    assert ipaddress.ip_network("192.168.0.0/16") in c.local_networks
    assert not any(n.overlaps(ipaddress.ip_network("192.0.2.0/24")) for n in c.local_networks if n.version == 4)
    assert c.mode == "score"
    assert dict(c.scores) == {n: s.score for n, s in BY_NAME.items()}


def test_full_config():
    c = config_from_mapping(
        {
            "dns": {"nameservers": ["127.0.0.1", "::1"], "port": 5353, "timeout": 1.5, "zone_files": ["a.zone"]},
            "registry": {"zones": ["ID.Example.ORG."]},
            "services": {"x1": {"weight": 2, "ratings": {"A": 10, "B": 1}}},
            "ratings": {"enough_weight": 4},
            "methods": {"order": ["SPF", "CSA"], "limits": {"CSV": 2}},
            "headers": {"authent": "X-Authent"},
            "policy": {"mode": "enforce", "local_networks": ["203.0.113.0/24"], "skip_authenticated": False},
            "scores": {"reject": 10, "symbols": {"REGCHECK_STOP": 20}},
        },
        base_dir="/etc/regcheck",
    )
    assert c.nameservers == ("127.0.0.1", "::1") and c.dns_port == 5353 and c.dns_timeout == 1.5
    assert c.zone_files == ("/etc/regcheck/a.zone",)
    assert c.registry_zones == ("id.example.org",)
    assert set(c.ratings.services) == {"X1"}  # replaces the seed's services
    assert c.ratings.enough_weight == 4
    assert c.method_order == (Method.SPF, Method.CSA)
    assert c.method_limits[Method.CSA] == 2 and c.method_limits[Method.SPF] == 30
    assert c.authent_header == "X-Authent"
    assert c.mode == "enforce" and not c.skip_authenticated
    assert c.local_networks == (ipaddress.ip_network("203.0.113.0/24"),)
    assert c.thresholds.reject == 10 and c.scores["REGCHECK_STOP"] == 20


BAD = [
    pytest.param({"nonsense": {}}, "nonsense", id="unknown-section"),
    pytest.param({"server": {"listen": "mail.example:1"}}, "server.listen", id="listen-not-ip"),
    pytest.param({"server": {"body_limit": 10}}, "server.body_limit", id="body-limit-too-small"),
    pytest.param({"dns": {"nameserver": []}}, "dns.nameserver", id="unknown-key"),
    pytest.param({"dns": {"nameservers": "127.0.0.1"}}, "dns.nameservers", id="not-a-list"),
    pytest.param({"dns": {"nameservers": ["ns.example"]}}, "dns.nameservers[0]", id="nameserver-not-ip"),
    pytest.param({"dns": {"port": 0}}, "dns.port", id="port-zero"),
    pytest.param({"dns": {"port": True}}, "dns.port", id="port-bool"),
    pytest.param({"dns": {"timeout": 0}}, "dns.timeout", id="timeout-zero"),
    pytest.param({"dns": {"timeout": float("nan")}}, "dns.timeout", id="timeout-nan"),
    pytest.param({"registry": {"zones": ["bad zone"]}}, "registry.zones[0]", id="zone-name"),
    pytest.param({"registry": "x"}, "registry", id="section-not-table"),
    pytest.param({"services": {"S1": {"weight": 5}}}, "services.S1.ratings", id="service-without-ratings"),
    pytest.param({"services": {"S1": {"ratings": {"A": "9"}}}}, "services.S1.ratings.A", id="rating-not-number"),
    pytest.param({"services": {"S 1": {"ratings": {}}}}, "services.S 1", id="service-code"),
    pytest.param({"services": {"S1": {"ratings": {}, "wt": 1}}}, "services.S1.wt", id="service-unknown-key"),
    pytest.param({"ratings": {"enough_weight": "14"}}, "ratings.enough_weight", id="threshold-string"),
    pytest.param({"methods": {"order": ["SPF", "XYZ"]}}, "methods.order[1]", id="unknown-method"),
    pytest.param({"methods": {"order": ["SPF", "spf"]}}, "methods.order", id="method-twice"),
    pytest.param({"methods": {"limits": {"SPF": -1}}}, "methods.limits.SPF", id="negative-limit"),
    pytest.param({"headers": {"authent": "X Bad"}}, "headers.authent", id="header-name"),
    pytest.param({"policy": {"mode": "hard"}}, "policy.mode", id="mode"),
    pytest.param({"policy": {"local_networks": ["10.0.0.0/33"]}}, "policy.local_networks[0]", id="network"),
    pytest.param({"policy": {"skip_authenticated": "yes"}}, "policy.skip_authenticated", id="not-bool"),
    pytest.param({"scores": {"symbols": {"REGCHECK_NOPE": 1}}}, "scores.symbols.REGCHECK_NOPE", id="unknown-symbol"),
    pytest.param({"scores": {"reject": "high"}}, "scores.reject", id="threshold-not-number"),
    pytest.param(
        {"server": {"secret": "s" * 16, "secret_file": "/etc/x"}}, "server.secret_file", id="secret-and-secret-file"
    ),
    pytest.param({"server": {"secret_file": ""}}, "server.secret_file", id="secret-file-empty"),
    pytest.param({"server": {"metrics_listen": "metrics:9"}}, "server.metrics_listen", id="metrics-listen-not-ip"),
    pytest.param({"dns": {"nameservers": ["127.0.0.1:99999"]}}, "dns.nameservers[0]", id="nameserver-port-range"),
    pytest.param({"dns": {"nameservers": ["[::1]x"]}}, "dns.nameservers[0]", id="nameserver-brackets"),
    pytest.param({"policy": {"enforce_tempfail": "no"}}, "policy.enforce_tempfail", id="enforce-not-bool"),
    pytest.param({"policy": {"never_reject": ["postmaster@x.example"]}}, "policy.never_reject[0]", id="never-reject"),
    pytest.param({"policy": {"never_reject": "abuse"}}, "policy.never_reject", id="never-reject-not-list"),
    pytest.param({"dns": {"sockets": 0}}, "dns.sockets", id="no-sockets"),
    pytest.param({"dns": {"rotate_every": 0}}, "dns.rotate_every", id="rotate-never"),
    pytest.param({"dns": {"max_negative_ttl": -1}}, "dns.max_negative_ttl", id="negative-ttl-cap"),
    pytest.param({"dns": {"case_randomise": 1}}, "dns.case_randomise", id="case-not-bool"),
    pytest.param({"dns": {"trusted_validators": ["resolver.example"]}}, "dns.trusted_validators[0]", id="validator-ip"),
    pytest.param({"registry": {"require_dnssec": "yes"}}, "registry.require_dnssec", id="dnssec-not-bool"),
]


def test_dns_security_keys():
    c = config_from_mapping(
        {
            "dns": {
                "sockets": 128,
                "rotate_every": 2,
                "max_negative_ttl": 600,
                "case_randomise": True,
                "trusted_validators": ["192.0.2.53", "2001:DB8::53"],
            },
            "registry": {"require_dnssec": True},
        }
    )
    assert (c.dns_sockets, c.dns_rotate_every, c.max_negative_ttl) == (128, 2, 600)
    assert c.case_randomise and c.require_dnssec
    assert c.trusted_validators == ("192.0.2.53", "2001:db8::53")
    defaults = Config()
    assert (defaults.dns_sockets, defaults.max_negative_ttl, defaults.negative_ttl) == (64, 3600, 0)
    assert not defaults.case_randomise and not defaults.require_dnssec
    assert config_from_mapping(tomllib.loads(c.to_toml())) == c  # written back, read the same


@pytest.mark.parametrize("data,key", BAD)
def test_bad_config_names_the_key(data, key):
    with pytest.raises(ConfigError) as info:
        config_from_mapping(data)
    assert info.value.key == key


@pytest.mark.parametrize(
    "text,host,port",
    [
        pytest.param("127.0.0.1", "127.0.0.1", 53, id="host"),
        pytest.param("127.0.0.1:5353", "127.0.0.1", 5353, id="host-port"),
        pytest.param("::1", "::1", 53, id="v6"),
        pytest.param("[::1]:5353", "::1", 5353, id="v6-port"),
    ],
)
def test_hostport(text, host, port):
    assert parse_hostport("x", text, 53) == (host, port)


@pytest.mark.parametrize("text", ["ns.example", "127.0.0.1:x", "127.0.0.1:70000", "[::1]5353"])
def test_bad_hostport(text):
    with pytest.raises(ConfigError):
        parse_hostport("--nameserver", text, 53)


def test_enforce_settings():
    c = config_from_mapping(
        {
            "policy": {
                "enforce_no_record": True,
                "enforce_invalid_record": True,
                "enforce_tempfail": False,
                "never_reject": ["Postmaster", "hostmaster"],
            }
        }
    )
    assert (c.enforce_no_record, c.enforce_invalid_record, c.enforce_tempfail) == (True, True, False)
    assert c.never_reject == ("postmaster", "hostmaster")
    d = Config()
    assert (d.enforce_no_record, d.enforce_invalid_record, d.enforce_tempfail) == (False, False, True)
    assert d.never_reject == ("postmaster", "abuse")


@pytest.mark.parametrize(
    "text,expected",
    [
        pytest.param("1.2.3.4", "1.2.3.4", id="plain"),
        pytest.param("1.2.3.4:5353", "1.2.3.4:5353", id="with-port"),
        pytest.param("2001:DB8::53", "2001:db8::53", id="v6"),
        pytest.param("[2001:db8::53]:5300", "[2001:db8::53]:5300", id="v6-with-port"),
        pytest.param("[2001:db8::53]", "2001:db8::53", id="v6-brackets-no-port"),
    ],
)
def test_nameserver_forms(text, expected):
    c = config_from_mapping({"dns": {"nameservers": [text]}})
    assert c.nameservers == (expected,)


@pytest.mark.parametrize(
    "text,address",
    [
        pytest.param("localhost:11340", ("127.0.0.1", 11340), id="localhost"),
        pytest.param("LOCALHOST", ("127.0.0.1", 11340), id="localhost-no-port"),
        pytest.param("[::1]:1", ("::1", 1), id="v6"),
    ],
)
def test_listen_forms(text, address):
    assert config_from_mapping({"server": {"listen": text}}).listen == address


def test_secret_file_drops_the_line_break_only(tmp_path):
    (tmp_path / "s").write_bytes(b" sixteen chars and more \r\n")
    c = config_from_mapping({"server": {"secret_file": "s"}}, base_dir=str(tmp_path))
    assert c.secret == " sixteen chars and more "
    (tmp_path / "s").write_bytes(b"first line of it\nsecond line\n")
    with pytest.raises(ConfigError, match="more than one line"):
        config_from_mapping({"server": {"secret_file": "s"}}, base_dir=str(tmp_path))
