"""The systemd unit shipped in contrib/ says what the README promises."""

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
