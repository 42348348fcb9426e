"""The legacy text protocols on the HTTP port: RSPAMC/1.x (rspamd's) and SPAMC/1.x (SpamAssassin's).

rspamd answers them on its one port and tells them from HTTP by the first
line; so does the worker (`takeover`, called by the HTTP shell on a
connection's first line).  Exim's ``spamd_address = ... variant=rspamd``
speaks RSPAMC; ``spamc`` and Exim's default variant speak SPAMC.

A request is a line ``COMMAND PROTO/VERSION``, header lines, an empty line
and the message (``Content-length`` bytes of it; SPAMC without the header:
up to the client's end of file).  SPAMC before 1.1 sends no header lines,
and its ``PING`` and ``SKIP`` before 1.5 send nothing after the line.

RSPAMC replies as rspamd 3.x writes them (no empty line after the status)::

    RSPAMD/1.3 0 EX_OK
    Metric: default; False; 6.00 / 15.00 / 15.00       spam; score / required / reject
    Action: add header
    Symbol: REGCHECK_QR1_FAIL(6.00); 208.20.133.32     options after "; "
    X-Milter-Add: X-Regcheck: 208.20.133.32 heaven.net QR1 fail ratings=...
    X-Milter-Del: X-Regcheck

The connection closes after the reply, unless the request said
``Connection: keep-alive``: then an empty line ends the reply and the next
request may follow.

SPAMC replies are framed as SpamAssassin's spamd frames them, by protocol
version (1.3 and later: several reply headers and a Content-length; 1.2:
the ``Spam:`` header only, which is what Exim's default variant parses)::

    SPAMD/1.1 0 EX_OK
    Content-length: 34
    Spam: False ; 6.00 / 15.00
    Envelope: Received header 1 of 2: ip=208.20.133.32 helo=mailout32.heaven.net
                                                      (blank line)
    REGCHECK_QR1_FAIL,REGCHECK_RATING_LOW             (SYMBOLS; REPORT: a readable report)

spamc sends no envelope: the client IP and HELO then come from the
Received header of the hop from outside (`_received`), and the reply says
which header (``Envelope:``).  SPAMC's ``User`` header names a local user,
never an authenticated one, so it is ignored (rspamd does the same).

Every bad request gets the protocol's error line (sysexits codes:
``EX_PROTOCOL`` for malformed requests, ``EX_USAGE`` for commands not
served, ``EX_NOPERM`` without the secret), then the connection closes.
"""

from __future__ import annotations

import asyncio
import enum
import hmac
import ipaddress
import logging
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from . import _http
from ._check import Checker, Envelope
from ._enforce import enforce
from ._received import Hop, NoHop, outside_hop
from ._reply import build_reply
from ._types import IPNetwork
from .symbols import BY_NAME

if TYPE_CHECKING:
    from ._http import App, HttpProtocol

log = logging.getLogger("rspamd_regcheck.legacy")

MAX_LINE = 8192  # bytes of a request line (the HTTP shell bounds its URL the same)
LINGER = 2.0  # seconds an answered bad request is still read (and dropped): its error arrives, not a reset
MAX_PENDING = 256 * 1024  # bytes read ahead of the answer on a kept-alive connection; then reading pauses
_LINE = re.compile(rb"([A-Za-z_]{1,32}) +(RSPAMC|SPAMC)/(\d{1,3})\.(\d{1,3}) *")
_HEAD_END = re.compile(rb"\n\r?\n")
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")  # a CR or LF in a value would start a reply line
CHECKS = frozenset({"CHECK", "SYMBOLS", "REPORT", "REPORT_IFSPAM", "PROCESS", "HEADERS"})
COMMANDS = CHECKS | {"PING", "SKIP", "TELL"}


class Proto(enum.Enum):
    RSPAMC = "RSPAMC"
    SPAMC = "SPAMC"


class Code(enum.IntEnum):
    """Reply codes: sysexits.h, as both protocols use them."""

    EX_OK = 0
    EX_USAGE = 64
    EX_SOFTWARE = 70
    EX_TEMPFAIL = 75
    EX_PROTOCOL = 76
    EX_NOPERM = 77
    EX_TIMEOUT = 79


class LegacyError(Exception):
    """A request answered with an error line; the connection closes after it."""

    def __init__(self, code: Code, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class RequestLine:
    command: str  # upper case; maybe one not served (answered EX_USAGE)
    proto: Proto
    version: tuple[int, int]

    @property
    def has_headers(self) -> bool:
        """SPAMC 1.0 sends none; SPAMC PING and SKIP only since 1.5 (SpamAssassin bug 6187)."""
        if self.proto is Proto.RSPAMC:
            return True
        if self.command in ("PING", "SKIP"):
            return self.version >= (1, 5)
        return self.version > (1, 0)

    @property
    def has_body(self) -> bool:
        return self.command not in ("PING", "SKIP")


@dataclass(frozen=True)
class Request:
    line: RequestLine
    headers: tuple[tuple[str, str], ...] = ()
    length: int | None = None  # Content-length; None: SPAMC reads to the end, RSPAMC reads nothing

    def header(self, name: str) -> str | None:
        return next((v for n, v in self.headers if n.lower() == name), None)

    @property
    def keep_alive(self) -> bool:
        """Only RSPAMC may keep the connection, and only when asked (rspamd closes otherwise)."""
        wanted = (self.header("connection") or "").lower() == "keep-alive"
        return self.line.proto is Proto.RSPAMC and wanted


# -- parsing (pure) --------------------------------------------------------------------------


def request_line(line: bytes) -> RequestLine | None:
    """The legacy request line *line* (line end stripped) is, or None when it is not one (HTTP)."""
    match = _LINE.fullmatch(line.rstrip(b"\r"))
    if match is None:
        return None
    command, proto, major, minor = match.groups()
    return RequestLine(command.decode("ascii").upper(), Proto(proto.decode("ascii")), (int(major), int(minor)))


def parse_headers(lines: bytes, max_headers: int, max_body: int) -> tuple[tuple[tuple[str, str], ...], int | None]:
    """Header lines (CRLF or LF) as (name, value) pairs, and the Content-length.

    :raises LegacyError: ``EX_PROTOCOL`` for a line that is not ``Name: value``,
        too many lines, or a Content-length that is not a number, repeated
        with another value, or larger than *max_body*.
    """
    headers: list[tuple[str, str]] = []
    length: int | None = None
    for line in lines.split(b"\n"):
        raw = line.rstrip(b"\r")
        if not raw:
            continue
        name, colon, value = raw.partition(b":")
        if not colon or not name or name != name.strip() or b" " in name:
            raise LegacyError(Code.EX_PROTOCOL, f"bad header line {safe_text(raw.decode('latin-1'))[:80]!r}")
        if len(headers) >= max_headers:
            raise LegacyError(Code.EX_PROTOCOL, f"more than {max_headers} header lines")
        text_name, text_value = name.decode("latin-1"), value.decode("latin-1").strip()
        if text_name.lower() == "content-length":
            if not text_value.isdigit() or len(text_value) > 12:
                raise LegacyError(Code.EX_PROTOCOL, f"Content-length {text_value[:20]!r} is not a number")
            if length is not None and length != int(text_value):
                raise LegacyError(Code.EX_PROTOCOL, "two different Content-length headers")
            length = int(text_value)
            if length > max_body:
                raise LegacyError(Code.EX_PROTOCOL, f"message larger than {max_body} bytes")
        headers.append((text_name, text_value))
    return tuple(headers), length


def safe_text(text: str) -> str:
    """*text* on one reply line: control characters (CR, LF among them) become spaces."""
    return text if text.isprintable() else _UNSAFE.sub(" ", text)


def envelope_of(request: Request, block: bytes, trusted: Iterable[IPNetwork]) -> tuple[Envelope, Hop | NoHop | None]:
    """The envelope of a check request, and for SPAMC where it came from.

    RSPAMC: the request headers, as on HTTP.  SPAMC: the same headers when the
    client sends an ``IP`` (its ``User`` names a local user and is dropped);
    otherwise the client IP and HELO of the Received header of the hop from
    outside.

    :raises LegacyError: ``EX_PROTOCOL`` for an ``IP`` header that is not an address.
    """
    headers: tuple[tuple[str, str], ...] = request.headers
    spamc = request.line.proto is Proto.SPAMC
    if spamc:
        headers = tuple((n, v) for n, v in headers if n.lower() != "user")
    try:
        env = _http.envelope_from_headers(list(headers), block)
    except _http.HttpError as exc:
        raise LegacyError(Code.EX_PROTOCOL, exc.message) from None
    if not spamc or request.header("ip") is not None:
        return env, None
    hop = outside_hop(env.header_fields, trusted)
    if isinstance(hop, Hop):
        env = replace(env, ip=hop.ip, helo=env.helo or hop.helo)
    return env, hop


# -- replies (pure) ----------------------------------------------------------------------------


def error_reply(proto: Proto, code: Code, message: str) -> bytes:
    """The error line of *proto* (RSPAMC adds an ``Error:`` line, as rspamd's first servers did)."""
    text = safe_text(message)
    if proto is Proto.RSPAMC:
        return f"RSPAMD/1.3 {int(code)} {code.name}\r\nError: {text}\r\n".encode()
    return f"SPAMD/1.0 {int(code)} {code.name} {text}\r\n".encode()


def pong(proto: Proto) -> bytes:
    return b"RSPAMD/1.3 0 PONG\r\n" if proto is Proto.RSPAMC else b"SPAMD/1.5 0 PONG\r\n"


def is_spam(reply: dict[str, Any]) -> bool:
    """Spam for these protocols is the reject action: what Debian's rspamd 3.4 answers (an "add header"
    message is ``False`` there), and what a SpamAssassin client expects at or past the threshold
    the reply gives, the reject score."""
    return bool(reply["action"] == "reject")


def _score(value: float) -> str:
    return f"{value + 0.0:.2f}"  # + 0.0: never "-0.00"


def milter_lines(reply: dict[str, Any]) -> list[str]:
    """The header changes as rspamd's newer servers write them for legacy clients."""
    milter = reply["milter"]
    lines = [f"X-Milter-Add: {name}: {safe_text(value)}" for name, value in milter["add_headers"].items()]
    lines += [f"X-Milter-Del: {name}" for name in milter["remove_headers"]]
    return lines


def rspamc_reply(reply: dict[str, Any], config_reject: float, message_id: str | None, keep_alive: bool) -> bytes:
    """The RSPAMC answer to a check (CHECK, SYMBOLS and REPORT alike, as rspamd answers them)."""
    spam = "True" if is_spam(reply) else "False"
    lines = [
        "RSPAMD/1.3 0 EX_OK",
        f"Metric: default; {spam}; {_score(reply['score'])} / {_score(reply['required_score'])} / "
        f"{_score(config_reject)}",
        f"Action: {reply['action']}",
    ]
    for name, sym in reply["symbols"].items():
        options = sym.get("options")
        tail = f"; {safe_text(', '.join(options))}" if options else ""
        lines.append(f"Symbol: {name}({_score(sym['score'])}){tail}")
    lines += [f"Message: {safe_text(text)}" for text in reply["messages"].values()]
    if message_id:
        lines.append(f"Message-ID: {safe_text(message_id)}")
    lines += milter_lines(reply)
    return ("\r\n".join(lines) + "\r\n" + ("\r\n" if keep_alive else "")).encode("utf-8", "replace")


def report_text(reply: dict[str, Any], envelope: str | None) -> str:
    """A readable report (SPAMC REPORT): the score, a table of symbols, the envelope, the header changes."""
    lines = [
        f"Registered-ID check: {_score(reply['score'])} points, {_score(reply['required_score'])} required, "
        f"action {reply['action']}",
        " pts rule name                  description",
        "---- -------------------------- ------------------------------------------------",
    ]
    for name, sym in reply["symbols"].items():
        definition = BY_NAME.get(name)
        lines.append(f"{sym['score']:4.1f} {name:<26} {definition.description if definition else ''}".rstrip())
        if sym.get("options"):
            lines.append(f"{'':32}[{safe_text(', '.join(sym['options']))}]")
    if reply["regcheck"]["skipped"]:
        lines.append(f"Skipped: {safe_text(reply['regcheck']['skipped'])}")
    if envelope is not None:
        lines.append(f"Envelope: {safe_text(envelope)}")
    lines += milter_lines(reply)
    return "\n".join(lines) + "\n"


def spamc_reply(line: RequestLine, reply: dict[str, Any], envelope: str | None, message: bytes = b"") -> bytes:
    """The SPAMC answer to a check, framed as SpamAssassin's spamd frames it for *line*'s version.

    *message* is the whole message (PROCESS and HEADERS only).
    """
    spam = is_spam(reply)
    flags = ("Yes", "No") if line.command == "REPORT_IFSPAM" else ("True", "False")  # as spamd words them
    flag = flags[0] if spam else flags[1]
    spam_header = f"Spam: {flag} ; {_score(reply['score'])} / {_score(reply['required_score'])}"
    extra = [f"Envelope: {safe_text(envelope)}"] if envelope is not None and line.version >= (1, 3) else []
    head = "SPAMD/1.1 0 EX_OK\r\n"
    if line.command == "CHECK":
        return (head + "\r\n".join([spam_header, *extra]) + "\r\n\r\n").encode("utf-8", "replace")
    if line.command in ("PROCESS", "HEADERS"):
        body = rewrite(message, reply, headers_only=line.command == "HEADERS")
        if line.version >= (1, 3):
            fields = [f"Content-length: {len(body)}", spam_header, *extra]
            return (head + "\r\n".join(fields) + "\r\n\r\n").encode() + body
        if line.version >= (1, 2):
            return f"{head}Content-length: {len(body)}\r\n\r\n".encode() + body
        return b"SPAMD/1.0 0 EX_OK\r\n" + body
    if line.command == "SYMBOLS":
        text = ",".join(reply["symbols"]) + ("\r\n" if line.version < (1, 3) else "")
    elif line.command == "REPORT" or spam:
        text = report_text(reply, envelope)
    else:
        text = ""  # REPORT_IFSPAM of a message that is not spam
    body = text.encode("utf-8", "replace")
    if line.version >= (1, 3):
        fields = [f"Content-length: {len(body)}", spam_header, *extra]
        return (head + "\r\n".join(fields) + "\r\n\r\n").encode("utf-8", "replace") + body
    return (head + spam_header + "\r\n\r\n").encode("utf-8", "replace") + body


def rewrite(message: bytes, reply: dict[str, Any], headers_only: bool = False) -> bytes:
    """*message* with the reply's header changes made: its headers removed, then added at the top."""
    end = _HEAD_END.search(message)
    head, rest = (message[: end.start() + 1], message[end.start() + 1 :]) if end else (message, b"")
    newline = b"\n" if b"\n" in head and b"\r\n" not in head else b"\r\n"  # the message's own line end
    removed = {name.lower().encode() for name in reply["milter"]["remove_headers"]}
    kept: list[bytes] = []
    dropping = False
    for raw in head.splitlines(keepends=True):
        if raw[:1] in (b" ", b"\t"):  # a folded line belongs to the field above it
            if not dropping:
                kept.append(raw)
            continue
        dropping = raw.split(b":", 1)[0].strip().lower() in removed
        if not dropping:
            kept.append(raw)
    added = [
        f"{name}: {safe_text(value)}".encode("utf-8", "replace") + newline
        for name, value in reply["milter"]["add_headers"].items()
    ]
    new_head = b"".join(added + kept)
    if headers_only:
        return new_head + (rest[: len(rest) - len(rest.lstrip(b"\r\n"))] if rest else newline)
    return new_head + rest


# -- the connection ---------------------------------------------------------------------------


def takeover(http: HttpProtocol, data: bytes) -> bool:
    """Serve the connection in the legacy protocols when its first line is theirs.

    *data* is what came so far, its first line complete (or 8 KiB without
    one).  Returns False, changing nothing, for anything else.
    """
    end = data.find(b"\n", 0, MAX_LINE)
    if end < 0 or request_line(data[:end]) is None or http.transport is None:
        return False
    app, transport = http.app, http.transport
    app.connections.discard(http)
    http.closing = True
    http._disarm()
    proto = LegacyProtocol(app, transport)
    transport.set_protocol(proto)
    proto.data_received(data)
    return True


def _loopback(transport: asyncio.BaseTransport) -> bool:
    sockname = transport.get_extra_info("sockname")
    if not isinstance(sockname, tuple):
        return False
    try:
        ip = ipaddress.ip_address(sockname[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


class LegacyProtocol(asyncio.Protocol):
    """One connection in RSPAMC or SPAMC: requests read one at a time and answered in order."""

    def __init__(self, app: App, transport: asyncio.Transport):
        self.app = app
        self.limits = app.limits
        self.transport: asyncio.Transport | None = transport
        self.loop = asyncio.get_running_loop()
        self.loopback = _loopback(transport)
        self.buffer = bytearray()
        self.request: Request | None = None  # head read, body being read
        self.body = bytearray()  # what is kept of the message
        self.seen = 0  # bytes of the message read
        self.current: Request | None = None  # being answered
        self.proto = Proto.RSPAMC  # of the last request line read, for error replies
        self.task: asyncio.Task[None] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.eof = False
        self.closing = False
        self.paused = False
        self.lingering = False
        self.reading = True  # a request has begun: the request timeout runs, not the idle one
        app.connections.add(self)
        self._arm(self.limits.request_timeout)

    # -- asyncio callbacks ----------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        self.buffer += data
        if not self.reading:
            self.reading = True
            self._arm(self.limits.request_timeout)
        if self.current is None:
            self._advance()
        elif len(self.buffer) > MAX_PENDING and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()

    def eof_received(self) -> bool:
        self.eof = True  # SPAMC clients end their message so, and still read the answer
        if self.lingering:
            self._close()
        elif self.current is None and not self.closing:
            self._advance()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.app.connections.discard(self)
        self.closing = True
        self._arm(None)
        self.transport = None
        if self.task is not None and not self.task.done():
            self.task.cancel()  # the client went away: so does its check

    # -- reading ---------------------------------------------------------------------------------

    def _advance(self) -> None:
        """Read as far as the buffer goes; answer a request once it is complete (one at a time)."""
        if self.current is not None or self.closing:
            return
        try:
            if self.request is None and not self._read_head():
                return
            if not self._read_body():
                return
        except LegacyError as exc:
            self._fail(exc.code, exc.message)
            return
        request, body = self.request, bytes(self.body)
        assert request is not None
        self.request, self.body, self.seen = None, bytearray(), 0
        self._answer(request, body)

    def _read_head(self) -> bool:
        newline = self.buffer.find(b"\n")
        if newline < 0:
            if len(self.buffer) > MAX_LINE:
                raise LegacyError(Code.EX_PROTOCOL, "request line too long")
            if self.eof:
                if self.buffer.strip():
                    raise LegacyError(Code.EX_PROTOCOL, "request line not ended")
                self._close()  # the client is done
            return False
        line = request_line(bytes(self.buffer[:newline]))
        if line is None:
            raise LegacyError(Code.EX_PROTOCOL, "not a request line of RSPAMC or SPAMC")
        self.proto = line.proto
        if not line.has_headers:
            del self.buffer[: newline + 1]
            self.request = Request(line)
            return True
        end = _HEAD_END.search(self.buffer, newline)
        if end is None:
            if len(self.buffer) > MAX_LINE + self.limits.header_bytes:
                raise LegacyError(Code.EX_PROTOCOL, "request header lines too large")
            if self.eof:
                raise LegacyError(Code.EX_PROTOCOL, "request ended before the empty line after its headers")
            return False
        lines = bytes(self.buffer[newline + 1 : end.start() + 1])
        del self.buffer[: end.end()]
        if len(lines) > self.limits.header_bytes:
            raise LegacyError(Code.EX_PROTOCOL, "request header lines too large")
        headers, length = parse_headers(lines, self.limits.headers, self.limits.body)
        self.request = Request(line, headers, length)
        return True

    def _read_body(self) -> bool:
        request = self.request
        assert request is not None
        if not request.line.has_body:
            return True
        keep = self.limits.body if request.line.command in ("PROCESS", "HEADERS") else self.limits.header_block
        want = request.length
        if want is None and request.line.proto is Proto.RSPAMC:
            want = 0  # rspamd reads no body without Content-length
        take = len(self.buffer) if want is None else min(len(self.buffer), want - self.seen)
        if take:
            if len(self.body) < keep:
                self.body += self.buffer[: min(take, keep - len(self.body))]
            del self.buffer[:take]
            self.seen += take
        if want is None:
            if self.seen > self.limits.body:
                raise LegacyError(Code.EX_PROTOCOL, f"message larger than {self.limits.body} bytes")
            return self.eof
        if self.seen < want:
            if self.eof:
                raise LegacyError(Code.EX_PROTOCOL, f"message of {self.seen} bytes, Content-length said {want}")
            return False
        return True

    # -- answering -------------------------------------------------------------------------------

    def _answer(self, request: Request, body: bytes) -> None:
        self.current = request
        self._arm(None)
        line = request.line
        if line.command == "SKIP":  # the client changed its mind: no answer, as spamd does
            self._count(line, Code.EX_OK)
            self._close()
            return
        if line.command == "PING":
            self._send(request, pong(line.proto), Code.EX_OK)
            return
        if line.command not in CHECKS or (line.proto is Proto.RSPAMC and line.command in ("PROCESS", "HEADERS")):
            self._fail(Code.EX_USAGE, f"{line.command[:32]} is not served over {line.proto.value}")
            return
        if request.header("compress") is not None:  # spamc -z
            self._fail(Code.EX_USAGE, "Compress is not supported: send the message as it is")
            return
        if not self._authorised(request):
            self._fail(Code.EX_NOPERM, "wrong or missing Password" if self.loopback else "needs the Password")
            return
        checker = self.app.checker
        try:
            env, hop = envelope_of(request, body, checker.config.trusted_relays)
        except LegacyError as exc:
            self._fail(exc.code, exc.message)
            return
        self.task = self.loop.create_task(self._check(request, env, hop, body, checker))
        self.app.active.add(self.task)
        self.task.add_done_callback(self.app.active.discard)

    def _authorised(self, request: Request) -> bool:
        """Exim and spamc cannot send a secret: without one, only on a loopback listener.

        A ``Password`` header, when sent, must be the secret, as on HTTP.
        """
        given = request.header("password")
        secret = self.app.checker.config.secret
        if given is None:
            return self.loopback
        if not secret:
            return self.loopback
        return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), secret.encode("utf-8"))

    async def _check(
        self, request: Request, env: Envelope, hop: Hop | NoHop | None, body: bytes, checker: Checker
    ) -> None:
        started = time.perf_counter()
        try:
            result = await checker.check(env)
            enforcement = enforce(result.verdict, checker.enforce_policy, env.rcpts)  # RSPAMC sends Rcpt
            reply = build_reply(result.verdict, checker.config, result.queries, enforcement)
            seconds = time.perf_counter() - started
            self.app.metrics.check(result.verdict, seconds, checker, self.proto.value.lower())
            if self.app.check_log.enabled:
                self.app.check_log.check(env, result, seconds, checker.config.mode, self.app.log_mask, enforcement)
            if request.line.proto is Proto.RSPAMC:
                message_id = next((v for n, v in env.header_fields if n.lower() == "message-id"), None)
                data = rspamc_reply(reply, checker.config.thresholds.reject, message_id, self._keeps(request))
            else:
                envelope = "request headers" if hop is None else hop.describe()
                data = spamc_reply(request.line, reply, envelope, body)
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug: answer EX_SOFTWARE, log it, keep serving (STYLE item 9)
            log.exception("legacy check failed for ip=%s helo=%r", env.ip, env.helo)
            self.task = None
            self._fail(Code.EX_SOFTWARE, "internal error")
            return
        self.task = None
        self._send(request, data, Code.EX_OK)

    # -- writing ---------------------------------------------------------------------------------

    def _keeps(self, request: Request) -> bool:
        return request.keep_alive and not self.app.draining

    def _count(self, line: RequestLine | None, code: Code) -> None:
        command = line.command if line is not None and line.command in COMMANDS else "other"
        self.app.metrics.legacy(self.proto.value, command, int(code))

    def _send(self, request: Request, data: bytes, code: Code) -> None:
        self.current = None
        self._count(request.line, code)
        if self.transport is None or self.transport.is_closing():
            return
        self.transport.write(data)
        if not self._keeps(request):
            self._close()
            return
        self.reading = bool(self.buffer)  # the next request may have begun already
        self._arm(self.limits.request_timeout if self.reading else self.limits.idle_timeout)
        if self.paused:
            self.paused = False
            self.transport.resume_reading()
        if self.buffer or self.eof:
            self.loop.call_soon(self._advance)

    def _fail(self, code: Code, message: str) -> None:
        """Answer with an error line and close: after a bad request the stream cannot be trusted."""
        line = self.current.line if self.current is not None else None
        if line is None and self.request is not None:
            line = self.request.line
        self.current = None
        self._count(line, code)
        transport = self.transport
        if transport is None or transport.is_closing():
            self._close()
            return
        transport.write(error_reply(self.proto, code, message))
        if not transport.can_write_eof() or self.eof:
            self._close()
            return
        # Closing with unread input would reset the connection and could lose the error: end our
        # side, drop what still comes, close when the client does (or after LINGER seconds).
        transport.write_eof()
        self.closing = self.lingering = True
        self.buffer.clear()
        if self.paused:
            self.paused = False
            transport.resume_reading()
        self._arm(None)
        self.timer = self.loop.call_later(LINGER, self._close)

    def _close(self) -> None:
        self.closing = True
        self._arm(None)
        if self.transport is not None:
            self.transport.close()

    def _arm(self, seconds: float | None) -> None:
        """Restart the connection's one timer; None stops it."""
        if self.timer is not None:
            self.timer.cancel()
        self.timer = None if seconds is None else self.loop.call_later(seconds, self._timeout)

    def _timeout(self) -> None:
        self.timer = None
        if self.current is not None or self.closing:
            return
        if self.request is None and not self.buffer:
            self._close()  # an idle kept-alive connection
            return
        self._fail(Code.EX_TIMEOUT, f"request not complete within {self.limits.request_timeout:g} s")
