"""The ``rspamd-regcheck`` command line (DESIGN section 8).

Exit status: 0 success (``check`` printed a verdict, ``record lint`` found
the record valid, ``config check`` found the config valid); 1 the record or
config is invalid; 2 usage or operator errors (bad option, unreadable file).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Coroutine, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, TypeVar

from . import __version__, _install
from ._answer import DnsAnswer, DnsStatus
from ._check import Checker, CheckResult, Envelope, make_resolver, parse_ip
from ._headers import MAX_HEADER_BLOCK, header_block
from ._identity import BadHelo, normalise_helo
from ._log import setup_logging
from ._record import parse_record, select_record
from ._reply import build_reply, format_reply
from ._serve import serve
from .config import LEVELS, Config, load_config, parse_hostport
from .errors import ConfigError, InvalidRecord, InvalidZoneFile

EXIT_OK, EXIT_INVALID, EXIT_USAGE = 0, 1, 2
T = TypeVar("T")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="rspamd-regcheck",
        description="Sender-registry check for rspamd: Registered ID, ratings and the sender's method.",
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.add_argument("--config", metavar="FILE", help="TOML configuration file")
    p.add_argument(
        "--registry", metavar="ZONE", action="append", default=[], help="registry zone (repeatable; asked in order)"
    )
    p.add_argument("--nameserver", metavar="HOST[:PORT]", help="DNS server to ask instead of the system's")
    p.add_argument(
        "--zone-file",
        metavar="FILE",
        action="append",
        default=[],
        help="answer names under this zone file's $ORIGIN from the file (repeatable)",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    srv = sub.add_parser("serve", help="run the worker: rspamd's HTTP protocol (POST /checkv2)")
    srv.add_argument("--listen", metavar="HOST:PORT", help="address to listen on (default 127.0.0.1:11340)")
    srv.add_argument("--log-level", choices=LEVELS, help="overrides log.level")

    c = sub.add_parser("check", help="check one SMTP session and print the verdict")
    c.add_argument("--ip", required=True, help="client IP address")
    c.add_argument("--helo", help="HELO/EHLO name")
    c.add_argument("--from", dest="mail_from", metavar="ADDR", help="MAIL FROM ('' or '<>' is the null sender)")
    c.add_argument("--rcpt", metavar="ADDR", action="append", default=[], help="RCPT TO (repeatable)")
    c.add_argument("--user", help="authenticated user (such sessions are skipped by default)")
    c.add_argument(
        "--dkim-domain",
        metavar="D",
        action="append",
        default=[],
        help="d= of a DKIM signature already verified (repeatable; rspamd sends these)",
    )
    c.add_argument("--header-file", metavar="FILE", help="the message (or its header block), for Sender ID's PRA")
    c.add_argument("--json", action="store_true", help="print the reply object as JSON")

    r = sub.add_parser("record", help="registry record tools")
    rsub = r.add_subparsers(dest="record_command", required=True, metavar="SUBCOMMAND")
    lint = rsub.add_parser("lint", help="parse a registry record and print it or the reasons it is invalid")
    what = lint.add_mutually_exclusive_group(required=True)
    what.add_argument("text", nargs="?", help="the record text, e.g. 'v=reg1 svc=S1:A ip4=192.0.2.0/24'")
    what.add_argument("--id", metavar="ID", help="fetch the record of this Registered ID from the registry zones")

    cfg = sub.add_parser("config", help="configuration tools")
    csub = cfg.add_subparsers(dest="config_command", required=True, metavar="SUBCOMMAND")
    csub.add_parser("check", help="validate the configuration and print the effective values")

    rs = sub.add_parser("rspamd", help="install the rspamd plugin and rules into rspamd's configuration")
    rsub = rs.add_subparsers(dest="rspamd_command", required=True, metavar="SUBCOMMAND")
    for name, text in (("install", "install or upgrade them"), ("uninstall", "remove what install added")):
        x = rsub.add_parser(name, help=text)
        x.add_argument("--confdir", metavar="DIR", default=str(_install.DEBIAN_CONFDIR), help="default /etc/rspamd")
        x.add_argument(
            "--force", action="store_true", help="replace or remove files an admin edited (kept as *.regcheck-old)"
        )
        x.add_argument("--dry-run", action="store_true", help="print what would change, write nothing")
        if name == "install":
            x.add_argument("--mode", choices=_install.MODES, default="score", help="score (default) or enforce")
            x.add_argument(
                "--servers", metavar="HOST:PORT", nargs="+", default=[], help="the worker(s) (default 127.0.0.1:11340)"
            )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = _parser().parse_args(argv)
    if args.command == "rspamd":
        uninstall = args.rspamd_command == "uninstall"
        mode, servers = ("score", ()) if uninstall else (args.mode, tuple(args.servers))
        return _install.run(Path(args.confdir), uninstall, mode, servers, args.force, args.dry_run)
    if args.command == "record" and args.text is not None:
        return _lint(args.text)
    try:
        config = load_config(args.config).with_overrides(tuple(args.registry), args.nameserver, tuple(args.zone_file))
    except ConfigError as exc:
        print(f"rspamd-regcheck: config error: {exc}", file=sys.stderr)
        return EXIT_INVALID if args.command == "config" else EXIT_USAGE
    if args.command == "config":
        sys.stdout.write(config.to_toml())
        return EXIT_OK
    if not config.registry_zones:
        print(
            "rspamd-regcheck: no registry zone configured: give --registry ZONE or set registry.zones",
            file=sys.stderr,
        )
        return EXIT_USAGE
    if args.command == "record":
        return _lint_id(args.id, config)
    if args.command == "serve":
        return _serve(args, config)
    return _check(args, config)


def _serve(args: argparse.Namespace, config: Config) -> int:
    setup_logging(args.log_level or config.log_level, config.log_format)
    host, port = config.listen
    if args.listen is not None:
        try:
            host, port = parse_hostport("--listen", args.listen, 11340)
        except ConfigError as exc:
            print(f"rspamd-regcheck: {exc}", file=sys.stderr)
            return EXIT_USAGE

    def load() -> Config:
        # SIGHUP: the same file and the same command-line overrides, read again
        return load_config(args.config).with_overrides(tuple(args.registry), args.nameserver, tuple(args.zone_file))

    try:
        return serve(load, config, host, port)
    except (ConfigError, InvalidZoneFile) as exc:
        print(f"rspamd-regcheck: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        print(f"rspamd-regcheck: cannot listen on {host}:{port}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_USAGE


def _lint_id(ident: str, config: Config) -> int:
    """Fetch the record of *ident* from each registry zone in order and lint the first found."""
    name = normalise_helo(ident)
    if isinstance(name, BadHelo):
        print(f"rspamd-regcheck: --id: {ident!r} is not a domain name ({name.reason})", file=sys.stderr)
        return EXIT_USAGE

    async def fetch() -> tuple[str, DnsAnswer] | None:
        resolver = make_resolver(config)
        try:
            for zone in config.registry_zones:
                answer = await resolver.query(f"{name}.{zone}", "TXT")
                if answer.status not in (DnsStatus.NXDOMAIN, DnsStatus.NODATA):
                    return zone, answer
            return None
        finally:
            resolver.close()

    try:
        result = run_loop(fetch())
    except InvalidZoneFile as exc:
        print(f"rspamd-regcheck: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if result is None:
        print(f"no record for {name} in {', '.join(config.registry_zones)}")
        return EXIT_INVALID
    zone, answer = result
    if answer.status is not DnsStatus.OK:
        print(f"rspamd-regcheck: {name}.{zone}: {answer.detail or answer.status.value}", file=sys.stderr)
        return EXIT_USAGE
    print(f"{name}.{zone}:")
    for text in answer.records:
        print(f"  TXT {text!r}")
    try:
        text = select_record(answer.records)
    except InvalidRecord as exc:
        print("invalid record:")
        for reason in exc.reasons:
            print(f"  {reason}")
        return EXIT_INVALID
    return _lint(text)


def _lint(text: str) -> int:
    try:
        record = parse_record(text)
    except InvalidRecord as exc:
        print("invalid record:")
        for reason in exc.reasons:
            print(f"  {reason}")
        return EXIT_INVALID
    print("valid record:")
    for key, value in asdict(record).items():
        print(f"  {key}: {_show(value)}")
    return EXIT_OK


def _show(value: object) -> str:
    if isinstance(value, tuple):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    if isinstance(value, dict):
        if "networks" in value:  # a netblock
            return str(value["text"])
        if "method" in value:  # a method offer
            return f"{_show(value['method'])}:{value['queries']}"
        if "service" in value:  # a rating
            return f"{value['service']}:{value['value']}"
    if hasattr(value, "value") and not isinstance(value, (int, str)):
        return str(value.value)  # an enum
    return str(value)


def _check(args: argparse.Namespace, config: Config) -> int:
    try:
        ip = parse_ip(args.ip)
    except ValueError:
        print(f"rspamd-regcheck: --ip: {args.ip!r} is not an IP address", file=sys.stderr)
        return EXIT_USAGE
    mail_from = args.mail_from
    if mail_from is not None and mail_from.strip() in ("", "<>"):
        mail_from = ""
    headers: tuple[tuple[str, str], ...] = ()
    if args.header_file is not None:
        try:
            with open(args.header_file, "rb") as fh:
                headers = header_block(fh.read(MAX_HEADER_BLOCK))
        except OSError as exc:
            print(f"rspamd-regcheck: --header-file: {exc.strerror}: {args.header_file}", file=sys.stderr)
            return EXIT_USAGE
    env = Envelope(
        ip=ip,
        helo=args.helo,
        mail_from=mail_from,
        rcpts=tuple(args.rcpt),
        user=args.user,
        headers=headers,
        dkim_domains=tuple(args.dkim_domain),
    )
    try:
        checker = Checker(config)
    except InvalidZoneFile as exc:
        print(f"rspamd-regcheck: {exc}", file=sys.stderr)
        return EXIT_USAGE

    async def check_once() -> CheckResult:
        try:
            return await checker.check(env)
        finally:
            checker.close()

    result = run_loop(check_once())
    reply = build_reply(result.verdict, config, result.queries)
    if args.json:
        print(json.dumps(reply, indent=2, sort_keys=False))
    else:
        print(format_reply(reply))
    return EXIT_OK


def run_loop(coro: Coroutine[Any, Any, T]) -> T:
    """Run *coro* on uvloop (the DNS client is about twice as fast on it), else asyncio."""
    try:
        import uvloop
    except ImportError:  # uvloop is a dependency, but a platform may lack a wheel
        return asyncio.run(coro)
    return uvloop.run(coro)


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())
