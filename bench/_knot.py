"""Start a knot server on a free loopback port for benchmarks (shared by bench scripts)."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dns.exception
import dns.message
import dns.query


def free_port() -> int:
    """A loopback port free for both UDP and TCP (knot listens on both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port = int(udp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no free port")


@contextmanager
def knot(zones: dict[str, str], stats: bool = False) -> Iterator[tuple[str, int, Path]]:
    """Run knotd serving *zones* ({origin: zone text}); yields (host, port, dir)."""
    knotd = shutil.which("knotd") or "/usr/sbin/knotd"
    base = Path(tempfile.mkdtemp(prefix="regcheck-bench-"))
    (base / "zones").mkdir()
    lines = []
    for origin, text in zones.items():
        (base / "zones" / f"{origin}.zone").write_text(text)
        lines.append(f"  - domain: {origin}\n    file: {origin}.zone\n")
    port = free_port()
    module = "    global-module: mod-stats\n" if stats else ""
    (base / "knot.conf").write_text(
        f"server:\n    listen: 127.0.0.1@{port}\n    rundir: {base}\n"
        "log:\n  - target: stderr\n    any: warning\n"
        f"database:\n    storage: {base}\n"
        f"template:\n  - id: default\n    storage: {base}/zones\n    zonefile-sync: -1\n    journal-content: none\n"
        + module
        + "zone:\n"
        + "".join(lines)
    )
    proc = subprocess.Popen([knotd, "-c", str(base / "knot.conf")], stderr=subprocess.DEVNULL)
    try:
        q = dns.message.make_query(next(iter(zones)) + ".", "SOA")
        for _ in range(1500):
            if proc.poll() is not None:
                raise RuntimeError(f"knotd exited with status {proc.returncode}")
            try:
                dns.query.udp(q, "127.0.0.1", port=port, timeout=0.1)
                break
            except (OSError, dns.exception.Timeout):
                time.sleep(0.02)
        else:
            raise RuntimeError(f"knotd did not answer on port {port}")
        yield "127.0.0.1", port, base
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)
        shutil.rmtree(base, ignore_errors=True)
