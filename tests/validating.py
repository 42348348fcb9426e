"""A validating resolver for the DNSSEC tests: Debian's unbound in front of a knot that signs.

knot serves three registry zones on a loopback port of its own:

    signed.dnssec.test     signed by knot itself (dnssec-signing: on)
    unsigned.dnssec.test   not signed: unbound finds it insecure (no AD)
    broken.dnssec.test     signed by knot, then one TXT record changed under
                           its signature: unbound finds it bogus (SERVFAIL)

unbound runs on another loopback port with a config of its own in a
temporary directory, a stub zone per registry zone pointing at knot, and
the signed zones' trust anchors read from knot (their KSK, asked with kdig).
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import dns.message
import dns.query
import dns.rcode
import dns.zone

from conftest import free_port

SIGNED, UNSIGNED, BROKEN = "signed.dnssec.test", "unsigned.dnssec.test", "broken.dnssec.test"
RECORD = "v=reg1 svc=S1:A,M2:A,H1:B ip4=192.0.2.0/24"
FORGED = "stop=all"  # what the broken zone's record says once changed under its signature
START_TIMEOUT = 30.0  # seconds: knot signs, unbound reads its anchors


@dataclass(frozen=True)
class Validating:
    """Where to ask: unbound (validating) and knot (authoritative, for comparison)."""

    unbound: tuple[str, int]
    knot: tuple[str, int]


def _zone_text(origin: str) -> str:
    return (
        f"$ORIGIN {origin}.\n$TTL 300\n"
        "@ IN SOA ns1 hostmaster 1 3600 600 86400 300\n@ IN NS ns1\nns1 IN A 127.0.0.1\n"
        f'heaven.net IN TXT "{RECORD}"\n'
    )


def _ask(host: str, port: int, name: str, rtype: str) -> dns.message.Message | None:
    try:
        return dns.query.udp(dns.message.make_query(name, rtype), host, port=port, timeout=0.5)
    except (OSError, dns.exception.Timeout):
        return None


def _wait(what: str, proc: subprocess.Popen[bytes], ready: object) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with status {proc.returncode}")
        if ready():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise RuntimeError(f"{what} was not ready within {START_TIMEOUT} s")


def _signed(host: str, port: int, zone: str) -> bool:
    reply = _ask(host, port, zone + ".", "DNSKEY")
    return reply is not None and any(rrset.rdtype == 48 for rrset in reply.answer)


def _knot_conf(base: Path, port: int, broken_signed: bool) -> str:
    zones = [(SIGNED, True), (UNSIGNED, False), (BROKEN, broken_signed)]
    lines = [
        f"server:\n    listen: 127.0.0.1@{port}\n    rundir: {base}\n",
        "log:\n  - target: stderr\n    any: warning\n",
        f"database:\n    storage: {base}\n",
        "acl:\n  - id: local\n    address: 127.0.0.1\n    action: transfer\n",
        f"template:\n  - id: default\n    storage: {base / 'zones'}\n    acl: local\n",
        f"control:\n    listen: {base}/knot.sock\n",
        "zone:\n",
    ]
    for origin, signing in zones:
        lines.append(f"  - domain: {origin}\n    file: {origin}.zone\n")
        if signing:
            lines.append("    dnssec-signing: on\n    zonefile-sync: -1\n")
        else:
            # served exactly as the file says, signatures included (the broken zone)
            lines.append("    zonefile-sync: -1\n    journal-content: none\n    zonefile-load: whole\n")
    return "".join(lines)


def _break(host: str, port: int, base: Path) -> None:
    """Change the broken zone's record under its signature (knot signed it; now it serves it as is)."""
    zone = dns.zone.from_xfr(dns.query.xfr(host, BROKEN + ".", port=port, timeout=5, lifetime=10))
    text = zone.to_text(relativize=False)
    if RECORD not in text:
        raise RuntimeError("the broken zone's record is not in its transfer")
    (base / "zones" / f"{BROKEN}.zone").write_text(text.replace(RECORD, FORGED))


def _anchor(host: str, port: int, zone: str) -> str:
    """The zone's key-signing key as an unbound trust anchor, read from knot with kdig."""
    kdig = shutil.which("kdig") or "/usr/bin/kdig"
    out = subprocess.run(
        [kdig, f"@{host}", "-p", str(port), "+short", zone + ".", "DNSKEY"],
        capture_output=True,
        text=True,
        check=True,
        timeout=10,
    ).stdout
    keys = [line for line in out.splitlines() if line.startswith("257 ")]
    if not keys:
        raise RuntimeError(f"knot gave no key-signing key for {zone}: {out!r}")
    return f'    trust-anchor: "{zone}. DNSKEY {keys[0]}"\n'


def _unbound_conf(base: Path, port: int, knot_port: int, anchors: str) -> str:
    stubs = "".join(
        f'stub-zone:\n    name: "{z}"\n    stub-addr: 127.0.0.1@{knot_port}\n' for z in (SIGNED, UNSIGNED, BROKEN)
    )
    return (
        "server:\n"
        f"    interface: 127.0.0.1@{port}\n    port: {port}\n"
        "    do-ip6: no\n    do-not-query-localhost: no\n"
        f'    directory: "{base}"\n    chroot: ""\n    username: ""\n    pidfile: ""\n'
        '    use-syslog: no\n    logfile: ""\n    verbosity: 1\n    val-log-level: 2\n'
        "    access-control: 127.0.0.0/8 allow\n"
        '    module-config: "validator iterator"\n'
        "    qname-minimisation: no\n    prefetch: no\n"
        '    local-zone: "test." nodefault\n'  # unbound answers .test itself by default (RFC 6761)
        + anchors
        + "remote-control:\n    control-enable: no\n"
        + stubs
    )


def _stop(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is not None and proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def validating_resolver(base: Path) -> Iterator[Validating]:
    """knot signing the test zones, and unbound validating them; both stopped after."""
    knotd = shutil.which("knotd") or "/usr/sbin/knotd"
    unbound = shutil.which("unbound") or "/usr/sbin/unbound"
    (base / "zones").mkdir(parents=True)
    for origin in (SIGNED, UNSIGNED, BROKEN):
        (base / "zones" / f"{origin}.zone").write_text(_zone_text(origin))
    host, kport, uport = "127.0.0.1", free_port(), free_port()
    conf = base / "knot.conf"
    knot_proc = unbound_proc = None
    log = open(base / "servers.log", "ab")  # noqa: SIM115 - closed below
    try:
        conf.write_text(_knot_conf(base, kport, broken_signed=True))
        knot_proc = subprocess.Popen([knotd, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT)
        _wait("knotd", knot_proc, lambda: _signed(host, kport, SIGNED) and _signed(host, kport, BROKEN))
        _break(host, kport, base)
        anchors = _anchor(host, kport, SIGNED) + _anchor(host, kport, BROKEN)
        _stop(knot_proc)  # again, serving the broken zone as changed, unsigned by knot from now on
        conf.write_text(_knot_conf(base, kport, broken_signed=False))
        knot_proc = subprocess.Popen([knotd, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT)
        _wait("knotd", knot_proc, lambda: _signed(host, kport, SIGNED) and _signed(host, kport, BROKEN))
        uconf = base / "unbound.conf"
        uconf.write_text(_unbound_conf(base, uport, kport, anchors))
        unbound_proc = subprocess.Popen([unbound, "-d", "-c", str(uconf)], stdout=log, stderr=subprocess.STDOUT)

        def answers() -> bool:
            reply = _ask(host, uport, f"heaven.net.{SIGNED}.", "TXT")
            return reply is not None and reply.rcode() == dns.rcode.NOERROR

        _wait("unbound", unbound_proc, answers)
        yield Validating((host, uport), (host, kport))
    finally:
        _stop(unbound_proc)
        _stop(knot_proc)
        log.close()
