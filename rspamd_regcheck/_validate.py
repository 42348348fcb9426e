"""The one way a configuration is read and judged: ``config check``, ``serve``
at start and ``serve`` on SIGHUP all call `load_checked`, so what one accepts
the others accept.

`config.load_config` reads the file and checks each key on its own (type,
range, syntax).  `check_config` then judges what only makes sense together or
what makes a rule meaningless, and names every key involved.  Finally the zone
files are loaded, as the worker will load them.  Whatever the file holds, the
only exceptions are `ConfigError` and `InvalidZoneFile` (both `RegcheckError`),
each one line of text.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from .config import PLUGIN_TIMEOUT, Config, hostport, load_config
from .errors import ConfigError


@dataclass(frozen=True)
class Checked:
    """A configuration that passed, with what is worth a warning but not a refusal."""

    config: Config
    warnings: tuple[str, ...] = ()


def load_checked(
    path: str | None,
    registries: tuple[str, ...] = (),
    nameserver: str | None = None,
    zone_files: tuple[str, ...] = (),
    listen: str | None = None,
) -> Checked:
    """Read the file at *path* (None: the defaults), apply the command line's
    options, judge the result and load its zone files.

    :raises ConfigError: on a file that cannot be read or parsed, or a bad value;
        the message names the key (or keys) and is one line.
    :raises InvalidZoneFile: when a zone file cannot be loaded.
    """
    config = load_config(path).with_overrides(registries, nameserver, zone_files, listen)
    warnings = check_config(config)
    from ._check import make_resolver  # the DNS layer loads the zone files exactly as a worker will

    make_resolver(config).close()
    return Checked(config, warnings)


def check_config(config: Config) -> tuple[str, ...]:
    """Judge *config* as a whole; returns the warnings.

    :raises ConfigError: for a configuration the worker must not run with.
    """
    warnings: list[str] = []
    if not config.registry_zones and config.registry_fallback == "none":
        raise ConfigError(
            "registry.zones",
            "no registry zone configured: set registry.zones or give --registry ZONE"
            ' (or registry.fallback = "authenticate" to check without a registry)',
        )
    host, port = config.listen
    if not ipaddress.ip_address(host).is_loopback and not config.secret:
        raise ConfigError(
            "server.secret",
            f"not set, and server.listen ({hostport(host, port)}) is beyond loopback: set server.secret "
            "or server.secret_file (rspamd sends it as Password)",
        )
    if config.metrics_listen is not None:
        mhost, mport = config.metrics_listen
        if not ipaddress.ip_address(mhost).is_loopback:
            raise ConfigError(
                "server.metrics_listen",
                f"{hostport(mhost, mport)} is beyond loopback and asks no secret; keep it on loopback, "
                "or scrape server.listen with Authorization: Bearer <server.secret>",
            )
        if mport == port:
            raise ConfigError("server.metrics_listen", f"port {mport} is server.listen's port too")
    if isinstance(config.policy_server.listen, tuple):  # (a UNIX socket shares no port)
        # every listener has SO_REUSEPORT: on a shared port the kernel would mix the protocols
        pport = config.policy_server.listen[1]
        taken = {"server.listen": port}
        if config.metrics_listen is not None:
            taken["server.metrics_listen"] = config.metrics_listen[1]
        for other, used in taken.items():
            if pport == used:
                raise ConfigError(
                    "policy_server.listen", f"port {pport} is the HTTP listener's ({other}); give it a port of its own"
                )
    r = config.ratings
    if not r.services:
        raise ConfigError("services", "no rating service: no ID could ever have a trusted rating")
    if r.enough_weight < 0:
        raise ConfigError("ratings.enough_weight", f"{r.enough_weight:g} is below 0: no rating would ever be read")
    for key in ("reject_below", "min_allowed"):
        value = getattr(r, key)
        if value > r.top:
            raise ConfigError(
                f"ratings.{key}",
                f"{value:g} is above every score in services.*.ratings (the best is {r.top:g}): "
                "every rated ID would be bad",
            )
    for key in ("high_min", "high_max"):
        value = getattr(r, key)
        if value >= r.top:
            warnings.append(
                f"ratings.{key}: {value:g} is not below the best score in services.*.ratings ({r.top:g}): "
                "no ID can be rated high"
            )
    if not config.method_order:
        raise ConfigError("methods.order", "empty: no method could verify a sender")
    if config.deadline >= PLUGIN_TIMEOUT:
        warnings.append(
            f"dns.deadline: {config.deadline:g} s is not below the plugin's default timeout ({PLUGIN_TIMEOUT:g} s): "
            "raise the plugin's timeout above it, or rspamd gives up before the worker answers"
        )
    return tuple(warnings)


__all__ = ["Checked", "check_config", "load_checked"]
