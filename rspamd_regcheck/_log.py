"""Logging: one line per check, as text (key=value) or JSON; client addresses maskable.

The line carries the seed verdict and the action enforce mode takes for that
message (``enforce=``, from `_enforce.enforce`), in every mode, so an admin can
watch what enforce mode would do before turning it on.  A DNS failure's
detail (which resolver, what error) is here as ``detail=``, never in SMTP text.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import re
import sys
import time
from collections import OrderedDict
from typing import Any

from ._check import CheckResult, Envelope
from ._enforce import NO_ACTION, EnforceAction, Enforcement

CHECK_LOGGER = "rspamd_regcheck.check"
MAX_STATIC = 2048  # rendered log-line parts kept for reused results


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "fields", None)
        head = f"{self.formatTime(record)} {record.name} pid={record.process} {record.levelname.lower()}"
        if fields is None:
            text = f"{head} {record.getMessage()}"
        else:
            text = f"{head} " + " ".join(f"{k}={_text_value(v)}" for k, v in fields.items())
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


_PLAIN = re.compile(r"[!#-<>-\[\]-~]+")  # printable ASCII but '"', '=' and '\\': written as it is


def _text_value(value: Any) -> str:
    """A value for ``key=value``: plain when it can be, else a JSON string (quotes, '=' and
    control characters escaped, so a hostile HELO cannot fake fields or lines)."""
    if isinstance(value, (list, tuple)):
        value = ",".join(str(v) for v in value)
    text = str(value)
    # '=' is written \u003d: a search for "verdict=" finds the field, never a HELO's text
    return text if _PLAIN.fullmatch(text) else json.dumps(text).replace("=", "\\u003d")


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        obj: dict[str, Any] = {
            "time": self.formatTime(record),
            "logger": record.name,
            "level": record.levelname.lower(),
            "pid": record.process,
        }
        fields = getattr(record, "fields", None)
        if fields is None:
            obj["message"] = record.getMessage()
        else:
            obj.update(fields)
        if record.exc_info:
            obj["traceback"] = self.formatException(record.exc_info)
        return json.dumps(obj, separators=(",", ":"), default=str)


_format = "text"


def setup_logging(level: str = "info", fmt: str = "text") -> None:
    """Log to stderr (journald takes it from there under systemd)."""
    global _format
    _format = fmt
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter() if fmt == "json" else _TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


class CheckLog:
    """The per-check lines, written in batches: at thousands of checks a second the logging
    module's per-record work (and a write per line) would cost as much as the check itself.

    Lines go to stderr like every other log line, in the same formats, at most
    `FLUSH_SECONDS` late; `flush()` at shutdown writes what is left.
    """

    FLUSH_SECONDS = 0.25
    MAX_LINES = 512

    def __init__(self, loop: Any = None):
        self.loop = loop
        self.lines: list[str] = []
        self.timer: Any = None
        self.pid = os.getpid()
        self._second = -1
        self._prefix = ""
        self._static: OrderedDict[int, tuple[CheckResult, dict[str, Any], str]] = OrderedDict()
        self._head = f"{CHECK_LOGGER} pid={self.pid} info event=check"
        self._logger = logging.getLogger(CHECK_LOGGER)  # once: getLogger takes the logging module's lock

    @property
    def enabled(self) -> bool:
        return self._logger.isEnabledFor(logging.INFO)

    def check(
        self,
        env: Envelope,
        result: CheckResult,
        seconds: float,
        mode: str,
        mask: bool,
        enforcement: Enforcement = NO_ACTION,
        queue_id: str | None = None,
    ) -> None:
        """Log one check.  The part that only depends on the result is rendered once per result
        (a reused result has the same IP, HELO and verdict): the queue id and the time vary.
        *queue_id*, when given, is logged instead of *env*'s (a kept envelope, another message)."""
        entry = self._static.get(id(result))
        if entry is None or entry[0] is not result:
            if _format == "json":
                fields = check_fields(env, result, seconds, mode, mask)
                del fields["qid"], fields["ms"], fields["enforce"]
                entry = (result, fields, "")
            else:  # the fields of check_fields, in its order, written out at once
                v = result.verdict
                text = (
                    f"ip={mask_ip(env.ip, mask)} helo={_text_value(env.helo or '-')} id={_text_value(v.id or '-')} "
                    f"symbols={','.join([h.name for h in v.symbols]) or '-'} "
                    f"verdict={v.seed.action.value}/{v.seed.smtp_code} mode={_text_value(mode)} "
                    f"skipped={_text_value(v.skipped or '-')} queries={result.queries}"
                )
                if v.seed.detail:
                    text += f" detail={_text_value(v.seed.detail)}"
                entry = (result, {}, text)
            self._static[id(result)] = entry  # holding the result keeps its id from being reused
            if len(self._static) > MAX_STATIC:
                self._static.popitem(last=False)
        qid, ms = (queue_id if queue_id is not None else env.queue_id) or "-", round(seconds * 1000, 3)
        action = enforcement.action.value
        if _format == "json":
            self.write({"event": "check", "qid": qid, **entry[1], "enforce": action, "ms": ms})
        else:
            enforced = _ENFORCE_TEXT[action]
            self._append(f"{self._stamp()} {self._head} qid={_text_value(qid)} {entry[2]} enforce={enforced} ms={ms}")

    def _stamp(self) -> str:
        now = time.time()
        second = int(now)
        if second != self._second:  # formatting the date once a second, not once a line
            self._second, self._prefix = second, time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now))
        return f"{self._prefix},{int(now % 1 * 1000):03d}"

    def write(self, fields: dict[str, Any]) -> None:
        stamp = self._stamp()
        if _format == "json":
            obj = {"time": stamp, "logger": CHECK_LOGGER, "level": "info", "pid": self.pid, **fields}
            line = json.dumps(obj, separators=(",", ":"), default=str)
        else:
            body = " ".join(f"{k}={_text_value(v)}" for k, v in fields.items())
            line = f"{stamp} {CHECK_LOGGER} pid={self.pid} info {body}"
        self._append(line)

    def _append(self, line: str) -> None:
        self.lines.append(line)
        if len(self.lines) >= self.MAX_LINES or self.loop is None:
            self.flush()
        elif self.timer is None:
            self.timer = self.loop.call_later(self.FLUSH_SECONDS, self.flush)

    def flush(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.lines:
            text = "\n".join(self.lines) + "\n"
            self.lines.clear()
            try:
                sys.stderr.write(text)
                sys.stderr.flush()
            except (OSError, ValueError):  # stderr closed or gone: nothing better to do with a log line
                pass


def mask_ip(ip: object, mask: bool) -> str:
    """The client address, or its /24 (IPv4) or /48 (IPv6) network when masking."""
    if ip is None:
        return "-"
    if not mask:
        return str(ip)
    prefix = 24 if getattr(ip, "version", 4) == 4 else 48
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))


def check_fields(
    env: Envelope,
    result: CheckResult,
    seconds: float,
    mode: str,
    mask: bool,
    enforcement: Enforcement = NO_ACTION,
) -> dict[str, Any]:
    """The fields of one check's log line."""
    v = result.verdict
    fields = {
        "qid": env.queue_id or "-",
        "ip": mask_ip(env.ip, mask),
        "helo": env.helo or "-",
        "id": v.id or "-",
        "symbols": [h.name for h in v.symbols] or "-",
        "verdict": f"{v.seed.action.value}/{v.seed.smtp_code}",
        "mode": mode,
        "skipped": v.skipped or "-",
        "queries": result.queries,
        "enforce": enforcement.action.value,
        "ms": round(seconds * 1000, 3),
    }
    if v.seed.detail:
        fields["detail"] = v.seed.detail
    return fields


_ENFORCE_TEXT = {a.value: _text_value(a.value) for a in EnforceAction}
