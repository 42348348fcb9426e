"""The Postfix policy listener: `_policy`'s protocol on an asyncio Protocol, in the worker.

It shares the worker's `App` (checker, result and DNS caches, metrics, the
per-check log line, the list of running checks that shutdown waits for).
One check per Postfix transaction (its ``instance``), run at the first
request whose ``protocol_state`` has reached ``policy_server.state``; later
requests of the transaction (more recipients, DATA) reuse it: the decision
is the worker's enforce rule (`_enforce`, ``[policy]``) for each request's
recipient, so a refusal is repeated for each recipient not protected by
``policy.never_reject``, and each
answer that may prepend carries the next header not yet sent (Postfix takes
one header per answer).  Every request is answered: a bad one, or one whose
check failed, gets ``action=DUNNO`` and a log line, and the connection stays
open.  Besides shutdown, and a client refused at once (not in
``policy_server.clients``, or past ``server.max_connections``), only the idle
and request timeouts close a connection.

Answers that need no waiting (a transaction already checked, a result the
checker can reuse) are written from ``data_received``; a check that must ask
the DNS runs in a task, and the requests behind it wait their turn.

A warm sender's next transaction is the common request and the cheap one:
the first answer of a transaction is kept (`Answer`) under the attributes it
follows from, and a later request with the same ones, while the check's
result holds, takes it without building an envelope or asking the checker;
it is counted and logged as a reused check all the same.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, cast

from ._check import Checker, CheckResult, Envelope, parse_ip
from ._enforce import Enforcement, enforce
from ._http import App
from ._log import CHECK_LOGGER
from ._lru import TwoGenerationLRU
from ._policy import (
    DUNNO,
    BadRequest,
    Kind,
    PolicyRequest,
    PolicySettings,
    Reply,
    RequestReader,
    policy_action,
    respond,
    state_rank,
)
from ._types import Verdict

log = logging.getLogger("rspamd_regcheck.policy")
_CHECK_LOGGER = logging.getLogger(CHECK_LOGGER)
METRIC_PATH = "policy"  # the protocol's label in regcheck_requests_total{path=...}
PROTOCOL = "policy"  # and in regcheck_checks_total{protocol=...}, regcheck_check_seconds{protocol=...}
MAX_QUEUED = 16  # requests read ahead of their answers; past it, reading pauses
BAD_LOG_SECONDS = 1.0  # at most one "bad policy request" line a second per worker
ANSWERS = 2048  # first answers kept per worker (`Answer`; each holds a check result)
# What the first answer of a transaction follows from, besides the configuration and the check's
# result; the check's own inputs (`_check._result_key`) are among them.
ANSWER_KEY = (
    "protocol_state",
    "client_address",
    "helo_name",
    "sender",
    "sasl_username",
    "recipient",
    "recipient_count",
)


class _Throttled:
    """A warning worth a line, written at most once every `BAD_LOG_SECONDS` with the count of
    those left out: a client that repeats it by the thousand a second cannot flood the log."""

    def __init__(self, form: str):
        self.form = form
        self.logged = -BAD_LOG_SECONDS
        self.unlogged = 0

    def log(self, text: str) -> None:
        now = time.monotonic()
        if now - self.logged < BAD_LOG_SECONDS:
            self.unlogged += 1
            return
        more = f" (and {self.unlogged} more since the last line)" if self.unlogged else ""
        log.warning(self.form + "%s", text, more)
        self.logged, self.unlogged = now, 0


@dataclass(slots=True)
class Transaction:
    """One Postfix transaction: its verdict and the headers still to prepend."""

    verdict: Verdict
    state: str  # the protocol_state at which the check ran
    headers: list[tuple[str, str]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Answer:
    """The first answer of a transaction, kept for the next transaction with the same `ANSWER_KEY`
    attributes: while *result* holds and *checker* is the worker's, it is the same answer."""

    checker: Checker
    result: CheckResult
    reply: Reply
    state: str
    headers: tuple[tuple[str, str], ...]  # still to prepend after *reply*
    env: Envelope  # for the log line (its fixed part: IP, HELO)
    mode: str
    enforcement: Enforcement
    lists: tuple[object, ...]  # the local lists' versions it rests on (`Services.key`)


class PolicyServer:
    """What the policy connections of one worker share besides the `App`."""

    def __init__(self, app: App):
        self.app = app
        self.connections: set[PolicyProtocol] = set()
        self._bad = _Throttled("bad policy request answered DUNNO: %s")
        self._not_client = _Throttled("policy connection from %s refused: not in policy_server.clients")
        self._full = _Throttled("policy connection refused: %s connections open")
        # Postfix instance -> its transaction; an Answer stands for a transaction begun from it
        self._transactions: TwoGenerationLRU[tuple[str, ...], Transaction | Answer] = TwoGenerationLRU(
            self.settings.transactions
        )
        self._answers: TwoGenerationLRU[tuple[str | None, ...], Answer] = TwoGenerationLRU(ANSWERS)
        self._answers_of = app.checker  # the checker the kept answers came from: a reload drops them

    @property
    def settings(self) -> PolicySettings:
        return self.app.checker.config.policy_server  # a reload applies to the next request

    def _log_bad(self, reason: str) -> None:
        """Log a bad request; at most one line a second, so a flood cannot flood the log."""
        self._bad.log(reason)

    def log_not_client(self, peer: str) -> None:
        """Log a connection refused for its address; at most one line a second, as `_log_bad`."""
        self._not_client.log(peer)

    def log_full(self) -> None:
        """Log a connection refused past ``server.max_connections``; at most one line a second."""
        self._full.log(str(len(self.connections)))

    def close_idle(self) -> None:
        for conn in list(self.connections):
            if conn.task is None and conn.transport is not None:
                conn.transport.close()

    def answer_now(self, request: PolicyRequest | BadRequest) -> Reply | None:
        """The reply when it needs no waiting: a bad request, a state before the check, a
        transaction already checked, or a result the checker can reuse.  None when a check
        must run (`answer` runs it).  Never raises."""
        if isinstance(request, BadRequest):
            self._log_bad(request.reason)
            return DUNNO
        try:
            return self._answer_now(request)
        except Exception:  # a bug: answer, log, keep serving (STYLE item 9)
            log.exception("policy request failed for client=%s", request.get("client_address")[:64])
            return DUNNO

    async def answer(self, request: PolicyRequest | BadRequest, tried: bool = False) -> Reply:
        """The reply to one request, running the check when it must (never raises but for cancellation).
        *tried*: `answer_now` said None for it a moment ago (no need to ask it again)."""
        reply = None if tried else self.answer_now(request)
        if reply is not None:
            return reply
        assert isinstance(request, PolicyRequest)  # a bad request is answered at once
        try:
            return await self._answer_checked(request)
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug: answer, log, keep serving (STYLE item 9)
            log.exception("policy request failed for client=%s", request.get("client_address")[:64])
            return DUNNO

    def _transaction_key(self, a: Mapping[str, str]) -> tuple[str, ...]:  # as _answer_now makes it
        return (a.get("instance", ""), a.get("client_address", ""), a.get("helo_name", ""), a.get("sender", ""))

    def _answer_now(self, r: PolicyRequest) -> Reply | None:
        a = r.attrs
        get = a.get
        key = (get("instance", ""), get("client_address", ""), get("helo_name", ""), get("sender", ""))
        txn = self._transactions.get(key) if key[0] else None
        if txn.__class__ is Answer:  # a transaction answered from a kept answer: its second request
            txn = self._transaction_of(key, cast(Answer, txn))
        if txn is None:
            started = time.perf_counter()
            checker = self.app.checker
            if checker is not self._answers_of:  # reloaded: what was kept was decided by the old one
                self._answers = TwoGenerationLRU(ANSWERS)
                self._answers_of = checker
            kept = self._answers.get(tuple(map(get, ANSWER_KEY)))
            if (
                kept is not None
                and kept.result.valid_until > time.monotonic()
                and kept.lists == checker.services.key(())  # a local list reloaded since: check again
            ):
                return self._reuse(kept, key, a.get("queue_id"), started)
            state = a.get("protocol_state", "").strip().upper()
            if state_rank(state) < state_rank(self.settings.state):
                return DUNNO  # not yet the state the check runs at (or VRFY, ETRN)
            env = self._envelope(r)
            if env is None:
                return DUNNO
            result = self.app.checker.reused(env)
            if result is None:
                return None
            return self._first(r, key, env, result, time.perf_counter() - started, state)
        return self._reply(r, cast(Transaction, txn), get("protocol_state", "").strip().upper())

    def _transaction_of(self, key: tuple[str, ...], kept: Answer) -> Transaction:
        """The transaction a kept answer began (made only when a second request of it comes)."""
        txn = Transaction(kept.result.verdict, kept.state, list(kept.headers))
        self._transactions.put(key, txn)
        return txn

    async def _answer_checked(self, r: PolicyRequest) -> Reply:
        state = r.get("protocol_state").strip().upper()
        env = self._envelope(r)
        assert env is not None  # _answer_now answered DUNNO otherwise
        started = time.perf_counter()
        result = await self.app.checker.check(env)
        return self._first(r, self._transaction_key(r.attrs), env, result, time.perf_counter() - started, state)

    def _first(
        self, r: PolicyRequest, key: tuple[str, ...], env: Envelope, result: CheckResult, seconds: float, state: str
    ) -> Reply:
        """The first answer of a transaction, from its check's *result*; kept for reuse while it holds."""
        checker = self.app.checker
        enforcement = enforce(result.verdict, checker.enforce_policy, env.rcpts)  # for the log line
        txn = self._checked(key, env, result, seconds, state, enforcement)
        reply = self._reply(r, txn, state)
        if checker.config.result_cache_size and result.valid_until > time.monotonic():  # 0: reuse nothing
            lists = checker.services.key(())
            kept = Answer(checker, result, reply, state, tuple(txn.headers), env, self._mode(), enforcement, lists)
            if checker is self._answers_of:
                self._answers.put(tuple(map(r.attrs.get, ANSWER_KEY)), kept)
        return reply

    def _reuse(self, kept: Answer, key: tuple[str, ...], queue_id: str | None, started: float) -> Reply:
        """A new transaction answered as a kept one was: counted and logged as a reused check."""
        app = self.app
        checker = kept.checker
        checker.result_hits += 1  # as Checker.reused counts
        verdict = kept.result.verdict
        if key[0]:
            self._transactions.put(key, kept)  # the transaction, until it has a second request
        seconds = time.perf_counter() - started
        app.metrics.check(verdict, seconds, checker, PROTOCOL)
        if _CHECK_LOGGER.isEnabledFor(logging.INFO):
            app.check_log.check(
                kept.env, kept.result, seconds, kept.mode, app.log_mask, kept.enforcement, queue_id or "-"
            )
        return kept.reply

    def _mode(self) -> str:
        return self.settings.mode or self.app.checker.config.mode

    def _reply(self, r: PolicyRequest, txn: Transaction, state: str) -> Reply:
        """The answer to one request of a checked transaction; a prepended header is spent."""
        a = r.attrs
        recipient: str | None = None
        if state == "RCPT" or a.get("recipient_count") == "1":
            recipient = a.get("recipient") or None
        kind, decision = policy_action(
            txn.verdict,
            self.settings,
            self.app.checker.enforce_policy,
            self._mode(),
            recipient,
            # A refusal is given at the check's own state, and at RCPT when the check ran at MAIL;
            # never at DATA or END-OF-MESSAGE after recipients were accepted (postmaster@ among them).
            may_refuse=state == txn.state or (state == "RCPT" and txn.state == "MAIL"),
        )
        if kind is Kind.DUNNO:
            return DUNNO
        reply = respond(
            kind,
            decision,
            header=txn.headers[0] if txn.headers else None,
            may_prepend=state != "END-OF-MESSAGE",
            client=a.get("client_address") or None,
            address=a.get("recipient") or a.get("sender"),
        )
        if reply.kind is Kind.PREPEND:
            txn.headers.pop(0)
        return reply

    def _envelope(self, r: PolicyRequest) -> Envelope | None:
        """The check's input from Postfix's attributes; None (logged) for a client_address that is no IP."""
        a = r.attrs
        try:
            ip = parse_ip(a.get("client_address"))
        except ValueError:
            self._log_bad(f"client_address {a.get('client_address', '')[:64]!r} is not an IP address")
            return None
        sender = a.get("sender")
        client_name = a.get("client_name")
        recipient = a.get("recipient")
        return Envelope(
            ip=ip,
            helo=a.get("helo_name", "").strip() or None,
            mail_from=None if sender is None else sender.strip().strip("<>"),
            rcpts=(recipient,) if recipient else (),
            hostname=client_name if client_name and client_name != "unknown" else None,
            queue_id=a.get("queue_id") or None,
            user=a.get("sasl_username") or None,
        )

    def _checked(
        self,
        key: tuple[str, ...],
        env: Envelope,
        result: CheckResult,
        seconds: float,
        state: str,
        enforcement: Enforcement,
    ) -> Transaction:
        """Count and log a check (as the HTTP listener does) and remember its transaction.
        *enforcement*: the decision for this request's recipient, logged as enforce= (as HTTP does)."""
        app = self.app
        checker = app.checker
        app.metrics.check(result.verdict, seconds, checker, PROTOCOL)
        if _CHECK_LOGGER.isEnabledFor(logging.INFO):  # CheckLog.enabled, without getLogger's lock per check
            app.check_log.check(env, result, seconds, self._mode(), app.log_mask, enforcement)
        txn = Transaction(result.verdict, state, list(result.verdict.add_headers))
        if key[0]:
            self._transactions.put(key, txn)
        return txn


class PolicyProtocol(asyncio.Protocol):
    """One Postfix connection: requests answered in order, one check at a time."""

    def __init__(self, server: PolicyServer):
        self.server = server
        settings = server.settings
        self.settings = settings
        self.reader = RequestReader(settings.max_line, settings.max_attributes)
        self.queue: deque[PolicyRequest | BadRequest] = deque()
        self.tried: PolicyRequest | BadRequest | None = None  # the queue's head, when answer_now said None
        self.transport: asyncio.Transport | None = None
        self.task: asyncio.Task[None] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.timer_due = float("inf")
        self.last_activity = 0.0
        self.request_started: float | None = None
        self.paused = False
        self.loop = asyncio.get_running_loop()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        if not self._allowed(peer):
            self.server.log_not_client(str(peer and peer[0]))
            self.transport.close()
            return
        if len(self.server.connections) >= self.server.app.limits.connections:
            self.server.log_full()
            self.transport.close()
            return
        self.server.connections.add(self)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.last_activity = self.loop.time()
        self._arm_at(self.last_activity + self.settings.idle_timeout)

    def _allowed(self, peer: Any) -> bool:
        if not isinstance(peer, tuple) or not peer:
            return True  # not an IP socket (a test's socketpair): nobody else can reach it
        try:
            ip = ipaddress.ip_address(peer[0])
        except ValueError:
            return False
        if ip.version == 6 and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in net for net in self.settings.clients)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.queue.clear()
        if self.task is not None and not self.task.done():
            self.task.cancel()  # Postfix went away: so does the check

    def data_received(self, data: bytes) -> None:
        now = self.loop.time()
        self.last_activity = now
        items = self.reader.feed(data)
        for item in items:
            if self.task is None and not self.queue:
                reply = self.server.answer_now(item)
                if reply is not None:  # no waiting: answered here, without a task
                    self._write(item, reply, now)
                    continue
                self.tried = item
            self.queue.append(item)
        if len(self.queue) >= MAX_QUEUED and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()
        if self.queue and self.task is None:
            self.task = self.loop.create_task(self._serve())
            self.server.app.active.add(self.task)
            self.task.add_done_callback(self.server.app.active.discard)
        if self.reader.in_request:
            if self.request_started is None or items:
                self.request_started = now  # a request's time runs from its first byte
            due = self.request_started + self.settings.request_timeout
            if due < self.timer_due:
                self._arm_at(due)
        else:
            self.request_started = None

    def _write(self, request: PolicyRequest | BadRequest, reply: Reply, now: float | None = None) -> None:
        app = self.server.app
        app.metrics.request(METRIC_PATH, "bad" if request.__class__ is BadRequest else reply.status)
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        transport.write(reply.wire)
        self.last_activity = self.loop.time() if now is None else now
        if app.draining and not self.queue:
            transport.close()

    async def _serve(self) -> None:
        try:
            while self.queue and self.transport is not None and not self.transport.is_closing():
                request = self.queue.popleft()
                tried, self.tried = request is self.tried, None
                self._write(request, await self.server.answer(request, tried))
                if self.paused and len(self.queue) < MAX_QUEUED // 2:
                    self.paused = False
                    self.transport.resume_reading()
        finally:
            self.task = None

    # -- one timer: idle between requests, a whole request within request_timeout -------------
    # It is not moved for every request (that would cost a timer per request): when it fires
    # early, it looks at the last activity and sets itself again.

    def _arm_at(self, due: float) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.timer_due = due
        self.timer = self.loop.call_at(due, self._timeout)

    def _timeout(self) -> None:
        self.timer = None
        self.timer_due = float("inf")
        if self.transport is None or self.transport.is_closing():
            return
        now = self.loop.time()
        if self.task is not None:  # a check is running (it has its own deadline)
            self._arm_at(now + self.settings.idle_timeout)
            return
        if self.request_started is not None:
            due = self.request_started + self.settings.request_timeout
        else:
            due = self.last_activity + self.settings.idle_timeout
        if now < due:
            self._arm_at(due)
            return
        if self.request_started is not None:
            log.warning("policy request not finished within %.0f s: closing", self.settings.request_timeout)
        self.transport.close()


async def start_policy_server(server: PolicyServer, sock: socket.socket) -> asyncio.Server:
    """Serve policy connections on the listening *sock*."""
    loop = asyncio.get_running_loop()

    def factory() -> asyncio.Protocol:
        return PolicyProtocol(server)

    return await loop.create_server(factory, sock=sock)
