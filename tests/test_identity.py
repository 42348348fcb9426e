"""HELO validation and the Registered ID (docs/scoring.md, step 3)."""

from __future__ import annotations

import pytest

from rspamd_regcheck import BadHelo, Identity, id_at_level, identify

GOOD = [
    pytest.param("mailout17.heaven.net", "mailout17.heaven.net", "heaven.net", id="seed-heaven"),
    pytest.param("mx1.spammer.tld", "mx1.spammer.tld", "spammer.tld", id="unknown-tld"),
    pytest.param("mx1.abilene.texas.rr.tld", "mx1.abilene.texas.rr.tld", "rr.tld", id="deep-name"),
    pytest.param("mx1.example.co.uk", "mx1.example.co.uk", "example.co.uk", id="psl-splits-co-uk"),
    pytest.param("MX1.Heaven.NET.", "mx1.heaven.net", "heaven.net", id="upper-case-trailing-dot"),
    pytest.param("heaven.net", "heaven.net", "heaven.net", id="helo-is-the-id"),
    pytest.param("mx.Bücher.example", "mx.xn--bcher-kva.example", "xn--bcher-kva.example", id="idn-u-label"),
    pytest.param("mx.xn--bcher-kva.example", "mx.xn--bcher-kva.example", "xn--bcher-kva.example", id="idn-a-label"),
    pytest.param("a.b.github.io", "a.b.github.io", "b.github.io", id="psl-private-section"),
    pytest.param(" mx.heaven.net ", "mx.heaven.net", "heaven.net", id="surrounding-space"),
    pytest.param("mx-1.h3aven.net", "mx-1.h3aven.net", "h3aven.net", id="digits-and-hyphen"),
    pytest.param("a" * 63 + ".net", "a" * 63 + ".net", "a" * 63 + ".net", id="label-63"),
]


@pytest.mark.parametrize("helo,name,ident", GOOD)
def test_valid_helo(helo, name, ident):
    assert identify(helo) == Identity(helo=name, id=ident)


BAD = [
    pytest.param(None, "missing", id="none"),
    pytest.param("", "missing", id="empty"),
    pytest.param("   ", "missing", id="blank"),
    pytest.param("JUPITER", "bare-word", id="seed-jupiter"),
    pytest.param("localhost.", "bare-word", id="bare-word-dot"),
    pytest.param("192.0.2.1", "ip-literal", id="ipv4"),
    pytest.param("192.0.2.1.", "ip-literal", id="ipv4-dot"),
    pytest.param("[192.0.2.1]", "ip-literal", id="address-literal"),
    pytest.param("[IPv6:2001:db8::1]", "ip-literal", id="ipv6-literal"),
    pytest.param("2001:db8::1", "ip-literal", id="ipv6-bare"),
    pytest.param("mx.heaven\x00.net", "nul", id="nul"),
    pytest.param("mx.heaven.net\r\nRCPT TO:<x>", "control-char", id="crlf-injection"),
    pytest.param("mx..heaven.net", "empty-label", id="empty-label"),
    pytest.param(".heaven.net", "empty-label", id="leading-dot"),
    pytest.param("a" * 64 + ".net", "label-too-long", id="label-64"),
    pytest.param(".".join(["abcdefghi"] * 26), "too-long", id="name-over-253"),
    pytest.param("x" * 5000, "too-long", id="huge-input"),
    pytest.param("mx_1.heaven.net", "bad-label", id="underscore"),
    pytest.param("-mx.heaven.net", "bad-label", id="leading-hyphen"),
    pytest.param("mx-.heaven.net", "bad-label", id="trailing-hyphen"),
    pytest.param("mx heaven.net", "bad-label", id="space-inside"),
    pytest.param("mx.heaven.123", "numeric-tld", id="numeric-tld"),
    pytest.param("xn--zz.example", "bad-idn", id="broken-a-label"),
    pytest.param("mx.\u2603\u0301.example", "bad-idn", id="disallowed-idn"),
    pytest.param("co.uk", "public-suffix", id="public-suffix"),
]


@pytest.mark.parametrize("helo,reason", BAD)
def test_bad_helo(helo, reason):
    found = identify(helo)
    assert isinstance(found, BadHelo)
    assert found.reason == reason
    assert "\x00" not in found.text and "\r" not in found.text


@pytest.mark.parametrize(
    "helo,level,expected",
    [
        pytest.param("mx.cust1.hoster.test", 3, "cust1.hoster.test", id="three"),
        pytest.param("mx.cust1.hoster.test", 4, "mx.cust1.hoster.test", id="four-is-whole-name"),
        pytest.param("cust1.hoster.test", 5, None, id="deeper-than-helo"),
    ],
)
def test_id_at_level(helo, level, expected):
    assert id_at_level(helo, level) == expected
