"""Postfix's policy delegation protocol, the pure part: reading requests and deciding answers.

The protocol (Postfix SMTPD_POLICY_README): the client sends ``name=value``
lines and ends a request with an empty line; the server answers with one
``action=...`` line and an empty line; one connection carries many requests.
This module has no sockets and no clocks:

- `RequestReader` turns bytes into `PolicyRequest` / `BadRequest` items
  within the line-length and attribute-count limits (h11-style: feed bytes,
  get events);
- `policy_action` takes the decision from `_enforce.enforce` (the one home
  of the enforce rule, governed by the worker's ``[policy]``: the same
  decision rspamd's plugin applies) for the request's recipient, and maps
  that enforce action to a Postfix action (``[policy_server.actions]``);
- `respond` turns that action into the reply line for one request, given
  the next header still to prepend.

The shell (`_policy_server.py`) runs the check and keeps one transaction per
Postfix ``instance``.
"""

from __future__ import annotations

import enum
import ipaddress
import operator
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from ._enforce import NO_ACTION, EnforceAction, Enforcement, EnforcePolicy, enforce
from ._types import Action, IPNetwork, Verdict
from ._unixsock import DEFAULT_MODE, UnixAddress

# Postfix's own defaults: line_length_limit = 2048; a request carries about 40 attributes.
MAX_LINE = 2048
MAX_ATTRIBUTES = 100
# RFC 5321 4.5.3.1.5: a reply line is at most 512 octets with its code and CRLF.
SMTP_REPLY_LINE = 512
# Postfix puts "<rcpt>: Recipient address rejected: " (or "Sender address", "Data command")
# before our text; this is the longest of those fixed parts, with the code, the status and CRLF.
REPLY_OVERHEAD = len("550 5.7.1 <>: Recipient address rejected: ") + 2
MIN_TEXT = 60  # never cut the explanation shorter than this, whatever the address length
MAX_ACTION_LINE = 2000  # under Postfix's line_length_limit for what it reads back

# protocol_state values in the order an SMTP transaction goes through them.
STATE_ORDER = {"CONNECT": 0, "EHLO": 1, "HELO": 1, "MAIL": 2, "RCPT": 3, "DATA": 4, "END-OF-MESSAGE": 5}
CHECK_STATES = ("MAIL", "RCPT", "DATA", "END-OF-MESSAGE")
LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))


class Kind(enum.Enum):
    """The Postfix access(5) actions this listener answers with."""

    DUNNO = "DUNNO"
    PREPEND = "PREPEND"
    REJECT = "REJECT"
    DEFER_IF_PERMIT = "DEFER_IF_PERMIT"
    DEFER = "DEFER"

    @property
    def refusal(self) -> bool:
        return self is Kind.REJECT or self is Kind.DEFER_IF_PERMIT or self is Kind.DEFER


# The enforce action (`_enforce.enforce`) -> the Postfix action; add header and no action
# prepend the headers (DUNNO when there are none left, or the verdict is CONTINUE).
DEFAULT_ACTIONS: Mapping[EnforceAction, Kind] = {
    EnforceAction.REJECT: Kind.REJECT,
    EnforceAction.SOFT_REJECT: Kind.DEFER_IF_PERMIT,
    EnforceAction.ADD_HEADER: Kind.PREPEND,
    EnforceAction.NO_ACTION: Kind.PREPEND,
}
# Only these may be mapped to a refusal: the others carry no SMTP reply to give.
REFUSABLE = (EnforceAction.REJECT, EnforceAction.SOFT_REJECT)


@dataclass(frozen=True)
class PolicySettings:
    """``[policy_server]``: the Postfix policy listener (off while ``listen`` is None)."""

    listen: tuple[str, int] | UnixAddress | None = None  # (host, port), or a UNIX socket (`_unixsock`)
    state: str = "RCPT"  # the first protocol_state at which the check runs
    mode: str | None = None  # "score" or "enforce"; None follows policy.mode
    actions: Mapping[EnforceAction, Kind] = field(default_factory=lambda: dict(DEFAULT_ACTIONS))
    clients: tuple[IPNetwork, ...] = LOOPBACK  # who may connect
    max_line: int = MAX_LINE
    max_attributes: int = MAX_ATTRIBUTES
    request_timeout: float = 10.0  # seconds from a request's first byte to its empty line
    idle_timeout: float = 330.0  # above Postfix's smtpd_policy_service_max_idle (300 s)
    transactions: int = 10_000  # Postfix instances remembered per worker
    socket_mode: int = DEFAULT_MODE  # a UNIX socket's permissions
    socket_group: str | None = None  # and its group (a name); None: the worker's own


# -- reading requests -------------------------------------------------------------------------


@dataclass(frozen=True)
class PolicyRequest:
    """One complete request: its attributes (the last value wins for a repeated name)."""

    attrs: Mapping[str, str]

    def get(self, name: str) -> str:
        return self.attrs.get(name, "")


@dataclass(frozen=True)
class BadRequest:
    """A request that broke a limit or the syntax; it is answered DUNNO all the same."""

    reason: str
    attrs: Mapping[str, str] = field(default_factory=dict)


_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
_NAMES = re.compile(r"[A-Za-z0-9_.\-]{1,64}(?:\n[A-Za-z0-9_.\-]{1,64})*")  # good names, one a line
_SPLIT_ONCE = operator.methodcaller("split", "=", 1)  # "name=value" -> ["name", "value"] (no Python frame)
_GOOD_NAMES: set[str] = set()  # names _NAMES took already (a set lookup is cheaper than the match)
MAX_GOOD_NAMES = 1024


class RequestReader:
    """Feed bytes, get requests.  Memory stays within one line of *max_line* bytes and
    *max_attributes* attributes, whatever the client sends."""

    def __init__(self, max_line: int = MAX_LINE, max_attributes: int = MAX_ATTRIBUTES):
        self.max_line = max_line
        self.max_attributes = max_attributes
        self._buf = bytearray()
        self._attrs: dict[str, str] = {}
        self._error: str | None = None
        self._skipping = False  # inside a line that was too long: drop bytes up to its end
        self._started = False

    @property
    def in_request(self) -> bool:
        """Whether part of a request has been read and its empty line has not."""
        return self._started

    def feed(self, data: bytes) -> list[PolicyRequest | BadRequest]:
        if not self._started and data[-2:] == b"\n\n" and data.find(b"\n\n") == len(data) - 2:
            # Postfix's usual read: one whole request, nothing before it: read it in place
            whole = self._block(data[:-2])
            if whole is not None:
                return [whole]
        out: list[PolicyRequest | BadRequest] = []
        if data:
            self._started = True
        self._buf += data
        while True:
            if not self._attrs and self._error is None and not self._skipping:
                whole = self._whole_request()
                if whole is not None:
                    out.append(whole)
                    continue
            end = self._buf.find(b"\n")
            if end < 0:
                if len(self._buf) > self.max_line:
                    self._fail(f"a line is longer than {self.max_line} bytes")
                    self._skipping = True
                    self._buf.clear()
                break
            line = bytes(self._buf[:end])
            del self._buf[: end + 1]
            if self._skipping:
                self._skipping = False
                continue
            if line.endswith(b"\r"):
                line = line[:-1]
            if line:
                self._line(line)
                continue
            out.append(self._finish())
        if not self._buf and not self._attrs and self._error is None and not self._skipping:
            self._started = False
        return out

    def _whole_request(self) -> PolicyRequest | BadRequest | None:
        """The common case at once: a whole request of good lines at the head of the buffer.

        None when there is none, or when a line needs the line-by-line path (an error to name,
        CRLF line ends); that path then reads the same bytes and decides.
        """
        end = self._buf.find(b"\n\n")
        if end <= 0:
            return None
        whole = self._block(bytes(self._buf[:end]))
        if whole is not None:
            del self._buf[: end + 2]
        return whole

    def _block(self, block: bytes) -> PolicyRequest | BadRequest | None:
        """The request of *block* (its lines without the empty one) when every line is a good one
        within the limits; None when the line-by-line path must read it (and name what is wrong)."""
        if not block or len(block) > self.max_line * self.max_attributes:
            return None
        text = block.decode("utf-8", "replace")
        if "\r" in text:
            return None  # CRLF line ends
        try:
            attrs = dict(map(_SPLIT_ONCE, text.split("\n")))
        except ValueError:  # a line without '='
            return None
        if len(attrs) > self.max_attributes:
            return None
        if not attrs.keys() <= _GOOD_NAMES:  # Postfix sends the same few dozen names every time
            if _NAMES.fullmatch("\n".join(attrs)) is None:
                return None
            if len(_GOOD_NAMES) < MAX_GOOD_NAMES:
                _GOOD_NAMES.update(attrs)
        if len(block) > self.max_line and max(map(len, block.split(b"\n"))) > self.max_line:
            return None
        if attrs.get("request") != "smtpd_access_policy":
            return None
        return PolicyRequest(attrs)

    def _fail(self, reason: str) -> None:
        if self._error is None:
            self._error = reason

    def _line(self, line: bytes) -> None:
        if len(line) > self.max_line:
            self._fail(f"a line is longer than {self.max_line} bytes")
            return
        if self._error is not None:
            return  # the request is bad already: read on to its end, keep nothing more
        name, sep, value = line.decode("utf-8", "replace").partition("=")
        name = name.strip()
        if not sep or not _NAME.fullmatch(name):
            self._fail(f"not a name=value line: {line[:60]!r}")
            return
        if name not in self._attrs and len(self._attrs) >= self.max_attributes:
            self._fail(f"more than {self.max_attributes} attributes")
            return
        self._attrs[name] = value

    def _finish(self) -> PolicyRequest | BadRequest:
        attrs, error = self._attrs, self._error
        self._attrs, self._error = {}, None
        if error is not None:
            return BadRequest(error, attrs)
        if not attrs:
            return BadRequest("an empty request")
        if attrs.get("request") != "smtpd_access_policy":
            return BadRequest(f"request={attrs.get('request', '')[:40]!r} is not smtpd_access_policy", attrs)
        return PolicyRequest(attrs)


# -- deciding ---------------------------------------------------------------------------------


def policy_action(
    verdict: Verdict,
    settings: PolicySettings,
    policy: EnforcePolicy,
    mode: str,
    recipient: str | None,
    may_refuse: bool = True,
) -> tuple[Kind, Enforcement]:
    """The Postfix action for one request of a checked transaction, and the enforce decision
    it comes from (whose SMTP reply a refusal gives).

    The decision is `enforce`'s for *recipient* under the worker's ``[policy]``
    (*policy*), mapped through ``[policy_server.actions]``.  CONTINUE (and a
    skipped session) is DUNNO.  A refusal becomes PREPEND (headers only) in
    score mode, where *may_refuse* is False (DATA after recipients were
    accepted), and while the recipient is unknown (*recipient* None: at MAIL,
    or DATA with several) and ``never_reject`` is not empty, as it could be
    postmaster@: the refusal then waits for the RCPT requests, each of which
    names its recipient.
    """
    if verdict.seed.action is Action.CONTINUE:
        return Kind.DUNNO, NO_ACTION
    rcpts = () if recipient is None else (recipient.strip().strip("<>"),)
    decision = enforce(verdict, policy, rcpts)
    kind = settings.actions.get(decision.action, DEFAULT_ACTIONS[decision.action])
    if kind.refusal and (
        mode != "enforce" or not may_refuse or (recipient is None and policy.never_reject) or decision.text is None
    ):
        kind = Kind.PREPEND
    return kind, decision


@dataclass(frozen=True)
class Reply:
    """One answer: the action and its text (the header for PREPEND).

    Its bytes on the wire (`line`) and its status label for the request
    metrics are made once, when it is made: a reply kept for reuse is
    written as it is.
    """

    kind: Kind
    text: str = ""
    wire: bytes = field(init=False, repr=False, compare=False)
    status: str = field(init=False, repr=False, compare=False)  # regcheck_requests_total{status}

    def __post_init__(self) -> None:
        text = f"action={self.kind.value}" if not self.text else self._with_text()
        object.__setattr__(self, "wire", text.encode("ascii")[:MAX_ACTION_LINE] + b"\n\n")
        object.__setattr__(self, "status", self.kind.value.lower())

    def line(self) -> bytes:
        """The reply on the wire: ``action=...`` and the empty line."""
        return self.wire

    def _with_text(self) -> str:
        if self.kind is Kind.REJECT:
            return f"action={self.text}"  # "550 5.7.1 text": the code is the action
        return f"action={self.kind.value} {self.text}"


DUNNO = Reply(Kind.DUNNO)
_UNSAFE = re.compile(r"[^\x20-\x7e]")  # a reply line is printable ASCII: no CR/LF to inject a line
_SPACES = re.compile(r"\s{2,}")


def printable(text: str) -> str:
    """*text* with every character outside printable ASCII replaced (never a line break)."""
    if text.isascii() and text.isprintable() and "  " not in text and text == text.strip():
        return text
    return _SPACES.sub(" ", _UNSAFE.sub("?", text.replace("\t", " "))).strip()


_ADDRESS = re.compile(
    r"\[?(?:\d{1,3}\.){3}\d{1,3}\]?(?::\d+)?"  # IPv4, maybe bracketed, maybe with a port
    r"|\[?[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}\]?(?::\d+)?"  # IPv6
)


def public_text(message: str, client: str | None) -> str:
    """The explanation for the SMTP client: any address but the client's own is taken out.

    The worker's messages may name the resolver that failed ("127.0.0.1:53:
    Connection refused"); the sender learns that the lookup failed, not where.
    """

    def scrub(m: re.Match[str]) -> str:
        token = m.group(0)
        return token if client and token.strip("[]") == client else "a server"

    return printable(_ADDRESS.sub(scrub, message))


def fit(text: str, room: int) -> str:
    """*text* cut at a word to *room* characters, with '...' when cut."""
    if len(text) <= room:
        return text
    cut = text[: max(0, room - 3)]
    space = cut.rfind(" ")
    if space > room // 2:
        cut = cut[:space]
    return cut.rstrip(" ,;:(") + "..."


def text_room(address: str | None) -> int:
    """How long the explanation may be so that Postfix's reply line stays within 512 octets."""
    return max(MIN_TEXT, SMTP_REPLY_LINE - REPLY_OVERHEAD - len(address or ""))


def respond(
    kind: Kind,
    decision: Enforcement,
    *,
    header: tuple[str, str] | None,
    may_prepend: bool = True,
    client: str | None = None,
    address: str | None = None,
) -> Reply:
    """The reply to one request of a checked transaction.

    :param kind: and *decision*: from `policy_action`.
    :param header: the next header not yet prepended, if any.
    :param may_prepend: False at END-OF-MESSAGE (Postfix cannot prepend there, access(5)).
    :param client: the client's address, the one address the text may name.
    :param address: the address Postfix names before our text (for the length).
    """
    if kind is Kind.PREPEND:
        if header is None or not may_prepend:
            return DUNNO
        name, value = header
        return Reply(Kind.PREPEND, printable(f"{name}: {value}"))
    if kind is Kind.DUNNO or decision.text is None:
        return DUNNO
    text = fit(public_text(decision.text, client), text_room(address))
    code, xcode = decision.smtp_code or 0, decision.xcode or ""
    if kind is Kind.REJECT:
        code = code if 500 <= code <= 599 else 550
        xcode = xcode if xcode.startswith("5.") else "5.7.1"
        return Reply(Kind.REJECT, f"{code} {xcode} {text}")
    xcode = xcode if xcode.startswith("4.") else "4.7.1"
    return Reply(kind, f"{xcode} {text}")


def state_rank(state: str) -> int:
    """Where *state* comes in a transaction; -1 for states outside one (VRFY, ETRN, unknown)."""
    return STATE_ORDER.get(state, -1)


__all__ = [
    "BadRequest",
    "Kind",
    "PolicyRequest",
    "PolicySettings",
    "Reply",
    "RequestReader",
    "policy_action",
    "respond",
]
