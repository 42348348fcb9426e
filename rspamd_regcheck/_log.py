"""Logging: one line per check, as text (key=value) or JSON; client addresses maskable.

The line carries the seed verdict in every mode, so an admin can watch what
enforce mode would do before turning it on.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import sys
from typing import Any

from ._check import CheckResult, Envelope

CHECK_LOGGER = "rspamd_regcheck.check"


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


def _text_value(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        value = ",".join(str(v) for v in value)
    text = str(value)
    return f'"{text}"' if not text or any(c.isspace() or c == '"' for c in text) else text


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


def setup_logging(level: str = "info", fmt: str = "text") -> None:
    """Log to stderr (journald takes it from there under systemd)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter() if fmt == "json" else _TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def mask_ip(ip: object, mask: bool) -> str:
    """The client address, or its /24 (IPv4) or /48 (IPv6) network when masking."""
    if ip is None:
        return "-"
    if not mask:
        return str(ip)
    prefix = 24 if getattr(ip, "version", 4) == 4 else 48
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))


def check_fields(env: Envelope, result: CheckResult, seconds: float, mode: str, mask: bool) -> dict[str, Any]:
    """The fields of one check's log line."""
    v = result.verdict
    return {
        "event": "check",
        "qid": env.queue_id or "-",
        "ip": mask_ip(env.ip, mask),
        "helo": env.helo or "-",
        "id": v.id or "-",
        "symbols": [h.name for h in v.symbols] or "-",
        "verdict": f"{v.seed.action.value}/{v.seed.smtp_code}",
        "mode": mode,
        "skipped": v.skipped or "-",
        "queries": result.queries,
        "ms": round(seconds * 1000, 2),
    }
