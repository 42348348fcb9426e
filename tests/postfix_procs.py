"""A private Postfix for the tests: Debian's binaries, our own config and queue under a temp dir.

Never the system instance: ``master -c DIR`` reads DIR/main.cf, whose
``queue_directory`` and ``data_directory`` are under the same temp dir; it
listens on loopback only, on unprivileged ports; it delivers every message
for ``dest.test`` to ``smtp-sink``, which dumps each one to a file, so a
test reads exactly what Postfix delivered.  Clients are given their
address with XCLIENT (``smtpd_authorized_xclient_hosts``), so the policy
service sees a sender's address, not 127.0.0.1.
"""

from __future__ import annotations

import shutil
import smtplib
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from rspamd_procs import Proc

MASTER = "/usr/lib/postfix/sbin/master"
START_TIMEOUT = 20.0  # seconds; Postfix answers in well under one on an idle machine
DEST = "dest.test"


def postfix_installed() -> bool:
    return Path(MASTER).exists() and shutil.which("postfix") is not None and shutil.which("smtp-sink") is not None


def wait_port(port: int, proc: Proc) -> None:
    """Wait until *port* accepts connections, or fail with *proc*'s log if it exits first."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.proc.poll() is not None:
            raise RuntimeError(f"exited ({proc.proc.returncode}): {proc.log_path.read_text(errors='replace')[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port} after {START_TIMEOUT} s: {proc.log_path.read_text()[-2000:]}")


class PrivatePostfix:
    """master(8) with its own main.cf/master.cf, and smtp-sink capturing what it delivers.

    *services* maps a name to (port, smtpd_recipient_restrictions, smtpd_data_restrictions):
    one smtpd listener each, so one Postfix can show several policy set-ups; a service
    whose restrictions are None uses main.cf's, which end with *main_cf* (contrib/postfix/).
    The smtpd of each service named in *chrooted* runs chrooted in the queue directory, as
    Debian's master.cf runs it.
    """

    def __init__(
        self,
        services: dict[str, tuple[int, str | None, str | None]],
        sink_port: int,
        main_cf: str = "",
        chrooted: tuple[str, ...] = (),
    ):
        # Postfix's daemons run as the postfix user: every directory up to the queue must let
        # it through, which pytest's 0700 tmp_path does not.
        base = self.base = Path(tempfile.mkdtemp(prefix="regcheck-postfix-"))
        base.chmod(0o755)
        self.etc, self.queue, self.data = base / "etc", base / "queue", base / "data"
        self.capture = base / "capture"
        for d in (self.etc, self.queue, self.data, self.capture):
            d.mkdir(parents=True)
        shutil.chown(self.data, "postfix")
        shutil.chown(self.capture, "postfix")
        self.ports = {name: port for name, (port, _, _) in services.items()}
        self.maillog = base / "maillog"
        main = [
            "compatibility_level = 3.6",
            f"queue_directory = {self.queue}",
            f"data_directory = {self.data}",
            "mail_owner = postfix",
            "setgid_group = postdrop",
            "inet_interfaces = loopback-only",
            "inet_protocols = ipv4",
            "myhostname = mx.receiver.test",
            "mydomain = receiver.test",
            "myorigin = receiver.test",
            "mydestination =",
            "mynetworks = 127.0.0.0/8",
            f"relay_domains = {DEST}",
            f"relay_transport = relay:[127.0.0.1]:{sink_port}",
            "alias_maps =",
            "alias_database =",
            "local_recipient_maps =",
            "smtputf8_enable = no",
            "biff = no",
            "smtp_dns_support_level = disabled",
            "smtpd_authorized_xclient_hosts = 127.0.0.1",
            "smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination",
            "maillog_file_prefixes = /tmp, /var",
            f"maillog_file = {self.maillog}",
        ]
        master = [
            "cleanup   unix  n - n - 0 cleanup",
            "qmgr      unix  n - n 300 1 qmgr",
            "rewrite   unix  - - n - - trivial-rewrite",
            "bounce    unix  - - n - 0 bounce",
            "defer     unix  - - n - 0 bounce",
            "trace     unix  - - n - 0 bounce",
            "relay     unix  - - n - - smtp",
            "smtp      unix  - - n - - smtp",
            "error     unix  - - n - - error",
            "retry     unix  - - n - - error",
            "anvil     unix  - - n - 1 anvil",
            "scache    unix  - - n - 1 scache",
            "showq     unix  n - n - - showq",
            "postlog   unix-dgram n - n - 1 postlogd",
        ]
        for name, (port, rcpt, data) in services.items():
            master.append(f"127.0.0.1:{port} inet n - {'y' if name in chrooted else 'n'} - - smtpd")
            if rcpt is not None:
                main += [f"{name}_rcpt = {rcpt}", f"{name}_data = {data or ''}"]
                master.append(
                    f"  -o smtpd_recipient_restrictions=${name}_rcpt\n  -o smtpd_data_restrictions=${name}_data"
                )
        (self.etc / "main.cf").write_text("\n".join(main) + "\n" + main_cf)
        (self.etc / "master.cf").write_text("\n".join(master) + "\n")
        # `postfix check` creates the queue's directories with Postfix's own owners and modes.
        subprocess.run(["postfix", "-c", str(self.etc), "check"], capture_output=True, timeout=60, check=False)
        sink = ["smtp-sink", "-u", "postfix", "-h", "sink.test", "-d", f"{self.capture}/%H%M%S."]
        self.sink = Proc([*sink, f"127.0.0.1:{sink_port}", "10"], base / "sink.log")
        self.master = Proc([MASTER, "-c", str(self.etc), "-d"], base / "master.log")  # SIGTERM stops its children
        try:
            wait_port(sink_port, self.sink)
            for port in self.ports.values():
                wait_port(port, self.master)
        except Exception:
            self.stop()
            raise

    def stop(self) -> None:
        self.master.stop()
        self.sink.stop()
        shutil.rmtree(self.base, ignore_errors=True)

    def smtp(self, service: str, ip: str, helo: str) -> smtplib.SMTP:
        """An SMTP session whose client address (XCLIENT) is *ip*, greeting with *helo*."""
        s = smtplib.SMTP("127.0.0.1", self.ports[service], local_hostname="client.test", timeout=30)
        s.ehlo()
        code, text = s.docmd("XCLIENT", f"ADDR={ip} NAME=[UNAVAILABLE]")
        if code != 220:
            raise RuntimeError(f"XCLIENT refused: {code} {text!r}")
        s.ehlo(helo)
        return s

    def delivered(self, marker: str, timeout: float = 20.0) -> str:
        """The message smtp-sink received whose body holds *marker* (waits for delivery)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for path in self.capture.iterdir():
                text = path.read_text(errors="replace")
                if marker in text:
                    return text
            time.sleep(0.05)
        raise AssertionError(f"no delivered message holds {marker!r}; log:\n{self.log()[-3000:]}")

    def captured(self, marker: str) -> list[str]:
        return [t for p in self.capture.iterdir() if marker in (t := p.read_text(errors="replace"))]

    def log(self) -> str:
        return self.maillog.read_text(errors="replace") if self.maillog.exists() else ""

    def logged(self, text: str, timeout: float = 10.0) -> bool:
        """Whether *text* shows in Postfix's log (postlogd writes it a moment later)."""
        deadline = time.monotonic() + timeout
        while text not in self.log():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True
