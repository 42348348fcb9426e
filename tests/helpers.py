"""Small helpers shared by the tests that talk to real processes."""

from __future__ import annotations

import os
import re
import socket
import time
from pathlib import Path


def read_reply(s: socket.socket) -> tuple[int | None, dict[str, str], bytes]:
    """Read one HTTP reply (Content-Length framed): (status, headers, body), or (None, {}, b"") if closed."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(65536)
        if not chunk:
            return None, {}, b""
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        chunk = s.recv(65536)
        if not chunk:
            break
        rest += chunk
    return int(lines[0].split()[1]), headers, rest[:length]


def children(pid: int) -> list[int]:
    """The processes whose parent is *pid* (read from /proc)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry))
    return sorted(out)


def run_check(config, ip: str | None, helo: str | None, **envelope):  # type: ignore[no-untyped-def]
    """One check with a fresh Checker (closed after), as `asyncio.run` gives it."""
    import asyncio
    import ipaddress

    from rspamd_regcheck import Checker, Envelope

    async def go():  # type: ignore[no-untyped-def]
        checker = Checker(config)
        try:
            return await checker.check(Envelope(ip=ipaddress.ip_address(ip) if ip else None, helo=helo, **envelope))
        finally:
            checker.close()

    return asyncio.run(go())


def symbol_options(result) -> dict[str, list[str]]:  # type: ignore[no-untyped-def]
    return {s.name: list(s.options) for s in result.verdict.symbols}


FLUSH_WAIT = 0.75  # 3x the check log's batch delay (_log.CheckLog.FLUSH_SECONDS, 0.25 s)


def check_lines(log: Path, helo: str, expect: int, deadline: float = 10.0) -> int:
    """The worker's ``event=check`` lines for *helo* in *log*, once they have had time to come.

    The check log is written in batches (up to 0.25 s late, more on a loaded machine): wait
    until *expect* lines are there (at most *deadline* seconds), then one more batch delay, so
    a line too many is seen too.  With *expect* 0, only that one delay.
    """
    pattern = re.compile(rf"event=check .*helo={re.escape(helo)} ")
    give_up = time.monotonic() + deadline
    while expect and len(pattern.findall(log.read_text())) < expect and time.monotonic() < give_up:
        time.sleep(0.05)
    time.sleep(FLUSH_WAIT)
    return len(pattern.findall(log.read_text()))
