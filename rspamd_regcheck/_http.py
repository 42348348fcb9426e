"""The worker's HTTP shell: rspamd's scan protocol on an asyncio Protocol with httptools.

httptools is llhttp (Node.js's parser), the one uvicorn uses: a well-kept C
parser, so this module only routes requests and writes replies.  One request
per connection is answered at a time, in order (pipelined requests wait,
bounded); keep-alive, HTTP/1.0 and 1.1, chunked bodies.

The contract (docs/protocol.md): ``POST /checkv2`` (also ``/check`` and
``/symbols``) with rspamd's request headers, matched case-insensitively; of
the body only the message header block is kept (for Sender ID); the reply is
JSON, or msgpack when the request accepts ``application/msgpack``.
``GET /ping`` answers ``pong``.  Every bad request gets a 4xx with a JSON
``{"error": ...}`` and never affects another connection; a client that goes
away cancels its check.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import socket
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any, cast

import httptools
import msgpack

from . import _legacy
from ._check import Checker, CheckResult, Envelope, parse_ip
from ._enforce import Enforcement, enforce, rests_on_rcpts
from ._headers import MAX_HEADER_BLOCK
from ._log import CheckLog
from ._metrics import Metrics
from ._reply import build_reply
from ._slim import SLIM_HEADER, build_slim, encode_slim, max_age, with_max_age

log = logging.getLogger("rspamd_regcheck.http")

CHECK_PATHS = frozenset({b"/checkv2", b"/check", b"/symbols"})
KNOWN_PATHS = CHECK_PATHS | {b"/ping", b"/metrics"}
REASONS = {
    200: "OK",
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    413: "Content Too Large",
    414: "URI Too Long",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


@dataclass(frozen=True)
class Limits:
    """What one request may send, and how long a connection may take."""

    body: int = 10 * 1024 * 1024  # bytes of request body (the message); only its header block is kept
    header_block: int = MAX_HEADER_BLOCK  # bytes of the message's header block kept for Sender ID
    headers: int = 100  # HTTP request header fields
    header_bytes: int = 64 * 1024  # bytes of HTTP request header fields in all
    request_timeout: float = 10.0  # seconds from a request's first byte to its last
    idle_timeout: float = 60.0  # seconds a kept-alive connection may wait for its next request
    connections: int = 1024  # open connections per worker; past it: 503 and close


class HttpError(Exception):
    """A request we answer with a 4xx; the message goes in ``{"error": ...}``."""

    def __init__(self, status: int, message: str, close: bool = False):
        super().__init__(message)
        self.status = status
        self.message = message
        self.close = close


@dataclass
class _Request:
    method: bytes = b""
    url: bytes = b""
    headers: list[tuple[str, str]] | None = None
    header_bytes: int = 0
    body: bytearray | None = None
    body_seen: int = 0
    keep_alive: bool = False  # read when the header fields are complete: llhttp resets it later
    version: str = "1.1"


class App:
    """What the protocols of one worker share: the checker, limits, metrics, connections."""

    def __init__(self, checker: Checker, limits: Limits | None = None, metrics: bool = False, log_mask: bool = False):
        self.checker = checker
        self.limits = limits or Limits()
        self.metrics = Metrics(metrics)
        self.log_mask = log_mask
        self.active: set[asyncio.Task[Any]] = set()
        self.connections: set[Any] = set()  # HttpProtocol and _legacy.LegacyProtocol
        self.draining = False  # stopping: answer what is asked, then close each connection
        # (checker, result, msgpack or None for slim, enforce decision) -> (result, body, entries)
        self._bodies: OrderedDict[tuple[int, int, bool | None, Enforcement], tuple[CheckResult, bytes, int]] = (
            OrderedDict()
        )
        self.check_log = CheckLog(_running_loop())

    def authorised(self, headers: list[tuple[str, str]]) -> bool:
        """True without a secret; with one, when the Password header (what rspamc -P sends) or an
        ``Authorization: Bearer`` token (what Prometheus sends, RFC 6750 2.1) matches it, in constant time."""
        secret = self.checker.config.secret
        if not secret:
            return True
        given = ""
        for name, value in headers:
            key = name.lower()
            if key == "password":
                given = value
                break
            if key == "authorization":
                scheme, _, token = value.partition(" ")
                if scheme.lower() == "bearer":
                    given = token.strip(" ")
                    break
        # the header's bytes as sent (read as Latin-1) against the secret's UTF-8 bytes
        return hmac.compare_digest(given.encode("latin-1", "replace"), secret.encode("utf-8"))

    def encoded(
        self, checker: Checker, result: CheckResult, msgpack_reply: bool, enforcement: Enforcement, slim: bool = False
    ) -> bytes:
        """The reply body for *result*; a reused result's body is encoded once per enforce decision
        (it depends on the recipients)."""
        if slim:
            return self._slim(checker, result, msgpack_reply, enforcement)
        key = (id(checker), id(result), msgpack_reply, enforcement)
        entry = self._bodies.get(key)
        if entry is not None and entry[0] is result:
            return entry[1]
        reply = build_reply(result.verdict, checker.config, result.queries, enforcement)
        body = msgpack.packb(reply) if msgpack_reply else _json(reply)
        self._remember(key, result, body)
        return body

    def _slim(self, checker: Checker, result: CheckResult, msgpack_reply: bool, enforcement: Enforcement) -> bytes:
        """The slim reply (`_slim`): its entries encoded once per result and decision, its max-age each time."""
        age = max_age(result.valid_until, time.monotonic(), checker.config.max_ttl)
        if not msgpack_reply:
            return _json({**self._slim_reply(checker, result, enforcement), "max_age": age})
        key = (id(checker), id(result), None, enforcement)
        entry = self._bodies.get(key)
        if entry is None or entry[0] is not result:
            reply = self._slim_reply(checker, result, enforcement)
            entry = (result, encode_slim(reply), len(reply))
            self._remember(key, result, entry[1], len(reply))
        return with_max_age(entry[1], entry[2], age)

    @staticmethod
    def _slim_reply(checker: Checker, result: CheckResult, enforcement: Enforcement) -> dict[str, Any]:
        return build_slim(
            result.verdict, enforcement, rests_on_rcpts(result.verdict, checker.enforce_policy), checker.fingerprint
        )

    def _remember(
        self, key: tuple[int, int, bool | None, Enforcement], result: CheckResult, body: bytes, count: int = 0
    ) -> None:
        self._bodies[key] = (result, body, count)  # holding the result keeps its id from being reused
        if len(self._bodies) > MAX_ENCODED:
            self._bodies.popitem(last=False)

    def close_idle(self) -> None:
        for conn in list(self.connections):
            if conn.current is None and conn.transport is not None:
                conn.transport.close()


def envelope_from_headers(headers: list[tuple[str, str]], body: bytes) -> Envelope:
    """Build the envelope from rspamd's request headers (names matched case-insensitively).

    :raises HttpError: 400 for an ``IP`` header that is not an address.
    """
    return read_request(headers, body)[0]


def read_request(headers: list[tuple[str, str]], body: bytes) -> tuple[Envelope, bool, bool]:
    """The envelope, and whether the reply is msgpack (`wants_msgpack`) and slim (`_slim.wants_slim`):
    the headers read in one pass.

    :raises HttpError: 400 for an ``IP`` header that is not an address.
    """
    packed = slim = False
    single: dict[str, str] = {}
    rcpts: list[str] = []
    dkim: list[str] = []
    raw_ip: str | None = None
    for name, raw in headers:
        key = name.lower()
        value = raw if raw.isascii() else _utf8(raw)
        if key == "rcpt":
            rcpts.append(_address(value))
        elif key == "dkim-domain":
            dkim.extend(d.strip() for d in value.split(",") if d.strip())
        elif key == "accept":
            packed = packed or "application/msgpack" in value.lower()
        elif key == SLIM_HEADER:
            slim = slim or value.strip().lower() == "slim"
        elif key not in single:
            single[key] = value.strip()
            if key == "ip":
                # RFC 9110 5.5: SP and HTAB around a value are not part of it (llhttp drops the
                # leading ones); any other whitespace, and whitespace inside, is not an address
                raw_ip = value.strip(" \t")
    try:
        ip = parse_ip(raw_ip)
    except ValueError:
        raise HttpError(400, f"IP header {raw_ip!r} is not an IP address") from None
    mail_from = single.get("from")
    env = Envelope(
        ip=ip,
        helo=single.get("helo") or None,
        mail_from=None if mail_from is None else _address(mail_from),
        rcpts=tuple(rcpts),
        hostname=single.get("hostname") or None,
        queue_id=single.get("queue-id") or None,
        user=single.get("user") or None,
        raw_headers=body,  # parsed only if Sender ID or a result resting on it needs it
        dkim_domains=tuple(dkim),
    )
    return env, packed, slim


def _utf8(value: str) -> str:
    """A header value (read as Latin-1, one character per byte) as the UTF-8 text rspamd sent.

    Bytes that are not UTF-8 become U+FFFD, so a raw 0xFF in a HELO makes it
    invalid (``bad-idn``) instead of a Latin-1 letter that IDNA would accept.
    """
    if value.isascii():
        return value
    try:
        raw = value.encode("latin-1")
    except UnicodeEncodeError:  # not from the wire (a caller's own text): already decoded
        return value
    return raw.decode("utf-8", "replace")


def _address(value: str) -> str:
    value = value.strip()
    if value.startswith("<") and value.endswith(">"):
        value = value[1:-1].strip()
    return value


def wants_msgpack(headers: list[tuple[str, str]]) -> bool:
    return any(n.lower() == "accept" and "application/msgpack" in v.lower() for n, v in headers)


_HEADS: dict[tuple[object, ...], bytes] = {}  # response heads but the length, built once
MAX_ENCODED = 2048  # reply bodies kept for reused check results
MAX_PIPELINE = 16  # requests parsed ahead of their answers on one connection
SNIFF = 8192  # bytes the first line may take before it is known not to be RSPAMC or SPAMC


@dataclass
class _Reply:
    """An answer decided while parsing (an error), queued in order with the requests."""

    status: int
    body: bytes
    content_type: str
    close: bool


class HttpProtocol(asyncio.Protocol):
    """One client connection.

    Requests are parsed as they come and answered in order, one check at a
    time (HTTP/1.1 pipelining); reading never stops, so a client that goes
    away is noticed at once and its check cancelled.
    """

    def __init__(self, app: App, metrics_only: bool = False):
        self.app = app
        self.metrics_only = metrics_only  # the metrics listener: /metrics and /ping, no secret asked
        self.limits = app.limits
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.request = _Request()
        self.queue: deque[_Request | _Reply] = deque()
        self.current: _Request | None = None  # the request being answered
        self.task: asyncio.Task[None] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.timer_at = 0.0  # loop time the timer fires at
        self.deadline: float | None = None  # loop time the connection times out at; None: not while checking
        self.closing = False
        self.loop = asyncio.get_running_loop()
        self.sniffed: bytes | None = b""  # the start of the first line; None once it is known to be HTTP

    # -- connection ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        if len(self.app.connections) >= self.limits.connections:
            self.closing = True
            body = _json({"error": "too many connections"})
            self.transport.write(
                b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
            )
            self.transport.close()
            self.app.metrics.request("-", 503)
            return
        self.app.connections.add(self)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            # Without it rspamd's keep-alive requests wait for delayed ACKs (+40 ms each).
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._arm(self.limits.idle_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self.app.connections.discard(self)
        self.closing = True
        self._disarm()
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.queue.clear()
        if self.task is not None and not self.task.done():
            self.task.cancel()  # the client went away: so does its check

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        if self.sniffed is not None:  # rspamd's one port: the first line tells RSPAMC and SPAMC apart
            data = self.sniffed + data
            if b"\n" not in data and len(data) < SNIFF:
                if not self.sniffed:
                    self._arm(self.limits.request_timeout)  # a request has begun
                self.sniffed = data
                return
            self.sniffed = None
            if _legacy.takeover(self, data):
                return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__  # httptools wraps what our callbacks raise
            if isinstance(cause, HttpError):
                self._fail(cause.status, cause.message)
            else:
                log.error("request handling failed", exc_info=cause or exc)
                self._fail(500, "internal error")
        except httptools.HttpParserUpgrade:
            # We ignore Upgrade (RFC 9110 7.8 allows it), but the parser cannot go on past it:
            # the requests parsed so far are answered, then the connection closes.
            self.queue.append(_Reply(0, b"", "", close=True))
        except httptools.HttpParserError as exc:
            self._fail(400, f"malformed HTTP request: {exc}")
        self._next()

    def _fail(self, status: int, message: str) -> None:
        """Queue an error answer; the connection closes after it (the parser cannot resync)."""
        self.queue.append(_Reply(status, _json({"error": message}), "application/json", close=True))
        self.parser = httptools.HttpRequestParser(self)  # never fed again: closing follows

    def _arm(self, seconds: float) -> None:
        """Time the connection out *seconds* from now.

        The deadline moves with every request, the timer does not: it is set
        again only when it would fire too late, and when it fires early it
        waits for the deadline.  So a busy kept-alive connection costs no
        timer per request (two were armed and cancelled per request before).
        """
        deadline = self.deadline = self.loop.time() + seconds
        if self.timer is None or self.timer_at > deadline:
            if self.timer is not None:
                self.timer.cancel()
            self.timer, self.timer_at = self.loop.call_at(deadline, self._timeout), deadline

    def _disarm(self) -> None:
        self.deadline = None  # a timer still set finds nothing due

    def _timeout(self) -> None:
        self.timer = None
        if self.deadline is None:
            return
        if self.loop.time() < self.deadline:
            self.timer, self.timer_at = self.loop.call_at(self.deadline, self._timeout), self.deadline
            return
        if self.current is None and not self.queue and self.transport is not None:
            # A slow or idle client: close rather than wait (a check has its own deadline).
            self.closing = True
            self.transport.close()

    # -- httptools callbacks -------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.request = _Request(headers=[])
        if self.current is None:
            self._arm(self.limits.request_timeout)

    def on_url(self, url: bytes) -> None:
        self.request.url += url
        if len(self.request.url) > 8192:
            raise HttpError(414, "request target too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        r = self.request
        assert r.headers is not None
        r.header_bytes += len(name) + len(value)
        if len(r.headers) >= self.limits.headers or r.header_bytes > self.limits.header_bytes:
            raise HttpError(431, "too many or too large request header fields")
        r.headers.append((name.lower().decode("latin-1"), value.decode("latin-1")))  # names lowered once

    def on_headers_complete(self) -> None:
        r = self.request
        r.method = self.parser.get_method()
        r.keep_alive = self.parser.should_keep_alive()
        r.version = self.parser.get_http_version()
        path = r.url.split(b"?", 1)[0]
        length = next((v for n, v in r.headers or () if n == "content-length"), None)
        if length is not None and length.isdigit() and int(length) > self.limits.body:
            raise HttpError(413, f"body larger than {self.limits.body} bytes")
        if self.metrics_only and path not in (b"/ping", b"/metrics"):
            raise HttpError(404, "this address serves /metrics only")
        if path in CHECK_PATHS:
            if r.method != b"POST":
                raise HttpError(405, f"{path.decode('latin-1')} takes POST")
            r.body = bytearray()
        elif path in (b"/ping", b"/metrics"):
            if r.method not in (b"GET", b"HEAD"):
                raise HttpError(405, f"{path.decode('latin-1')} takes GET")
        else:
            raise HttpError(404, f"unknown path {path.decode('latin-1', 'replace')[:100]!r}")

    def on_body(self, chunk: bytes) -> None:
        r = self.request
        r.body_seen += len(chunk)
        if r.body_seen > self.limits.body:
            raise HttpError(413, f"body larger than {self.limits.body} bytes")
        if r.body is not None and len(r.body) < self.limits.header_block:
            # Keep only what can hold the header block; the rest of the message is dropped as it comes.
            r.body += chunk[: self.limits.header_block - len(r.body)]

    def on_message_complete(self) -> None:
        if len(self.queue) >= MAX_PIPELINE:
            raise HttpError(503, "too many pipelined requests")
        self.queue.append(self.request)
        self.request = _Request()

    # -- answering, in order ---------------------------------------------------------------------

    def _next(self) -> None:
        """Answer queued requests until one needs a check (it answers when done)."""
        while self.current is None and self.queue and not self.closing:
            item = self.queue.popleft()
            if isinstance(item, _Reply):
                if item.status:
                    self.respond(item.status, item.body, item.content_type, close=item.close)
                elif self.transport is not None:
                    self.closing = True
                    self.transport.close()
                continue
            self._start(item)

    def _start(self, r: _Request) -> None:
        self.current = r
        self._disarm()
        path = r.url.split(b"?", 1)[0]
        if path == b"/ping":
            self.respond(200, b"pong\r\n", "text/plain")
            return
        if not self.metrics_only and not self.app.authorised(r.headers or []):
            self.error(403, "wrong or missing Password")
            return
        if path == b"/metrics":
            if not self.app.metrics.enabled:
                self.error(404, "metrics are collected only under serve")
                return
            body, content_type = self.app.metrics.exposition()
            self.respond(200, body, content_type)
            return
        try:
            env, packed, slim = read_request(r.headers or [], bytes(r.body or b""))
        except HttpError as exc:
            self.error(exc.status, exc.message)
            return
        self.task = self.loop.create_task(self.check(env, packed, slim))
        self.app.active.add(self.task)
        self.task.add_done_callback(self.app.active.discard)

    async def check(self, env: Envelope, msgpack_reply: bool, slim: bool = False) -> None:
        started = time.perf_counter()  # uvloop's loop.time() counts whole milliseconds
        checker = self.app.checker  # a reload swaps it for later requests, not this one
        try:
            result = await checker.check(env)
            enforcement = enforce(result.verdict, checker.enforce_policy, env.rcpts)
            body = self.app.encoded(checker, result, msgpack_reply, enforcement, slim)
            seconds = time.perf_counter() - started
            self.app.metrics.check(result.verdict, seconds, checker)
            if self.app.check_log.enabled:
                self.app.check_log.check(env, result, seconds, checker.config.mode, self.app.log_mask, enforcement)
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug: answer 500, log it, keep serving (STYLE item 9)
            log.exception("check failed for ip=%s helo=%r", env.ip, env.helo)
            self.task = None
            self.error(500, "internal error")
            return
        self.task = None
        self.respond(200, body, "application/msgpack" if msgpack_reply else "application/json")

    def error(self, status: int, message: str, close: bool = False) -> None:
        self.respond(status, _json({"error": message}), "application/json", close=close)

    def respond(self, status: int, body: bytes, content_type: str, close: bool = False) -> None:
        """Write the answer to the current request (or to a request that failed to parse)."""
        r = self.current or self.request
        self.current = None
        self.app.metrics.request(_path_label(r.url), status)
        if self.transport is None or self.transport.is_closing():
            return
        keep_alive = not close and r.keep_alive and not self.app.draining
        version = r.version if r.version in ("1.0", "1.1") else "1.1"
        key = (version, status, content_type, keep_alive, self.limits.idle_timeout)
        head = _HEADS.get(key)
        if head is None:
            lines = [
                f"HTTP/{version} {status} {REASONS.get(status, 'Error')}",
                f"Content-Type: {content_type}",
                "Connection: keep-alive" if keep_alive else "Connection: close",
            ]
            if keep_alive:
                lines.append(f"Keep-Alive: timeout={int(self.limits.idle_timeout)}")
            head = _HEADS[key] = ("\r\n".join(lines) + "\r\nContent-Length: ").encode("latin-1")
        payload = b"%s%d\r\n\r\n" % (head, len(body))
        if r.method != b"HEAD":
            payload += body
        self.transport.write(payload)
        if not keep_alive:
            self.closing = True
            self.transport.close()
            return
        self._arm(self.limits.idle_timeout)
        if self.queue:
            self.loop.call_soon(self._next)


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _path_label(url: bytes) -> str:
    path = url.split(b"?", 1)[0]
    return path.decode("latin-1") if path in KNOWN_PATHS else "other"


def _json(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode("utf-8")


async def start_server(
    app: App, host: str, port: int, sock: socket.socket | None = None, metrics_only: bool = False
) -> asyncio.Server:
    """Listen on (*host*, *port*), or on *sock*, with one `HttpProtocol` per connection
    (*metrics_only*: answering ``/metrics`` and ``/ping`` only, without the secret)."""
    loop = asyncio.get_running_loop()

    def factory() -> asyncio.Protocol:
        return HttpProtocol(app, metrics_only)

    if sock is not None:
        return await loop.create_server(factory, sock=sock)
    return await loop.create_server(factory, host, port, reuse_address=True)
