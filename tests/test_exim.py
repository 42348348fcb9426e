"""A real Exim 4.96 (Debian's exim4-daemon-heavy) asks the worker over its spamd interface.

Debian's exim4 and postfix packages conflict, and the suite needs postfix, so
Exim is never installed: ``./dev exim`` unpacks it into .cache/exim, and each
test runs it with its own configuration and spool under a temporary
directory (``exim -C conf -bs``, the client address given with ``-oMa``),
delivering to a file.  libnss-wrapper gives Exim its compiled-in user
Debian-exim without touching /etc/passwd.

The configuration lines between the ``docs:`` markers are the ones
docs/integrations.md shows.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from test_legacy import http_reply, serving

REPO = Path(__file__).resolve().parent.parent
EXIM_ROOT = REPO / ".cache" / "exim" / "root"
EXIM = EXIM_ROOT / "usr" / "sbin" / "exim4"

# docs: exim main
MAIN = """\
spamd_address = 127.0.0.1 {port} {variant}
acl_smtp_data = acl_check_data
"""
# docs: exim acl
ACL = r"""
acl_check_data:
  warn  spam       = nobody:true/defer_ok
        add_header = X-Spam-Score: $spam_score
        add_header = X-Spam-Action: $spam_action
        add_header = X-Spam-Report: $spam_report
  # the worker's header changes: the Authent header and Received-SPF, forged copies removed
  warn  condition     = ${if match{$spam_report}{X-Milter-Del: }}
        remove_header = ${sg{${map{<\n ${filter{<\n $spam_report}{match{$item}{\N^ ?X-Milter-Del: \N}}}}\
                                  {${sg{$item}{\N^ ?X-Milter-Del: \N}{}}}}}{\n}{:}}
  warn  condition     = ${if match{$spam_report}{X-Milter-Add: }}
        add_header    = ${map{<\n ${filter{<\n $spam_report}{match{$item}{\N^ ?X-Milter-Add: \N}}}}\
                                  {${sg{$item}{\N^ ?X-Milter-Add: \N}{}}}}
  accept
"""
# docs: end


def exim_setup() -> str | None:
    """Unpack the private Exim when it is not there yet; the reason it cannot run, or None."""
    if not EXIM.exists():
        done = subprocess.run([str(REPO / "dev"), "exim"], capture_output=True, text=True, timeout=600, check=False)
        if not EXIM.exists():
            return f"no private Exim: `./dev exim` failed: {(done.stderr or done.stdout)[-500:]}"
    return None


@pytest.fixture(scope="module")
def exim_env(tmp_path_factory):
    """What every Exim run needs: its libraries, and a user table with Debian-exim (nss_wrapper)."""
    reason = exim_setup()
    if reason is not None:
        pytest.skip(reason)
    base = tmp_path_factory.mktemp("exim-nss")
    uid = os.getuid() or 64999  # Exim refuses to run as root for its own user
    (base / "passwd").write_text(
        Path("/etc/passwd").read_text() + f"Debian-exim:x:{uid}:{uid}::/nonexistent:/usr/sbin/nologin\n"
    )
    (base / "group").write_text(Path("/etc/group").read_text() + f"Debian-exim:x:{uid}:\n")
    libs = sorted({str(p.parent) for p in (EXIM_ROOT / "usr" / "lib").rglob("*.so*")})
    wrapper = next((EXIM_ROOT / "usr" / "lib").rglob("libnss_wrapper.so"), None)
    if wrapper is None:
        pytest.skip("no private Exim: libnss_wrapper.so missing from .cache/exim (rm -r .cache/exim; ./dev exim)")
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LD_LIBRARY_PATH": ":".join(libs),
        "LD_PRELOAD": str(wrapper),
        "NSS_WRAPPER_PASSWD": str(base / "passwd"),
        "NSS_WRAPPER_GROUP": str(base / "group"),
    }
    return env, uid


@pytest.fixture(scope="module")
def worker(knot, tmp_path_factory):
    server = serving(knot, tmp_path_factory.mktemp("exim-worker"))
    yield server
    server.stop()


class Exim:
    """One private Exim: configuration, spool, log and delivered mail under *base*."""

    def __init__(self, base: Path, env: dict[str, str], uid: int, port: int, variant: str):
        self.base, self.env = base, env
        for sub in ("spool", "log", "mail"):
            (base / sub).mkdir()
            os.chown(base / sub, uid, uid)
        self.conf = base / "exim.conf"
        self.conf.write_text(
            f"primary_hostname = mx.receiver.test\nqualify_domain = receiver.test\n"
            f"spool_directory = {base}/spool\nlog_file_path = {base}/log/%s\nexim_path = {EXIM}\n"
            "keep_environment = LD_LIBRARY_PATH : LD_PRELOAD : NSS_WRAPPER_PASSWD : NSS_WRAPPER_GROUP\n"
            "smtp_enforce_sync = false\nhost_lookup =\nrfc1413_hosts =\n"
            + MAIN.format(port=port, variant=variant)
            + "acl_smtp_rcpt = acl_check_rcpt\n\nbegin acl\nacl_check_rcpt:\n  accept domains = receiver.test\n"
            + ACL
            + "\nbegin routers\nto_file:\n  driver = accept\n  transport = to_file\n"
            f"\nbegin transports\nto_file:\n  driver = appendfile\n  file = {base}/mail/inbox\n"
            "  user = Debian-exim\n  group = Debian-exim\n"
        )

    def send(self, ip: str, helo: str, sender: str, rcpt: str, message: str) -> str:
        """One SMTP session from *ip* (exim -bs -oMa), then a queue run delivers it; the transcripts.

        Delivery is a queue run of its own (not -odi): Exim re-executes itself to deliver, and the
        loader ignores LD_LIBRARY_PATH in a process whose real and effective users differ.
        """
        script = (
            f"HELO {helo}\r\nMAIL FROM:<{sender}>\r\nRCPT TO:<{rcpt}@receiver.test>\r\nDATA\r\n"
            + message.replace("\n", "\r\n")
            + "\r\n.\r\nQUIT\r\n"
        )
        out = ""
        for args, stdin in ((["-odq", "-bs", "-oMa", ip], script.encode()), (["-qf"], b"")):
            done = subprocess.run(
                [str(EXIM), "-C", str(self.conf), *args],
                input=stdin,
                capture_output=True,
                env=self.env,
                timeout=60,
                check=False,  # the transcript tells what went wrong
            )
            out += done.stdout.decode("latin-1") + done.stderr.decode("latin-1")
        return out

    def delivered(self) -> dict[str, list[str]]:
        """The header fields of the message delivered (the only one), by name, in order."""
        path = self.base / "mail" / "inbox"
        if not path.exists():
            logs = "".join(p.read_text() for p in (self.base / "log").glob("*"))
            raise AssertionError(f"nothing delivered; Exim's log:\n{logs}")
        head = path.read_text().split("\n", 1)[1].split("\n\n", 1)[0]  # after mbox's "From " line
        fields: dict[str, list[str]] = {}
        for field in re.split(r"\n(?![ \t])", head):
            name, _, value = field.partition(":")
            fields.setdefault(name, []).append(value.strip())
        return fields


@pytest.fixture
def exim(exim_env, worker):
    env, uid = exim_env
    # Exim runs as Debian-exim for its spool and log: pytest's own temporary tree is closed to it
    top = Path(tempfile.mkdtemp(prefix="regcheck-exim-"))
    os.chmod(top, 0o711)

    def make(variant: str) -> Exim:
        base = top / (variant.replace("=", "-") or "spamd")
        base.mkdir(mode=0o711)
        return Exim(base, env, uid, worker.port, variant)

    yield make
    shutil.rmtree(top, ignore_errors=True)


CASES = [
    # the seed's ACCEPT and REJECT cases (README's examples, tests/zones)
    pytest.param("208.20.133.17", "mailout17.heaven.net", "sender@heaven.net", id="accept-heaven-qr1"),
    pytest.param("69.55.226.139", "mx1.wayforward.net", "tway@optsw.com", id="accept-wayforward-spf"),
    pytest.param("208.20.133.32", "mailout32.heaven.net", "sender@heaven.net", id="reject-heaven-qr1"),
    pytest.param("208.20.133.17", "mx1.example.co.uk", "a@example.co.uk", id="reject-stop-all"),
    pytest.param("208.20.133.17", "JUPITER", "a@jupiter.test", id="reject-bad-helo"),
]
MESSAGE = "From: sender@heaven.net\nTo: someone@receiver.test\nSubject: seed case\nX-Regcheck: forged\n\nHello.\n"


def header_changes_made(delivered: dict[str, list[str]], http: dict) -> None:
    """The reply's headers (the Authent header; Received-SPF where SPF ran) are in the message once
    each, and the forged ones are gone."""
    milter = http["milter"]
    for name, value in milter["add_headers"].items():
        assert delivered.get(name) == [value], (name, delivered)
    for name in set(milter["remove_headers"]) - set(milter["add_headers"]):
        assert name not in delivered


@pytest.mark.parametrize("ip,helo,sender", CASES)
def test_exim_rspamd_variant(exim, worker, ip, helo, sender):
    mta = exim("variant=rspamd")
    transcript = mta.send(ip, helo, sender, "someone", MESSAGE)
    assert "250 OK id=" in transcript, transcript
    delivered = mta.delivered()
    got = {name: values[-1] for name, values in delivered.items()}
    http = http_reply(worker, {"IP": ip, "Helo": helo, "From": sender})
    assert got["X-Spam-Score"] == f"{http['score']:.1f}"
    assert got["X-Spam-Action"] == http["action"]
    report = got["X-Spam-Report"]
    assert report.startswith(f"Action: {http['action']}")
    assert http["symbols"] and all(name.startswith("REGCHECK_") for name in http["symbols"])
    for name, sym in http["symbols"].items():
        options = f"; {', '.join(sym['options'])}" if sym.get("options") else ""
        assert f"Symbol: {name}({sym['score']:.2f}){options}\n" in report + "\n"
    header_changes_made(delivered, http)


@pytest.mark.parametrize("ip,helo,sender", CASES)
def test_exim_default_spamd_variant(exim, worker, ip, helo, sender):
    """Exim's default variant sends REPORT SPAMC/1.2 and no envelope: the worker reads the Received
    header Exim wrote for the session (no MAIL FROM: SPF then checks the HELO's identity)."""
    mta = exim("")
    transcript = mta.send(ip, helo, sender, "someone", MESSAGE)
    assert "250 OK id=" in transcript, transcript
    delivered = mta.delivered()
    got = {name: values[-1] for name, values in delivered.items()}
    http = http_reply(worker, {"IP": ip, "Helo": helo})
    assert got["X-Spam-Score"] == f"{http['score']:.1f}"
    # this variant's action is Exim's own: score against the threshold (here the reject score)
    assert got["X-Spam-Action"] == ("reject" if http["score"] >= http["required_score"] else "no action")
    report = got["X-Spam-Report"]
    assert f"Envelope: Received header 1 of 1: ip={ip} helo={helo}" in report
    assert http["symbols"]
    for name, sym in http["symbols"].items():
        assert re.search(rf"{sym['score']:.1f} {name} ", report)
    header_changes_made(delivered, http)


def test_docs_show_the_lines_tested_here():
    """docs/integrations.md pastes this module's Exim configuration: it must stay the same text."""
    doc = (REPO / "docs" / "integrations.md").read_text()
    assert MAIN.format(port=11340, variant="variant=rspamd") in doc
    assert ACL.strip() in doc
