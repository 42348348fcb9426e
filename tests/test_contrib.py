"""The systemd unit shipped in contrib/ says what the README promises."""

from __future__ import annotations

import configparser
from pathlib import Path

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
