"""The slim reply: only what the rspamd plugin uses of a check.  Pure.

The full reply (`_reply.build_reply`) is shaped like rspamd's own scan
result, for rspamc and MTAs that read it directly; the plugin throws most of
it away (names twice, descriptions, scores, ratings) after paying to decode
it.  A request with the header ``Regcheck-Reply: slim`` gets instead::

    {"symbols": [[name, weight, [option, ...]], ...],   # sorted by name
     "milter": {"add_headers": {...}, "remove_headers": {...}},  # only when not empty
     "enforce": {"action", "message"},   # the worker's enforce decision, as regcheck.enforce
     "pra": true,                        # only when Sender ID read the headers
     "rcpt": true,                       # only when the enforce decision rests on the recipients
     "config": fingerprint,              # the worker's configuration, as Checker.fingerprint
     "max_age": seconds}

``max_age`` is how long the plugin may reuse the result: until the first DNS
answer it rested on expires, 0 when one was a failure (nothing to reuse).
``pra`` says the result rests on the message's headers too: the plugin then
reuses it only for messages with the same PRA; without it, for any message
of the same session.  ``rcpt`` says the same of the recipients: enforce
mode's decision is a reject or soft reject that mail to a ``never_reject``
local part turns into add header (`_enforce.rests_on_rcpts`); the plugin then
reuses it only for the same recipients' local parts.  ``enforce`` is the
decision of `_enforce.enforce` for this message, applied by the plugin as
given (``message`` only for reject and soft reject).  ``config`` changes when
the worker's configuration does (a reload, an edited zone file or local
list): the plugin then drops the results it kept, which rest on the old one.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import msgpack

from ._reply import safe
from ._sid import rests_on_pra
from ._types import Verdict

if TYPE_CHECKING:
    from ._enforce import Enforcement

SLIM_HEADER = "regcheck-reply"  # its value "slim" asks for this form


def wants_slim(headers: Iterable[tuple[str, str]]) -> bool:
    """True when the request asks for the slim reply."""
    return any(n.lower() == SLIM_HEADER and v.strip().lower() == "slim" for n, v in headers)


def build_slim(
    verdict: Verdict, enforcement: Enforcement, rests_on_rcpts: bool = False, fingerprint: str | None = None
) -> dict[str, Any]:
    """The slim reply for *verdict* and its *enforcement*, without ``max_age`` (that changes as time
    passes); *rests_on_rcpts*: the decision would differ for other recipients; *fingerprint*: the
    worker's configuration (`Checker.fingerprint`)."""
    reply: dict[str, Any] = {
        "symbols": [
            [hit.name, hit.weight, [o if o.isascii() else safe(o) for o in hit.options]]
            for hit in sorted(verdict.symbols, key=_name)
        ]
    }
    milter: dict[str, Any] = {}
    if verdict.add_headers:
        milter["add_headers"] = {name: safe(value) for name, value in verdict.add_headers}
    if verdict.remove_headers:
        milter["remove_headers"] = {name: 0 for name in verdict.remove_headers}
    if milter:
        reply["milter"] = milter
    if rests_on_pra(verdict.methods):
        reply["pra"] = True
    if rests_on_rcpts:
        reply["rcpt"] = True
    decision: dict[str, Any] = {"action": enforcement.action.value}
    if enforcement.message is not None:
        decision["message"] = safe(enforcement.message)
    reply["enforce"] = decision
    if fingerprint is not None:
        reply["config"] = fingerprint
    return reply


def max_age(valid_until: float, now: float, ceiling: int) -> int:
    """Whole seconds from *now* until *valid_until*, at most *ceiling* (both `time.monotonic()`)."""
    if valid_until == math.inf:
        return ceiling
    return max(0, min(ceiling, int(valid_until - now)))


def encode_slim(reply: dict[str, Any]) -> bytes:
    """*reply* (from `build_slim`) as msgpack, ready for `with_max_age`: the map without its last entry."""
    if len(reply) >= 15:  # a fixmap holds 15 entries; the form has at most 6
        raise ValueError("slim reply too large for a fixmap")
    return msgpack.packb(reply)[1:]  # drop the fixmap's header byte: with_max_age writes it


def with_max_age(entries: bytes, count: int, age: int) -> bytes:
    """The msgpack slim reply: the *count* encoded *entries* of `encode_slim` and ``max_age``."""
    return bytes((0x80 | (count + 1),)) + entries + _MAX_AGE_KEY + msgpack.packb(age)


_MAX_AGE_KEY = msgpack.packb("max_age")


def _name(hit: Any) -> str:
    return str(hit.name)
