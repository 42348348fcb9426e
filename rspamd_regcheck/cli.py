"""The ``rspamd-regcheck`` command line (docs/configuration.md, "The command line").

Exit status: 0 success (``check`` printed a verdict, ``record lint`` found
the record valid, ``config check`` found the config valid); 1 the record or
config is invalid; 2 usage or operator errors (bad option, unreadable file).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from . import __version__, _install, _lint
from ._check import Checker, CheckResult, Envelope, make_resolver, parse_ip
from ._enforce import enforce
from ._headers import MAX_HEADER_BLOCK, header_block
from ._http import _address as bare_address
from ._log import setup_logging
from ._loop import run_loop
from ._record import select_record
from ._reply import build_reply, format_reply
from ._serve import ListenError, serve
from ._validate import Checked, load_checked
from .config import LEVELS, Config, load_config
from .errors import ConfigError, InvalidRecord, InvalidZoneFile

EXIT_OK, EXIT_INVALID, EXIT_USAGE = 0, 1, 2


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
    lint = rsub.add_parser("lint", help="say what a registry record means, or why it is invalid, with warnings")
    what = lint.add_mutually_exclusive_group(required=True)
    what.add_argument("text", nargs="?", help="the record text, e.g. 'v=reg1 svc=S1:A ip4=192.0.2.0/24'")
    what.add_argument("--id", metavar="HOST", help="find the record for this host name as a check would (IDlevel too)")
    what.add_argument("--zone-file", dest="lint_zone", metavar="FILE", help="lint every record of a registry zone file")
    lint.add_argument("--json", action="store_true", help="print the result as JSON")

    cfg = sub.add_parser("config", help="configuration tools")
    csub = cfg.add_subparsers(dest="config_command", required=True, metavar="SUBCOMMAND")
    chk = csub.add_parser("check", help="validate the configuration and print the effective values")
    chk.add_argument(
        "-q", "--quiet", action="store_true", help="print nothing when the configuration is valid (warnings still)"
    )

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
            x.add_argument(
                "--mode", choices=_install.MODES, help="score or enforce (default: as installed, else score)"
            )
            x.add_argument(
                "--servers",
                metavar="HOST:PORT",
                nargs="+",
                default=[],
                help="the worker(s) (default: as installed, else 127.0.0.1:11340)",
            )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = _parser().parse_args(argv)
    if args.command == "record" and args.id is None:
        return _lint_offline(args)
    if args.command == "rspamd":
        uninstall = args.rspamd_command == "uninstall"
        mode, servers = (None, ()) if uninstall else (args.mode, tuple(args.servers))
        return _install.run(Path(args.confdir), uninstall, mode, servers, args.force, args.dry_run)
    # --listen is serve's, but it is judged with the rest: what config check passes, serve starts with
    listen = args.listen if args.command == "serve" else None
    try:
        checked = load_checked(args.config, tuple(args.registry), args.nameserver, tuple(args.zone_file), listen)
    except (ConfigError, InvalidZoneFile) as exc:
        print(f"rspamd-regcheck: config error: {exc}", file=sys.stderr)
        return EXIT_INVALID if args.command == "config" else EXIT_USAGE
    config = checked.config
    if args.command == "config":
        for warning in checked.warnings:
            print(f"rspamd-regcheck: warning: {warning}", file=sys.stderr)
        if not args.quiet:
            sys.stdout.write(config.to_toml())
        return EXIT_OK
    if args.command == "record":
        return _lint_id(args, config)
    if args.command == "serve":
        return _serve(args, checked)
    return _check(args, config)


def _serve(args: argparse.Namespace, checked: Checked) -> int:
    config = checked.config
    setup_logging(args.log_level or config.log_level, config.log_format)
    for warning in checked.warnings:
        logging.getLogger("rspamd_regcheck.serve").warning("%s", warning)

    def load() -> Checked:
        # SIGHUP: the same file and the same command-line options, read and judged again
        return load_checked(args.config, tuple(args.registry), args.nameserver, tuple(args.zone_file), args.listen)

    try:
        return serve(load, config)
    except (ConfigError, InvalidZoneFile) as exc:
        print(f"rspamd-regcheck: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ListenError as exc:
        print(f"rspamd-regcheck: {exc}", file=sys.stderr)
        return EXIT_USAGE


def _lint_offline(args: argparse.Namespace) -> int:
    """``record lint TEXT`` and ``record lint --zone-file FILE``: no DNS asked."""
    try:
        config = load_config(args.config)
        texts = [args.text] if args.text is not None else None
        reports = [_lint.lint(t, config) for t in texts] if texts else _lint.lint_zone(args.lint_zone, config)
    except (ConfigError, InvalidZoneFile) as exc:
        print(f"rspamd-regcheck: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.json:
        print(json.dumps([r.as_json() for r in reports] if args.text is None else reports[0].as_json(), indent=2))
    else:
        print("\n\n".join(_lint.format_report(r) for r in reports))
        if args.text is None:
            bad = sum(not r.valid for r in reports)
            warned = sum(bool(r.warnings) for r in reports)
            print(f"\n{len(reports)} records: {bad} invalid, {warned} with warnings")
    return EXIT_INVALID if not reports or any(not r.valid for r in reports) else EXIT_OK


def _lint_id(args: argparse.Namespace, config: Config) -> int:
    """``record lint --id HOST``: find the record that decides for HOST, as a check would, and lint it."""

    async def fetch() -> _lint.Found:
        resolver = make_resolver(config)
        try:
            return await _lint.find_record(resolver, args.id, config.registry_zones)
        finally:
            resolver.close()

    try:
        found = run_loop(fetch())
    except (ValueError, InvalidZoneFile) as exc:
        print(f"rspamd-regcheck: --id: {exc}", file=sys.stderr)
        return EXIT_USAGE
    report = None
    if found.name is not None:
        try:
            report = _lint.lint(select_record(found.texts), config, found.ident)
        except InvalidRecord as exc:
            report = _lint.LintReport(" | ".join(found.texts), False, reasons=exc.reasons)
    if args.json:
        asked = [{"name": n, "answer": a} for n, a in found.asked]
        record = report.as_json() if report is not None else None
        print(json.dumps({"asked": asked, "error": found.error, "record": record}, indent=2))
    else:
        for name, answer in found.asked:
            print(f"{name}: {answer}")
        if report is not None:
            print(_lint.format_report(report))
    if found.error is not None:
        print(f"rspamd-regcheck: {found.error}", file=sys.stderr)
        return EXIT_USAGE
    if report is None:
        print(f"no record for {found.ident} in {', '.join(config.registry_zones)}")
        return EXIT_INVALID
    return EXIT_OK if report.valid else EXIT_INVALID


def _check(args: argparse.Namespace, config: Config) -> int:
    try:
        ip = parse_ip(args.ip)
        if ip is None:
            raise ValueError("empty")
    except ValueError:
        print(
            f"rspamd-regcheck: --ip: {args.ip!r} is not an IP address written plainly (no zone ID, brackets or spaces)",
            file=sys.stderr,
        )
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
        rcpts=tuple(bare_address(r) for r in args.rcpt),  # <...> as HTTP and RSPAMC take it
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
    enforcement = enforce(result.verdict, checker.enforce_policy, env.rcpts)
    reply = build_reply(result.verdict, config, result.queries, enforcement)
    if args.json:
        print(json.dumps(reply, indent=2, sort_keys=False))
    else:
        print(format_reply(reply))
    return EXIT_OK


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())
