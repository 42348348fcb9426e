"""The systemd unit shipped in contrib/ says what docs/install-and-operate.md promises."""

from __future__ import annotations

import configparser
from pathlib import Path

from rspamd_regcheck import Config

UNIT = Path(__file__).parent.parent / "contrib" / "rspamd-regcheck.service"


def test_systemd_unit():
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # systemd keys are case-sensitive
    unit.read(UNIT)
    service = unit["Service"]
    assert service["DynamicUser"] == "yes" and "User" not in service  # an unprivileged user of its own
    assert service["Restart"] == "on-failure"
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"  # SIGHUP: reload in place
    assert service["KillSignal"] == "SIGTERM"  # SIGTERM: drain, then exit
    assert service["ExecStart"].endswith(" serve")
    assert service["NoNewPrivileges"] == "yes" and service["CapabilityBoundingSet"] == ""
    assert int(service["TimeoutStopSec"]) >= 15  # longer than the workers' drain
    assert unit["Install"]["WantedBy"] == "multi-user.target"
    # the sum docs/dns-security.md gives, for the defaults and three nameservers
    c = Config()
    need = c.max_connections + 1 + 4 * c.dns_sockets * 3 + 64
    assert int(service["LimitNOFILE"]) >= need


def test_unit_checks_quietly_and_points_at_our_docs():
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str
    unit.read(UNIT)
    # config check --quiet: the same judgement as serve, without the whole config in the journal
    assert unit["Service"]["ExecStartPre"].endswith(" config check --quiet")
    doc = unit["Unit"]["Documentation"]
    assert doc == "file:/usr/share/doc/rspamd-regcheck/operations.md"
    assert (UNIT.parent.parent / "docs" / "operations.md").is_file()


def test_unit_offers_the_secret_as_a_credential_the_worker_reads():
    """The commented LoadCredential= line names the file that server.secret_file finds in
    $CREDENTIALS_DIRECTORY (tests/test_operations.py runs that), as docs/operations.md shows."""
    line = next(x for x in UNIT.read_text().splitlines() if "LoadCredential=" in x)
    name, _, source = line.lstrip("#").split("=", 1)[1].partition(":")
    assert source == "/etc/rspamd-regcheck/regcheck.secret"
    docs = (UNIT.parent.parent / "docs" / "operations.md").read_text()
    assert f'secret_file = "{name}"' in docs and line.lstrip("#") in docs


def test_postfix_docs_show_the_snippets_the_tests_run():
    """docs/postfix.md shows contrib/postfix/'s files line for line (tests/test_postfix.py runs them)."""
    root = Path(__file__).parent.parent
    docs = (root / "docs" / "postfix.md").read_text()
    main_cf = [
        line
        for line in (root / "contrib" / "postfix" / "main.cf").read_text().splitlines()
        if line[:1] not in ("#", "")
    ]
    assert len(main_cf) == 3
    for line in main_cf:
        assert f"\n   {line}\n" in docs, line
    for line in (root / "contrib" / "postfix" / "regcheck.toml").read_text().splitlines():
        assert f"\n   {line}\n" in docs, line
