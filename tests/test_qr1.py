"""QR1: the client IP against the record's netblocks, by address family."""

from __future__ import annotations

import ipaddress

import pytest

from rspamd_regcheck import Method, Result, parse_record, qr1

CASES = [
    pytest.param("ip4=208.20.133.16/29", "208.20.133.17", Result.PASS, "208.20.133.16/29", id="seed-pass"),
    pytest.param("ip4=208.20.133.16/29", "208.20.133.32", Result.FAIL, "208.20.133.32", id="seed-fail"),
    pytest.param("ip4=208.20.133.16/29", "208.20.133.23", Result.PASS, "208.20.133.16/29", id="last-in-block"),
    pytest.param("ip4=208.20.133.16/29", "208.20.133.24", Result.FAIL, "208.20.133.24", id="first-after-block"),
    pytest.param("ip4=216.183.68.0/24,192.0.0.0/22", "192.0.3.77", Result.PASS, "192.0.0.0/22", id="second-item"),
    pytest.param("ip4=192.168.128.0/22", "192.168.128.77", Result.PASS, "192.168.128.0/22", id="seed-doc-pass"),
    pytest.param("ip4=192.0.2.1", "192.0.2.1", Result.PASS, "192.0.2.1", id="single-address"),
    pytest.param("ip4=192.0.2.1", "192.0.2.2", Result.FAIL, "192.0.2.2", id="single-address-miss"),
    pytest.param("ip4=192.168.92.216-218", "192.168.92.218", Result.PASS, "192.168.92.216-218", id="range-end"),
    pytest.param("ip4=192.168.92.216-218", "192.168.92.219", Result.FAIL, "192.168.92.219", id="range-past-end"),
    pytest.param("ip4=192.0.2.0/24", "::ffff:192.0.2.9", Result.PASS, "192.0.2.0/24", id="v4-mapped-client"),
    pytest.param("ip6=2001:db8:6::/48", "2001:db8:6:1::25", Result.PASS, "2001:db8:6::/48", id="ipv6-pass"),
    pytest.param("ip6=2001:db8:6::/48", "2001:db8:7::25", Result.FAIL, "2001:db8:7::25", id="ipv6-fail"),
    pytest.param("ip4=0.0.0.0/0 ip6=2001:db8::/32", "2001:db9::1", Result.FAIL, "2001:db9::1", id="family-list"),
    pytest.param("ip6=::/0", "192.0.2.1", Result.FAIL, "192.0.2.1", id="v4-client-v6-list-only"),
]


@pytest.mark.parametrize("record,ip,result,option", CASES)
def test_qr1(record, ip, result, option):
    outcome = qr1(parse_record(record), ipaddress.ip_address(ip))
    assert outcome.method is Method.QR1
    assert outcome.result is result
    assert outcome.options == (option,)
