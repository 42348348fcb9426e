"""Shared fixtures: a real knot DNS server serving the zone files in tests/zones/."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import dns.rcode
import pytest

ZONES_DIR = Path(__file__).parent / "zones"
KNOT_START_TIMEOUT = 15.0  # seconds; knot answers in ~30 ms on an idle machine


@dataclass(frozen=True)
class Knot:
    """A running knotd on a loopback port, with mod-stats to count what it was asked."""

    host: str
    port: int
    zones: tuple[str, ...]
    conf: Path

    @property
    def nameserver(self) -> str:
        return f"{self.host}:{self.port}"

    def queries(self) -> int:
        """How many queries knot has answered so far (UDP and TCP), read with knotc."""
        knotc = shutil.which("knotc") or "/usr/sbin/knotc"
        out = subprocess.run(
            [knotc, "-c", str(self.conf), "stats", "mod-stats.server-operation"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout
        for line in out.splitlines():
            if line.startswith("mod-stats.server-operation[query]"):
                return int(line.rsplit("=", 1)[1])
        return 0


def free_port(host: str = "127.0.0.1") -> int:
    """A port free for both UDP and TCP on *host* (DNS needs both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind((host, 0))
            port = udp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind((host, port))
                except OSError:
                    continue
                return int(port)
    raise RuntimeError("no free port found")


def _zone_origin(path: Path) -> str:
    for line in path.read_text().splitlines():
        if line.startswith("$ORIGIN"):
            return line.split()[1].rstrip(".")
    raise ValueError(f"{path} has no $ORIGIN")


def _wait_for(host: str, port: int, zone: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + KNOT_START_TIMEOUT
    query = dns.message.make_query(zone + ".", "SOA")
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"knotd exited with status {proc.returncode}")
        try:
            reply = dns.query.udp(query, host, port=port, timeout=0.2)
        except (OSError, dns.exception.Timeout):
            time.sleep(0.02)
            continue
        if reply.rcode() == dns.rcode.NOERROR and reply.answer:
            return
        time.sleep(0.02)
    raise RuntimeError(f"knotd did not answer for {zone} within {KNOT_START_TIMEOUT} s")


class KnotServer:
    """knotd serving every tests/zones/*.zone; stop() and start() again on the same port."""

    def __init__(self, base: Path):
        self.knotd = shutil.which("knotd") or ("/usr/sbin/knotd" if os.path.exists("/usr/sbin/knotd") else None)
        if self.knotd is None:
            pytest.fail("knotd not found: install Debian's 'knot' package (./dev test does)")
        self.base = base
        zones_dir = base / "zones"
        zones_dir.mkdir(parents=True)
        zones = []
        zone_lines = []
        for path in sorted(ZONES_DIR.glob("*.zone")):
            origin = _zone_origin(path)
            shutil.copy(path, zones_dir / path.name)
            zones.append(origin)
            zone_lines.append(f"  - domain: {origin}\n    file: {path.name}\n")
        self.host, self.port = "127.0.0.1", free_port()
        self.conf = base / "knot.conf"
        self.conf.write_text(
            f"server:\n    listen: {self.host}@{self.port}\n    rundir: {base}\n"
            "log:\n  - target: stderr\n    any: warning\n"
            f"database:\n    storage: {base}\n"
            f"template:\n  - id: default\n    storage: {zones_dir}\n"
            "    zonefile-sync: -1\n    journal-content: none\n    global-module: mod-stats\n"
            f"control:\n    listen: {base}/knot.sock\n"
            "zone:\n" + "".join(zone_lines)
        )
        self.zones = tuple(zones)
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        assert self.knotd is not None
        with open(self.base / "knotd.log", "ab") as log:
            self.proc = subprocess.Popen([self.knotd, "-c", str(self.conf)], stdout=log, stderr=subprocess.STDOUT)
        _wait_for(self.host, self.port, self.zones[0], self.proc)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    @property
    def info(self) -> Knot:
        return Knot(self.host, self.port, self.zones, self.conf)


@pytest.fixture(scope="session")
def knot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Knot]:
    """knotd serving every tests/zones/*.zone on a free loopback port."""
    server = KnotServer(tmp_path_factory.mktemp("knot"))
    try:
        yield server.info
    finally:
        server.stop()
