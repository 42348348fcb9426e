"""The exceptions rspamd-regcheck raises.

    RegcheckError               root of every error this package raises
    +-- ConfigError             a configuration key is unknown or its value is bad
    +-- InvalidRecord           a registry record breaks the REG1 syntax
    +-- InvalidZoneFile         a local zone file (--zone-file) cannot be loaded
    +-- ListenError             an address the worker is to listen on cannot be had

Facts about the outside world (a sender's bad HELO, a registry that times
out) are not exceptions: the check turns them into symbols.  These classes
cover input the operator gave us, and record text, which the fetcher turns
into a ``REGCHECK_RECORD_PERMFAIL`` fact.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._types import hostport

if TYPE_CHECKING:
    from ._unixsock import UnixAddress


class RegcheckError(Exception):
    """Root of the errors raised by rspamd-regcheck."""


class ConfigError(RegcheckError):
    """A configuration value is unknown or bad; ``key`` names it (dotted path)."""

    def __init__(self, key: str, why: str):
        super().__init__(f"{key}: {why}")
        self.key = key
        self.why = why


class InvalidRecord(RegcheckError):
    """A registry record does not follow the REG1 syntax.

    ``reasons`` holds one message per problem, each starting with the key it
    concerns (``svc: given twice``).
    """

    def __init__(self, reasons: tuple[str, ...]):
        super().__init__("; ".join(reasons))
        self.reasons = reasons


class InvalidZoneFile(RegcheckError):
    """A zone file given with --zone-file (or dns.zone_files) cannot be loaded."""

    def __init__(self, path: str, why: str):
        super().__init__(f"zone file {path}: {why}")
        self.path = path


class ListenError(RegcheckError):
    """An address to listen on (server.listen, server.metrics_listen, policy_server.listen) is in use
    or not ours; *address* is a (host, port) pair or a UNIX socket's path (``unix:/path``)."""

    def __init__(self, address: tuple[str, int] | UnixAddress, why: str):
        where = hostport(*address) if isinstance(address, tuple) else str(address)
        super().__init__(f"cannot listen on {where}: {why}")
        self.address = address
        self.why = why
