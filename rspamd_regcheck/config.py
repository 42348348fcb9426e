"""Worker configuration: one TOML file, every key optional (docs/configuration.md).

Defaults are the seed's values, except the registry zone, which has none:
whoever runs a zone can rate any sender or mark it ``stop=all``, so the
operator must choose one.  Unknown keys and bad values raise `ConfigError`
naming the key as a dotted path (``ratings.enough_weight``).
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import socket
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from ._enforce import EnforceAction
from ._policy import CHECK_STATES, DEFAULT_ACTIONS, REFUSABLE, Kind, PolicySettings
from ._prescreen import CodeRange, DnsblZone, parse_code_range
from ._ratings import SEED_SERVICES, CodePattern, RatingPolicy, ServiceScale, parse_code_pattern
from ._services import ASK_MODES, DnsService, ServiceSpec, VbrService, local_service
from ._spf import ALIGNMENTS
from ._types import IPNetwork, Method, hostport
from ._unixsock import PREFIX as UNIX_PREFIX
from ._unixsock import UnixAddress, group_id, mode_text, parse_mode, parse_unix
from .errors import ConfigError
from .symbols import BY_NAME

T = TypeVar("T")

# rspamd 3.4's local_addrs plus loopback (docs/scoring.md, step 1); documentation ranges are not local.
DEFAULT_LOCAL_NETWORKS = (
    "127.0.0.0/8",
    "::1/128",
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "169.254.0.0/16",
    "fd00::/8",
    "fe80::/10",
)
# Relays whose Received headers are trusted when the envelope comes from the message (SPAMC):
# loopback only, as SpamAssassin's trusted_networks always includes it.
DEFAULT_TRUSTED_RELAYS = ("127.0.0.0/8", "::1/128")
# The seed's order and limits, and DKIM last: it asks no DNS question (rspamd verified the signatures).
SEED_METHOD_ORDER = (Method.QR1, Method.CSA, Method.SPF, Method.SID, Method.DKIM)
SEED_METHOD_LIMITS = {Method.QR1: 0, Method.CSA: 4, Method.SPF: 30, Method.SID: 30, Method.DKIM: 10}
MODES = ("score", "enforce")
NEVER_REJECT = ("postmaster", "abuse")  # RFC 5321 4.5.1 and RFC 2142: these must always reach someone
PLUGIN_TIMEOUT = 4.0  # seconds: the plugin's default timeout (lua_shim/regcheck.lua, rules/regcheck.conf)
MIN_SECRET = 16  # characters of a shared secret
MAX_CONFIG_BYTES = 1024 * 1024  # a configuration file is a few KiB; /dev/zero is not one
CREDENTIALS_ENV = "CREDENTIALS_DIRECTORY"  # systemd's LoadCredential= puts the files there
LEVELS = ("debug", "info", "warning", "error")
FORMATS = ("text", "json")
FALLBACKS = ("none", "authenticate")  # registry.fallback: what a sender no registry lists gets
_ZONE_NAME = re.compile(r"(?:[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9])?\.)*[A-Za-z0-9-]{1,63}\.?")
_HEADER_NAME = re.compile(r"[!-9;-~]+")  # RFC 5322 3.6.8 field name


@dataclass(frozen=True)
class Thresholds:
    """Score thresholds for the action of a standalone reply (score mode)."""

    reject: float = 15.0
    add_header: float = 6.0
    greylist: float = 4.0


@dataclass(frozen=True)
class Config:
    """The effective configuration."""

    registry_zones: tuple[str, ...] = ()
    registry_fallback: str = "none"  # "authenticate": no record anywhere -> as if meth=SPF (docs/rating-services.md)
    rating_services: tuple[ServiceSpec, ...] = ()  # services that answer for themselves, in config order
    listen: tuple[str, int] = ("127.0.0.1", 11340)
    workers: int = 1  # worker processes sharing the port
    secret: str = ""  # the shared secret rspamd sends as Password; needed beyond loopback
    secret_file: str = ""  # where the secret was read from (server.secret_file), for config check
    metrics_listen: tuple[str, int] | None = None  # a second listener serving only /metrics, no secret
    max_connections: int = 1024  # open connections per worker
    max_header_bytes: int = 65536  # bytes of HTTP request header fields
    body_limit: int = 10 * 1024 * 1024  # bytes of a request body (the message; only its header block is kept)
    max_headers: int = 100  # HTTP request header fields
    request_timeout: float = 10.0  # seconds for a client to send one request
    idle_timeout: float = 60.0  # seconds a kept-alive connection may sit idle
    nameservers: tuple[str, ...] = ()  # empty: the system's resolvers
    dns_port: int = 53
    dns_timeout: float = 2.0  # per question, all tries together
    dns_tries: int = 2
    cache_size: int = 50_000  # answers
    result_cache_size: int = 10_000  # check results reused while their DNS answers are cached; 0: off
    negative_ttl: int = 0  # seconds, for NXDOMAIN/NODATA without an SOA (RFC 2308 5: not cached)
    max_negative_ttl: int = 3600  # seconds, the cap on an SOA-derived negative TTL (as unbound)
    max_ttl: int = 86_400
    dns_sockets: int = 64  # UDP source ports per server (RFC 5452 9.2)
    dns_rotate_every: int = 4  # tries on a server between two new ports
    case_randomise: bool = False  # 0x20: questions in mixed case, echoed or dropped
    trusted_validators: tuple[str, ...] = ()  # resolvers whose AD bit counts (besides loopback)
    require_dnssec: bool = False  # registry answers count only with the AD bit of a trusted validator
    max_queries: int = 100  # per check: registry, DNSBL and methods together
    deadline: float = 3.0  # seconds per check; then it answers with what it has
    max_inflight: int = 1000  # DNS questions on the wire at once, per worker
    zone_files: tuple[str, ...] = ()
    prescreen: tuple[DnsblZone, ...] = ()
    ratings: RatingPolicy = field(default_factory=RatingPolicy)
    method_order: tuple[Method, ...] = SEED_METHOD_ORDER
    method_limits: Mapping[Method, int] = field(default_factory=lambda: dict(SEED_METHOD_LIMITS))
    authent_header: str = "X-Regcheck"
    log_level: str = "info"
    log_format: str = "text"
    log_mask_clients: bool = False
    spf_alignment: str = "relaxed"
    spf_receiver: str = field(default_factory=socket.gethostname)
    mode: str = "score"
    enforce_no_record: bool = False  # enforce mode rejects an ID with no registry record
    enforce_invalid_record: bool = False  # enforce mode defers an ID whose record is invalid
    enforce_tempfail: bool = True  # enforce mode defers mail when DNS fails (the seed's TEMPFAIL)
    never_reject: tuple[str, ...] = NEVER_REJECT  # recipients' local parts enforce mode never refuses
    local_networks: tuple[IPNetwork, ...] = tuple(ipaddress.ip_network(n) for n in DEFAULT_LOCAL_NETWORKS)
    skip_authenticated: bool = True
    trusted_relays: tuple[IPNetwork, ...] = tuple(ipaddress.ip_network(n) for n in DEFAULT_TRUSTED_RELAYS)
    thresholds: Thresholds = field(default_factory=Thresholds)
    scores: Mapping[str, float] = field(default_factory=lambda: {s.name: s.score for s in BY_NAME.values()})
    policy_server: PolicySettings = field(default_factory=PolicySettings)

    def with_overrides(
        self,
        registries: tuple[str, ...] = (),
        nameserver: str | None = None,
        zone_files: tuple[str, ...] = (),
        listen: str | None = None,
    ) -> Config:
        """Apply the command line's options (they add to, or replace, the file's values).

        :raises ConfigError: naming the option.
        """
        cfg = self
        if listen is not None:
            cfg = replace(cfg, listen=parse_listen("--listen", listen, 11340))
        if registries:
            zones = tuple(_zone("--registry", z) for z in registries)
            cfg = replace(cfg, registry_zones=cfg.registry_zones + zones)
        if nameserver is not None:
            host, port = parse_hostport("--nameserver", nameserver, cfg.dns_port)
            cfg = replace(cfg, nameservers=(host,), dns_port=port)
        if zone_files:
            cfg = replace(cfg, zone_files=cfg.zone_files + tuple(zone_files))
        return cfg

    def to_toml(self) -> str:
        """The effective configuration, written back as TOML (``config check``)."""
        host, port = self.listen
        lines = ["[server]", f'listen = "{hostport(host, port)}"']
        lines.append(f"workers = {self.workers}")
        if self.secret_file:
            lines.append(f"secret_file = {_toml_str(self.secret_file)}  # read: {len(self.secret)} characters")
        else:
            lines.append(f"# secret: {'set (not shown)' if self.secret else 'not set'}")
        if self.metrics_listen is not None:
            lines.append(f'metrics_listen = "{hostport(*self.metrics_listen)}"')
        lines.append(f"body_limit = {self.body_limit}")
        lines.append(f"max_header_bytes = {self.max_header_bytes}")
        lines.append(f"max_connections = {self.max_connections}")
        lines.append(f"max_headers = {self.max_headers}")
        lines.append(f"request_timeout = {self.request_timeout}")
        lines.append(f"idle_timeout = {self.idle_timeout}")
        lines += ["", "[log]", f'level = "{self.log_level}"', f'format = "{self.log_format}"']
        lines.append(f"mask_clients = {str(self.log_mask_clients).lower()}")
        lines += ["", "[dns]"]
        lines.append(f"nameservers = {_toml_list(hostport(h, p) for h, p in self.dns_servers)}")
        lines.append(f"port = {self.dns_port}")
        lines.append(f"timeout = {self.dns_timeout}")
        lines.append(f"tries = {self.dns_tries}")
        lines.append(f"cache_size = {self.cache_size}")
        lines.append(f"result_cache_size = {self.result_cache_size}")
        lines.append(f"negative_ttl = {self.negative_ttl}")
        lines.append(f"max_negative_ttl = {self.max_negative_ttl}")
        lines.append(f"max_ttl = {self.max_ttl}")
        lines.append(f"sockets = {self.dns_sockets}")
        lines.append(f"rotate_every = {self.dns_rotate_every}")
        lines.append(f"case_randomise = {str(self.case_randomise).lower()}")
        lines.append(f"trusted_validators = {_toml_list(self.trusted_validators)}")
        lines.append(f"max_queries = {self.max_queries}")
        lines.append(f"deadline = {self.deadline}")
        lines.append(f"max_inflight = {self.max_inflight}")
        lines.append(f"zone_files = {_toml_list(self.zone_files)}")
        lines += ["", "[registry]", f"zones = {_toml_list(self.registry_zones)}"]
        lines.append(f'fallback = "{self.registry_fallback}"')
        lines.append(f"require_dnssec = {str(self.require_dnssec).lower()}")
        for z in self.prescreen:
            lines += ["", "[[prescreen.zones]]", f'zone = "{z.zone}"', f"ipv6 = {str(z.ipv6).lower()}"]
            if z.nameserver is not None:
                lines.append(f'nameserver = "{hostport(*z.nameserver)}"')
            lines.append(f"blocked = {_toml_list(_range_text(r) for r in z.blocked)}")
            if z.codes:
                lines.append("[prescreen.zones.codes]")
                lines += [f'"{_range_text(r)}" = "{label}"' for r, label in z.codes]
        r = self.ratings
        lines += ["", "[ratings]"]
        for key in ("enough_weight", "reject_below", "min_allowed", "high_min", "high_max"):
            lines.append(f"{key} = {getattr(r, key)}")
        answering = {s.code: s for s in self.rating_services}
        for code, scale in r.services.items():
            table = ", ".join(f"{k} = {v}" for k, v in scale.scores.items())
            lines += ["", f"[services.{code}]", f"weight = {scale.weight}", f"ratings = {{ {table} }}"]
            if code in answering:
                lines += _service_toml(answering[code])
        lines += ["", "[methods]", f"order = {_toml_list([m.value for m in self.method_order])}"]
        limits = ", ".join(f"{m.value} = {n}" for m, n in self.method_limits.items())
        lines.append(f"limits = {{ {limits} }}")
        lines += ["", "[spf]", f'alignment = "{self.spf_alignment}"', f'receiver = "{self.spf_receiver}"']
        lines += ["", "[headers]", f'authent = "{self.authent_header}"']
        lines += ["", "[policy]", f'mode = "{self.mode}"']
        lines.append(f"enforce_no_record = {str(self.enforce_no_record).lower()}")
        lines.append(f"enforce_invalid_record = {str(self.enforce_invalid_record).lower()}")
        lines.append(f"enforce_tempfail = {str(self.enforce_tempfail).lower()}")
        lines.append(f"never_reject = {_toml_list(self.never_reject)}")
        lines.append(f"local_networks = {_toml_list([str(n) for n in self.local_networks])}")
        lines.append(f"skip_authenticated = {str(self.skip_authenticated).lower()}")
        lines.append(f"trusted_relays = {_toml_list([str(n) for n in self.trusted_relays])}")
        t = self.thresholds
        lines += ["", "[scores]", f"reject = {t.reject}", f"add_header = {t.add_header}"]
        lines.append(f"greylist = {t.greylist}")
        lines += ["", "[scores.symbols]"]
        lines += [f"{name} = {score}" for name, score in self.scores.items()]
        lines += _policy_server_toml(self.policy_server)
        return "\n".join(lines) + "\n"

    @property
    def dns_servers(self) -> tuple[tuple[str, int], ...]:
        """The configured nameservers as (address, port): ``dns.port`` unless an entry names its own."""
        return tuple(parse_hostport("dns.nameservers", ns, self.dns_port) for ns in self.nameservers)


def load_config(path: str | None) -> Config:
    """Read and validate the TOML file at *path*; defaults when *path* is None.

    :raises ConfigError: on a file that cannot be read or parsed, an unknown
        key or a bad value.
    """
    if path is None:
        return Config()
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_CONFIG_BYTES + 1)
        if len(raw) > MAX_CONFIG_BYTES:
            raise ConfigError(path, f"larger than {MAX_CONFIG_BYTES} bytes: not a configuration file")
        data = tomllib.loads(raw.decode("utf-8"))
    except OSError as exc:
        raise ConfigError(path, f"cannot read: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:  # TOML is UTF-8 (TOML 1.0 "Spec")
        raise ConfigError(path, f"not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start})") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, f"not valid TOML: {exc}") from exc
    except RecursionError as exc:  # tomllib recurses into nested arrays and inline tables
        raise ConfigError(path, "not valid TOML: nested too deeply") from exc
    return config_from_mapping(data, base_dir=os.path.dirname(os.path.abspath(path)))


def config_from_mapping(data: Mapping[str, Any], base_dir: str = ".") -> Config:
    """Build a `Config` from parsed TOML; relative zone file paths start at *base_dir*.

    :raises ConfigError: on an unknown key or a bad value.
    """
    sections = (
        "server",
        "log",
        "dns",
        "registry",
        "prescreen",
        "services",
        "ratings",
        "methods",
        "spf",
        "headers",
        "policy",
        "scores",
        "policy_server",
    )
    _only(data, "", sections)
    base = Config()
    kw: dict[str, Any] = {}

    srv = _table(
        data,
        "server",
        (
            "listen",
            "workers",
            "secret",
            "secret_file",
            "metrics_listen",
            "body_limit",
            "max_headers",
            "max_header_bytes",
            "max_connections",
            "request_timeout",
            "idle_timeout",
        ),
    )
    if "workers" in srv:
        kw["workers"] = _int(srv["workers"], "server.workers", 1, 64)
    if "secret" in srv:
        secret = _str(srv["secret"], "server.secret")
        if secret and len(secret) < MIN_SECRET:
            raise ConfigError("server.secret", f"use at least {MIN_SECRET} characters")
        kw["secret"] = secret
    if "secret_file" in srv:
        if "secret" in srv:
            raise ConfigError("server.secret_file", "give server.secret or server.secret_file, not both")
        path = _secret_path(_str(srv["secret_file"], "server.secret_file"), base_dir)
        kw["secret_file"], kw["secret"] = path, read_secret("server.secret_file", path)
    if "metrics_listen" in srv:
        text = _str(srv["metrics_listen"], "server.metrics_listen")
        kw["metrics_listen"] = parse_listen("server.metrics_listen", text, 11341)
    if "max_header_bytes" in srv:
        kw["max_header_bytes"] = _int(srv["max_header_bytes"], "server.max_header_bytes", 1024, 1024 * 1024)
    if "max_connections" in srv:
        kw["max_connections"] = _int(srv["max_connections"], "server.max_connections", 1, 100_000)
    if "listen" in srv:
        kw["listen"] = parse_listen("server.listen", _str(srv["listen"], "server.listen"), 11340)
    if "body_limit" in srv:
        kw["body_limit"] = _int(srv["body_limit"], "server.body_limit", 1024, 1024 * 1024 * 1024)
    if "max_headers" in srv:
        kw["max_headers"] = _int(srv["max_headers"], "server.max_headers", 8, 10_000)
    if "request_timeout" in srv:
        kw["request_timeout"] = _number(srv["request_timeout"], "server.request_timeout", 0.1, 3600.0)
    if "idle_timeout" in srv:
        kw["idle_timeout"] = _number(srv["idle_timeout"], "server.idle_timeout", 0.1, 3600.0)

    dns = _table(
        data,
        "dns",
        (
            "nameservers",
            "port",
            "timeout",
            "tries",
            "cache_size",
            "result_cache_size",
            "negative_ttl",
            "max_ttl",
            "max_queries",
            "deadline",
            "max_inflight",
            "zone_files",
            "max_negative_ttl",
            "sockets",
            "rotate_every",
            "case_randomise",
            "trusted_validators",
        ),
    )
    if "nameservers" in dns:
        kw["nameservers"] = tuple(_str_list(dns, "dns.nameservers", "nameservers", _nameserver))
    if "port" in dns:
        kw["dns_port"] = _int(dns["port"], "dns.port", 1, 65535)
    if "timeout" in dns:
        kw["dns_timeout"] = _number(dns["timeout"], "dns.timeout", 0.01, 60.0)
    if "tries" in dns:
        kw["dns_tries"] = _int(dns["tries"], "dns.tries", 1, 10)
    if "cache_size" in dns:
        kw["cache_size"] = _int(dns["cache_size"], "dns.cache_size", 0, 10_000_000)
    if "result_cache_size" in dns:
        kw["result_cache_size"] = _int(dns["result_cache_size"], "dns.result_cache_size", 0, 1_000_000)
    if "negative_ttl" in dns:
        kw["negative_ttl"] = _int(dns["negative_ttl"], "dns.negative_ttl", 0, 86_400)
    if "max_ttl" in dns:
        kw["max_ttl"] = _int(dns["max_ttl"], "dns.max_ttl", 0, 604_800)
    if "max_negative_ttl" in dns:
        kw["max_negative_ttl"] = _int(dns["max_negative_ttl"], "dns.max_negative_ttl", 0, 86_400)
    if "sockets" in dns:
        kw["dns_sockets"] = _int(dns["sockets"], "dns.sockets", 1, 1024)
    if "rotate_every" in dns:
        kw["dns_rotate_every"] = _int(dns["rotate_every"], "dns.rotate_every", 1, 10_000)
    if "case_randomise" in dns:
        kw["case_randomise"] = _bool(dns["case_randomise"], "dns.case_randomise")
    if "trusted_validators" in dns:
        kw["trusted_validators"] = tuple(_str_list(dns, "dns.trusted_validators", "trusted_validators", _nameserver))
    if "max_queries" in dns:
        kw["max_queries"] = _int(dns["max_queries"], "dns.max_queries", 1, 1000)
    if "deadline" in dns:
        kw["deadline"] = _number(dns["deadline"], "dns.deadline", 0.05, 120.0)
    if "max_inflight" in dns:
        # below 65,536: every question in flight to one server needs a query ID of its own
        kw["max_inflight"] = _int(dns["max_inflight"], "dns.max_inflight", 1, 50_000)

    lg = _table(data, "log", ("level", "format", "mask_clients"))
    if "level" in lg:
        level = _str(lg["level"], "log.level")
        if level not in LEVELS:
            raise ConfigError("log.level", f"{level!r} is not one of {', '.join(LEVELS)}")
        kw["log_level"] = level
    if "format" in lg:
        fmt = _str(lg["format"], "log.format")
        if fmt not in FORMATS:
            raise ConfigError("log.format", f"{fmt!r} is not one of {', '.join(FORMATS)}")
        kw["log_format"] = fmt
    if "mask_clients" in lg:
        kw["log_mask_clients"] = _bool(lg["mask_clients"], "log.mask_clients")
    if "zone_files" in dns:
        files = _str_list(dns, "dns.zone_files", "zone_files", lambda k, v: v)
        kw["zone_files"] = tuple(os.path.normpath(os.path.join(base_dir, f)) for f in files)

    reg = _table(data, "registry", ("zones", "fallback", "require_dnssec"))
    if "zones" in reg:
        kw["registry_zones"] = tuple(_str_list(reg, "registry.zones", "zones", _zone))
    if "fallback" in reg:
        fallback = _str(reg["fallback"], "registry.fallback")
        if fallback not in FALLBACKS:
            raise ConfigError("registry.fallback", f"{fallback!r} is not one of {', '.join(FALLBACKS)}")
        kw["registry_fallback"] = fallback
    if "require_dnssec" in reg:
        kw["require_dnssec"] = _bool(reg["require_dnssec"], "registry.require_dnssec")

    pre = _table(data, "prescreen", ("zones",))
    if "zones" in pre:
        if not isinstance(pre["zones"], list):
            raise ConfigError("prescreen.zones", f"expected a list of tables, got {_kind(pre['zones'])}")
        kw["prescreen"] = tuple(_dnsbl(f"prescreen.zones[{i}]", z) for i, z in enumerate(pre["zones"]))

    policy_kw: dict[str, Any] = {}
    rat = _table(data, "ratings", ("enough_weight", "reject_below", "min_allowed", "high_min", "high_max"))
    for key, value in rat.items():
        policy_kw[key] = _number(value, f"ratings.{key}", -1000.0, 1000.0)
    if "services" in data:
        policy_kw["services"], kw["rating_services"] = _services(data["services"], base_dir)
        policy_kw["answering"] = frozenset(s.code for s in kw["rating_services"])
    kw["ratings"] = RatingPolicy(**policy_kw)

    meth = _table(data, "methods", ("order", "limits"))
    if "order" in meth:
        order = _str_list(meth, "methods.order", "order", _method)
        if len(set(order)) != len(order):
            raise ConfigError("methods.order", "a method is listed twice")
        kw["method_order"] = tuple(order)
    if "limits" in meth:
        limits = dict(SEED_METHOD_LIMITS)
        table = _mapping(meth["limits"], "methods.limits")
        for name, value in table.items():
            limits[_method(f"methods.limits.{name}", name)] = _int(value, f"methods.limits.{name}", 0, 999)
        kw["method_limits"] = limits

    spf_table = _table(data, "spf", ("alignment", "receiver"))
    if "alignment" in spf_table:
        alignment = _str(spf_table["alignment"], "spf.alignment")
        if alignment not in ALIGNMENTS:
            raise ConfigError("spf.alignment", f"{alignment!r} is not one of {', '.join(ALIGNMENTS)}")
        kw["spf_alignment"] = alignment
    if kw.get("registry_fallback") == "authenticate" and kw.get("spf_alignment", base.spf_alignment) != "relaxed":
        # An assumed record vouches for nothing: only an SPF identity aligned with the ID may authenticate it.
        raise ConfigError("registry.fallback", '"authenticate" needs spf.alignment = "relaxed"')
    if "receiver" in spf_table:
        receiver = _str(spf_table["receiver"], "spf.receiver")
        if not receiver or any(c.isspace() or c in ";()" for c in receiver):
            raise ConfigError("spf.receiver", f"{receiver!r} is not a host name")
        kw["spf_receiver"] = receiver

    hdr = _table(data, "headers", ("authent",))
    if "authent" in hdr:
        name = _str(hdr["authent"], "headers.authent")
        if not _HEADER_NAME.fullmatch(name):
            raise ConfigError("headers.authent", f"{name!r} is not a header field name")
        kw["authent_header"] = name

    pol = _table(
        data,
        "policy",
        (
            "mode",
            "local_networks",
            "skip_authenticated",
            "enforce_no_record",
            "enforce_invalid_record",
            "enforce_tempfail",
            "never_reject",
            "trusted_relays",
        ),
    )
    for key in ("enforce_no_record", "enforce_invalid_record", "enforce_tempfail"):
        if key in pol:
            kw[key] = _bool(pol[key], f"policy.{key}")
    if "never_reject" in pol:
        kw["never_reject"] = tuple(_str_list(pol, "policy.never_reject", "never_reject", _local_part))
    if "mode" in pol:
        mode = _str(pol["mode"], "policy.mode")
        if mode not in MODES:
            raise ConfigError("policy.mode", f"{mode!r} is not one of {', '.join(MODES)}")
        kw["mode"] = mode
    if "local_networks" in pol:
        kw["local_networks"] = tuple(_str_list(pol, "policy.local_networks", "local_networks", _net))
    if "skip_authenticated" in pol:
        kw["skip_authenticated"] = _bool(pol["skip_authenticated"], "policy.skip_authenticated")
    if "trusted_relays" in pol:
        kw["trusted_relays"] = tuple(_str_list(pol, "policy.trusted_relays", "trusted_relays", _net))

    sc = _table(data, "scores", ("reject", "add_header", "greylist", "symbols"))
    th = {k: _number(sc[k], f"scores.{k}", -1000.0, 1000.0) for k in ("reject", "add_header", "greylist") if k in sc}
    kw["thresholds"] = Thresholds(**th)
    if "symbols" in sc:
        scores = dict(base.scores)
        for name, value in _mapping(sc["symbols"], "scores.symbols").items():
            if name not in BY_NAME:
                raise ConfigError(f"scores.symbols.{name}", "unknown symbol")
            scores[name] = _number(value, f"scores.symbols.{name}", -1000.0, 1000.0)
        kw["scores"] = scores
    if "policy_server" in data:
        kw["policy_server"] = _policy_server(data["policy_server"])
    return replace(base, **kw)


def parse_hostport(key: str, text: str, default_port: int) -> tuple[str, int]:
    """Split ``HOST[:PORT]`` (``[v6]:PORT`` for IPv6); the host must be an IP address.

    :raises ConfigError: naming *key*.
    """
    host, port = text, default_port
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest:
            if not rest.startswith(":"):
                raise ConfigError(key, f"{text!r} is not HOST[:PORT]")
            port = _int_text(rest[1:], key)
    elif text.count(":") == 1:
        host, _, p = text.partition(":")
        port = _int_text(p, key)
    try:
        ipaddress.ip_address(host)
    except ValueError as exc:
        raise ConfigError(key, f"{host!r} is not an IP address") from exc
    return host, port


def parse_listen(key: str, text: str, default_port: int) -> tuple[str, int]:
    """A listen address: `parse_hostport`, plus ``localhost``, which means 127.0.0.1.

    rspamd and postfix take host names where they listen; a name that resolves
    to several addresses would need several sockets, so only ``localhost`` is
    taken, as the IPv4 loopback address the plugin's default ``servers`` asks.

    :raises ConfigError: naming *key*.
    """
    name, sep, port = text.rpartition(":") if text.count(":") == 1 else (text, "", "")
    if name.lower() == "localhost":
        return "127.0.0.1", _int_text(port, key) if sep else default_port
    return parse_hostport(key, text, default_port)


def read_secret(key: str, path: str) -> str:
    """The shared secret in the file at *path*: its text without the final line break.

    :raises ConfigError: naming *key*, when the file cannot be read or holds no usable secret.
    """
    try:
        with open(path, "rb") as fh:
            data = fh.read(4096 + 1)
    except OSError as exc:
        raise ConfigError(key, f"cannot read {path}: {exc.strerror}") from exc
    if len(data) > 4096:
        raise ConfigError(key, f"{path} is larger than 4096 bytes: not a secret")
    try:
        secret = data.decode("utf-8").removesuffix("\n").removesuffix("\r")
    except UnicodeDecodeError as exc:
        raise ConfigError(key, f"{path} is not UTF-8 text") from exc
    if len(secret) < MIN_SECRET:
        raise ConfigError(key, f"the secret in {path} is shorter than {MIN_SECRET} characters")
    if any(c in "\r\n\x00" for c in secret):
        raise ConfigError(key, f"{path} holds more than one line")
    return secret


def _secret_path(text: str, base_dir: str) -> str:
    """An absolute path stays; a relative one is a systemd credential name when
    ``$CREDENTIALS_DIRECTORY`` is set (``LoadCredential=``), else relative to the config file."""
    if not text:
        raise ConfigError("server.secret_file", "empty path")
    if os.path.isabs(text):
        return text
    return os.path.join(os.environ.get(CREDENTIALS_ENV) or base_dir, text)


# -- validators ----------------------------------------------------------------------------


def _only(data: Mapping[str, Any], prefix: str, allowed: tuple[str, ...]) -> None:
    for key in data:
        if key not in allowed:
            raise ConfigError(f"{prefix}{key}", f"unknown key (expected one of {', '.join(allowed)})")


def _mapping(value: Any, key: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(key, f"expected a table, got {_kind(value)}")
    return value


def _table(data: Mapping[str, Any], name: str, allowed: tuple[str, ...]) -> Mapping[str, Any]:
    table = _mapping(data.get(name, {}), name)
    _only(table, f"{name}.", allowed)
    return table


def _kind(value: Any) -> str:
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "a table",
    }.get(type(value), type(value).__name__)


def _str(value: Any, key: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(key, f"expected a string, got {_kind(value)}")
    return value


def _bool(value: Any, key: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(key, f"expected true or false, got {_kind(value)}")
    return value


def _int(value: Any, key: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(key, f"expected an integer, got {_kind(value)}")
    if not lo <= value <= hi:
        raise ConfigError(key, f"{value} is outside {lo}..{hi}")
    return value


def _int_text(text: str, key: str) -> int:
    if not text.isdigit():
        raise ConfigError(key, f"port {text!r} is not a number")
    return _int(int(text), key, 1, 65535)


def _number(value: Any, key: str, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(key, f"expected a number, got {_kind(value)}")
    if not math.isfinite(value) or not lo <= value <= hi:
        raise ConfigError(key, f"{value} is outside {lo:g}..{hi:g}")
    return float(value)


def _str_list(table: Mapping[str, Any], key: str, name: str, item: Callable[[str, str], T]) -> list[T]:
    value = table[name]
    if not isinstance(value, list):
        raise ConfigError(key, f"expected a list, got {_kind(value)}")
    return [item(f"{key}[{i}]", _str(v, f"{key}[{i}]")) for i, v in enumerate(value)]


def _zone(key: str, text: str) -> str:
    if not _ZONE_NAME.fullmatch(text) or len(text) > 253:
        raise ConfigError(key, f"{text!r} is not a DNS zone name")
    return text.rstrip(".").lower()


def _nameserver(key: str, text: str) -> str:
    """An address, or ``HOST:PORT`` / ``[V6]:PORT`` as --nameserver takes it; kept as given but
    normalised (the port, when given, replaces ``dns.port`` for this server only)."""
    has_port = "]:" in text or text.count(":") == 1
    host, port = parse_hostport(key, text, 53)
    host = str(ipaddress.ip_address(host))
    return hostport(host, port) if has_port else host


def _local_part(key: str, text: str) -> str:
    if not text or "@" in text or any(c.isspace() for c in text):
        raise ConfigError(key, f"{text!r} is not a local part (write postmaster, not postmaster@example.com)")
    return text.lower()


def _toml_str(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _net(key: str, text: str) -> IPNetwork:
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError as exc:
        raise ConfigError(key, f"{text!r} is not a network") from exc


def _method(key: str, text: str) -> Method:
    method = Method.make(text)
    if method is None:
        raise ConfigError(key, f"unknown method {text!r}")
    return method


_SERVICE_KEYS = ("weight", "ratings", "zone", "ask", "codes", "unlisted", "blocked", "ipv6", "vouchers", "file")
_SOURCE_KEYS = ("zone", "vouchers", "file")  # how a service answers for itself (at most one)


def _services(value: Any, base_dir: str) -> tuple[Mapping[str, ServiceScale], tuple[ServiceSpec, ...]]:
    out: dict[str, ServiceScale] = {}
    specs: list[ServiceSpec] = []
    for code, spec in _mapping(value, "services").items():
        key = f"services.{code}"
        if not re.fullmatch(r"[A-Za-z0-9]{1,16}", code):
            raise ConfigError(key, "a service code is 1-16 letters or digits")
        table = _mapping(spec, key)
        _only(table, f"{key}.", _SERVICE_KEYS)
        if "ratings" not in table:
            raise ConfigError(f"{key}.ratings", "missing")
        weight = _number(table.get("weight", 5.0), f"{key}.weight", 0.0, 1000.0)
        scores = {
            str(r): _number(s, f"{key}.ratings.{r}", -1000.0, 1000.0)
            for r, s in _mapping(table["ratings"], f"{key}.ratings").items()
        }
        out[code.upper()] = ServiceScale(weight=weight, scores=scores)
        answering = _answering(code.upper(), key, table, scores, base_dir)
        if answering is not None:
            specs.append(answering)
    return out, tuple(specs)


def _answering(
    code: str, key: str, table: Mapping[str, Any], scores: Mapping[str, float], base_dir: str
) -> ServiceSpec | None:
    """The service's own source of ratings (``zone``, ``vouchers`` or ``file``), or None for a record copy."""
    sources = [k for k in _SOURCE_KEYS if k in table]
    if len(sources) > 1:
        raise ConfigError(f"{key}.{sources[1]}", f"a service answers one way: {' and '.join(sources)} both given")
    dns_only = [k for k in ("ask", "codes", "unlisted", "blocked", "ipv6") if k in table]
    if dns_only and sources != ["zone"]:
        raise ConfigError(f"{key}.{dns_only[0]}", "only a service with a zone takes this key")

    def rating(k: str, value: Any) -> str:
        text = _str(value, k)
        if text not in scores:
            raise ConfigError(k, f"{text!r} is not one of this service's ratings ({', '.join(scores)})")
        return text

    if "zone" in table:
        zone = _zone(f"{key}.zone", _str(table["zone"], f"{key}.zone"))
        if "codes" not in table:
            raise ConfigError(f"{key}.codes", "missing: which return codes give which rating")
        codes = tuple(
            (_pattern(f"{key}.codes.{c}", c), rating(f"{key}.codes.{c}", r))
            for c, r in _mapping(table["codes"], f"{key}.codes").items()
        )
        kw: dict[str, Any] = {"code": code, "zone": zone, "codes": codes}
        if "ask" in table:
            ask = _str(table["ask"], f"{key}.ask")
            if ask not in ASK_MODES:
                raise ConfigError(f"{key}.ask", f"{ask!r} is not one of {', '.join(ASK_MODES)}")
            kw["ask"] = ask
        if "unlisted" in table:
            kw["unlisted"] = rating(f"{key}.unlisted", table["unlisted"])
        if "blocked" in table:
            kw["blocked"] = tuple(_str_list(table, f"{key}.blocked", "blocked", _pattern))
        if "ipv6" in table:
            kw["ipv6"] = _bool(table["ipv6"], f"{key}.ipv6")
        return DnsService(**kw)
    if "vouchers" in table:
        vouchers: dict[str, str] = {}
        items = table["vouchers"]
        if not isinstance(items, list) or not items:
            raise ConfigError(f"{key}.vouchers", "expected a list of { domain = ..., rating = ... } tables")
        for i, item in enumerate(items):
            k = f"{key}.vouchers[{i}]"
            voucher = _mapping(item, k)
            _only(voucher, f"{k}.", ("domain", "rating"))
            if "domain" not in voucher or "rating" not in voucher:
                raise ConfigError(k, "needs domain and rating")
            vouchers[_zone(f"{k}.domain", _str(voucher["domain"], f"{k}.domain"))] = rating(
                f"{k}.rating", voucher["rating"]
            )
        return VbrService(code, vouchers)
    if "file" in table:
        path = os.path.normpath(os.path.join(base_dir, _str(table["file"], f"{key}.file")))
        return local_service(code, path, scores)
    return None


def _pattern(key: str, text: str) -> CodePattern:
    try:
        return parse_code_pattern(text)
    except ValueError as exc:
        raise ConfigError(key, f"{text!r} is not a return code, range, network or wildcard: {exc}") from exc


def _service_toml(spec: ServiceSpec) -> list[str]:
    if isinstance(spec, DnsService):
        lines = [f'zone = "{spec.zone}"', f'ask = "{spec.ask}"', f"ipv6 = {str(spec.ipv6).lower()}"]
        if spec.unlisted is not None:
            lines.append(f'unlisted = "{spec.unlisted}"')
        lines.append(f"blocked = {_toml_list(spec.blocked)}")
        lines.append("codes = { " + ", ".join(f'"{p}" = "{r}"' for p, r in spec.codes) + " }")
        return lines
    if isinstance(spec, VbrService):
        items = ", ".join(f'{{ domain = "{d}", rating = "{r}" }}' for d, r in spec.vouchers.items())
        return [f"vouchers = [{items}]"]
    return [f'file = "{spec.path}"']


def _dnsbl(key: str, value: Any) -> DnsblZone:
    table = _mapping(value, key)
    _only(table, f"{key}.", ("zone", "codes", "blocked", "nameserver", "ipv6"))
    if "zone" not in table:
        raise ConfigError(f"{key}.zone", "missing")
    zone = _zone(f"{key}.zone", _str(table["zone"], f"{key}.zone"))
    kw: dict[str, Any] = {"zone": zone}
    if "codes" in table:
        codes = []
        for code, label in _mapping(table["codes"], f"{key}.codes").items():
            codes.append((_code_range(f"{key}.codes.{code}", code), _str(label, f"{key}.codes.{code}")))
        kw["codes"] = tuple(codes)
    if "blocked" in table:
        kw["blocked"] = tuple(_str_list(table, f"{key}.blocked", "blocked", _code_range))
    if "nameserver" in table:
        kw["nameserver"] = parse_hostport(f"{key}.nameserver", _str(table["nameserver"], f"{key}.nameserver"), 53)
    if "ipv6" in table:
        kw["ipv6"] = _bool(table["ipv6"], f"{key}.ipv6")
    return DnsblZone(**kw)


# [policy]'s enforce settings; [policy_server] had copies of them, now refused with a pointer
ENFORCE_KEYS = ("enforce_no_record", "enforce_invalid_record", "enforce_tempfail", "never_reject")
_POLICY_KEYS = (
    "listen",
    "state",
    "mode",
    "actions",
    "clients",
    "max_line",
    "max_attributes",
    "request_timeout",
    "idle_timeout",
    "transactions",
    "socket_mode",
    "socket_group",
)
_UNIX_KEYS = ("socket_mode", "socket_group")  # a UNIX socket's file: meaningless for a TCP listener


def _policy_server(value: Any) -> PolicySettings:
    """``[policy_server]``: the Postfix policy listener (docs/postfix.md)."""
    table = _mapping(value, "policy_server")
    for key in ENFORCE_KEYS:
        if key in table:  # one place for an admin: [policy] governs rspamd's enforcement and Postfix's
            raise ConfigError(f"policy_server.{key}", f"set policy.{key} instead: it governs the policy listener too")
    _only(table, "policy_server.", _POLICY_KEYS)
    kw: dict[str, Any] = {}
    if "listen" in table:
        text = _str(table["listen"], "policy_server.listen")
        if text.startswith(UNIX_PREFIX):
            kw["listen"] = parse_unix("policy_server.listen", text)
        else:
            kw["listen"] = parse_hostport("policy_server.listen", text, 10040) if text else None
    if "state" in table:
        kw["state"] = _choice(_str(table["state"], "policy_server.state").upper(), "policy_server.state", CHECK_STATES)
    if "mode" in table:
        kw["mode"] = _choice(table["mode"], "policy_server.mode", MODES)
    if "actions" in table:
        kw["actions"] = _policy_actions(_mapping(table["actions"], "policy_server.actions"))
    if "clients" in table:
        kw["clients"] = tuple(_str_list(table, "policy_server.clients", "clients", _net))
    if "max_line" in table:
        kw["max_line"] = _int(table["max_line"], "policy_server.max_line", 512, 1024 * 1024)
    if "max_attributes" in table:
        kw["max_attributes"] = _int(table["max_attributes"], "policy_server.max_attributes", 8, 10_000)
    if "request_timeout" in table:
        kw["request_timeout"] = _number(table["request_timeout"], "policy_server.request_timeout", 0.1, 3600.0)
    if "idle_timeout" in table:
        kw["idle_timeout"] = _number(table["idle_timeout"], "policy_server.idle_timeout", 0.1, 86_400.0)
    if "transactions" in table:
        kw["transactions"] = _int(table["transactions"], "policy_server.transactions", 0, 10_000_000)
    if isinstance(kw.get("listen"), tuple):  # accepted with the listener off, refused with a TCP one
        for key in _UNIX_KEYS:
            if key in table:
                raise ConfigError(f"policy_server.{key}", 'applies to a UNIX socket only (listen = "unix:/path")')
    if "socket_mode" in table:
        mode = _str(table["socket_mode"], "policy_server.socket_mode")
        kw["socket_mode"] = parse_mode("policy_server.socket_mode", mode)
    if "socket_group" in table:
        group = _str(table["socket_group"], "policy_server.socket_group")
        group_id("policy_server.socket_group", group)  # an unknown group fails at load, not at bind
        kw["socket_group"] = group
    return PolicySettings(**kw)


def _policy_actions(table: Mapping[str, Any]) -> dict[EnforceAction, Kind]:
    """``[policy_server.actions]``: enforce action (``reject``, ``soft_reject``, ``add_header``,
    ``no_action``) -> Postfix action; only reject and soft reject may refuse."""
    actions = dict(DEFAULT_ACTIONS)
    names = ", ".join(_action_key(a) for a in EnforceAction)
    for name, value in table.items():
        key = f"policy_server.actions.{name}"
        try:
            action = EnforceAction(name.lower().replace("_", " "))
            kind = Kind(_str(value, key).upper())
        except ValueError:
            kinds = ", ".join(k.value for k in Kind)
            raise ConfigError(key, f"expected an enforce action ({names}) mapped to one of {kinds}") from None
        if kind.refusal and action not in REFUSABLE:
            raise ConfigError(key, f"{kind.value} is a refusal; {_action_key(action)} may only be PREPEND or DUNNO")
        actions[action] = kind
    return actions


def _action_key(action: EnforceAction) -> str:
    return action.value.replace(" ", "_")


def _choice(value: Any, key: str, choices: tuple[str, ...]) -> str:
    text = _str(value, key)
    if text not in choices:
        raise ConfigError(key, f"{text!r} is not one of {', '.join(choices)}")
    return text


def _policy_server_toml(p: PolicySettings) -> list[str]:
    listen = ""
    if isinstance(p.listen, UnixAddress):
        listen = str(p.listen)
    elif p.listen is not None:
        host, port = p.listen
        listen = f"{f'[{host}]' if ':' in host else host}:{port}"
    lines = ["", "[policy_server]", f"listen = {_toml_str(listen)}"]
    if not isinstance(p.listen, tuple):  # a UNIX socket's file (refused beside a TCP listen)
        lines.append(f'socket_mode = "{mode_text(p.socket_mode)}"')
        group = p.socket_group
        lines.append("# socket_group: the worker's own" if group is None else f"socket_group = {_toml_str(group)}")
    lines.append(f'state = "{p.state}"')
    lines.append("# mode: as policy.mode" if p.mode is None else f'mode = "{p.mode}"')
    lines.append(f"clients = {_toml_list(str(n) for n in p.clients)}")
    lines.append(f"max_line = {p.max_line}")
    lines.append(f"max_attributes = {p.max_attributes}")
    lines.append(f"request_timeout = {p.request_timeout}")
    lines.append(f"idle_timeout = {p.idle_timeout}")
    lines.append(f"transactions = {p.transactions}")
    lines += ["", "[policy_server.actions]"]
    lines += [f'{_action_key(action)} = "{kind.value}"' for action, kind in p.actions.items()]
    return lines


def _code_range(key: str, text: str) -> CodeRange:
    try:
        return parse_code_range(text)
    except ValueError as exc:
        raise ConfigError(key, f"{text!r} is not a return code, range or network: {exc}") from exc


def _range_text(r: CodeRange) -> str:
    return str(r[0]) if r[0] == r[1] else f"{r[0]}-{r[1]}"


def _toml_list(items: Any) -> str:
    return "[" + ", ".join(f'"{i}"' for i in items) + "]"


__all__ = [
    "SEED_SERVICES",
    "Config",
    "Thresholds",
    "config_from_mapping",
    "hostport",
    "load_config",
    "parse_hostport",
    "parse_listen",
    "read_secret",
]
