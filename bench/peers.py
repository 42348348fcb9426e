"""SPF peers against a running knot: stock pyspf and spf-engine's policyd-spf.

    .venv/bin/python bench/peers.py

Used by benchmark harnesses that start knot themselves (the zone of
shared/docs/peer-perf.md, as ``spf_driver.zone`` writes it):

- ``pyspf_rates``: stock pyspf ``check2`` on one thread, dnspython's resolver
  pointed at knot; cold without a cache, warm with dnspython's LRUCache.
- ``policyd_rates``: one policyd-spf process (spf-engine, in its own venv under
  ``.cache/venv-policyd``, created on first use) driven lock-step over pipes
  with Postfix policy requests; its DNS pointed at knot by a small wrapper.

Run on its own, it starts knot with 3,000 domains and prints both peers' rates
for 600 cold and 100 warm domains.
"""

from __future__ import annotations

import fcntl
import itertools
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import IO

import dns.resolver
import spf

ROOT = Path(__file__).resolve().parents[1]
POLICYD_VENV = ROOT / ".cache" / "venv-policyd"
POLICYD_PACKAGES = ["spf-engine==3.1.0", "pyspf==2.0.14", "dnspython"]
CACHE_SIZE = 100_000  # far above the entries a warm pass needs, so nothing is evicted


def _prime_dnspython() -> None:
    """Import the rdata modules dnspython otherwise loads lazily on the first answer of each type.

    Keeps one-off import time out of the first timed checks.
    """
    import dns.rdtypes.ANY.MX
    import dns.rdtypes.ANY.TXT
    import dns.rdtypes.IN.A  # noqa: F401


def pyspf_rates(
    port: int, cold_domains: list[str], warm_domains: list[str], client: str = "192.0.2.10"
) -> tuple[float, float]:
    """Stock pyspf ``spf.check2(i=client, s=f"user@{d}", h=f"mx.{d}")`` on one thread against knot on 127.0.0.1:port.

    Cold: no cache, each domain once.  Warm: a dnspython LRUCache filled by one
    pass over *warm_domains*, then a timed pass.  Returns (cold checks/s, warm
    checks/s); raises RuntimeError if any result is not 'pass'.
    """

    def check(d: str) -> None:
        result, explanation = spf.check2(i=client, s=f"user@{d}", h=f"mx.{d}")
        if result != "pass":
            raise RuntimeError(f"pyspf {d}: {result} {explanation}")

    _prime_dnspython()
    # Importing rspamd_regcheck points pyspf's hook at our dispatcher; the peer must be stock pyspf.
    saved_lookup = spf.DNSLookup
    saved_resolver = dns.resolver.default_resolver
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = ["127.0.0.1"]
    resolver.port = port
    try:
        spf.DNSLookup = spf.DNSLookup_dnspython
        # pyspf calls the module-level dns.resolver.query, which uses the default resolver.
        dns.resolver.default_resolver = resolver
        with warnings.catch_warnings():
            # pyspf 2.0.14 calls the deprecated dns.resolver.query
            warnings.simplefilter("ignore", DeprecationWarning)
            t0 = time.perf_counter()
            for d in cold_domains:
                check(d)
            cold = len(cold_domains) / (time.perf_counter() - t0)

            resolver.cache = dns.resolver.LRUCache(CACHE_SIZE)
            for d in warm_domains:
                check(d)
            t0 = time.perf_counter()
            for d in warm_domains:
                check(d)
            warm = len(warm_domains) / (time.perf_counter() - t0)
        return cold, warm
    finally:
        spf.DNSLookup = saved_lookup
        dns.resolver.default_resolver = saved_resolver


# Runs inside the policyd venv as `python -c WRAPPER PORT CACHE CONFIG`.  policyd-spf reads
# its config path from sys.argv[1] and its DNS from dnspython's default resolver (through
# pyspf), so the wrapper points that resolver at knot and hands main() only the config.
_WRAPPER = f"""\
import sys, warnings
import dns.resolver
import dns.rdtypes.ANY.MX, dns.rdtypes.ANY.TXT, dns.rdtypes.IN.A  # lazy imports, out of the timed requests
warnings.simplefilter("ignore", DeprecationWarning)
port, cache, config = int(sys.argv[1]), sys.argv[2] == "1", sys.argv[3]
r = dns.resolver.Resolver(configure=False)
r.nameservers = ["127.0.0.1"]
r.port = port
if cache:
    r.cache = dns.resolver.LRUCache({CACHE_SIZE})
dns.resolver.default_resolver = r
sys.argv = ["policyd-spf", config]
from spf_engine.policyd_spf import main
sys.exit(main())
"""


def _venv_python() -> Path:
    return POLICYD_VENV / "bin" / "python"


def _venv_works() -> bool:
    """Whether the policyd venv exists and imports what the wrapper needs."""
    if not _venv_python().exists():
        return False
    probe = subprocess.run(
        [str(_venv_python()), "-c", "import spf, dns.resolver, spf_engine.policyd_spf"],
        capture_output=True,
        check=False,
    )
    return probe.returncode == 0


def _pip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(_venv_python()), "-m", "pip", "install", "-q", "--disable-pip-version-check", *args],
        capture_output=True,
        text=True,
        check=False,
    )


def ensure_policyd_venv() -> Path:
    """Create the policyd-spf venv on first use (reused while it works); returns its python.

    A separate venv so spf-engine and its pins never touch the project's.
    """
    POLICYD_VENV.parent.mkdir(parents=True, exist_ok=True)
    # Lock the .cache directory itself: two harnesses starting at once must not both build the venv.
    fd = os.open(POLICYD_VENV.parent, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        if _venv_works():
            return _venv_python()
        python3 = shutil.which("python3") or sys.executable
        subprocess.run([python3, "-m", "venv", "--clear", str(POLICYD_VENV)], check=True)
        done = _pip(*POLICYD_PACKAGES)
        if done.returncode != 0:
            # The pinned spf-engine may be gone from the index: take the newest and say so.
            done = _pip("spf-engine", *POLICYD_PACKAGES[1:])
            if done.returncode != 0:
                raise RuntimeError(f"pip install into {POLICYD_VENV} failed:\n{done.stderr}")
            version = subprocess.run(
                [str(_venv_python()), "-c", "import importlib.metadata as m; print(m.version('spf-engine'))"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
            print(f"spf-engine 3.1.0 unavailable; using spf-engine {version}", file=sys.stderr)
        if not _venv_works():
            raise RuntimeError(f"{POLICYD_VENV}: spf_engine does not import after installing")
        return _venv_python()
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _policyd_config() -> Path:
    """The packaged default policyd-spf.conf, which pip puts under the venv's prefix.

    main() defaults to /etc/python-policyd-spf/policyd-spf.conf and, when that file is
    missing, silently runs on code defaults; naming the packaged file makes the run not
    depend on what /etc holds.
    """
    config = POLICYD_VENV / "etc" / "python-policyd-spf" / "policyd-spf.conf"
    if not config.is_file():
        raise RuntimeError(f"packaged policyd-spf.conf not found at {config}")
    return config


class _Policyd:
    """One policyd-spf process, asked one Postfix policy request at a time."""

    _instances = itertools.count()

    def __init__(self, python: Path, port: int, cache: bool, stderr: IO[bytes]) -> None:
        """Start the process and wait for its first answer; *stderr* is a file (nobody reads a pipe meanwhile)."""
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
        self.stderr = stderr
        self.proc = subprocess.Popen(
            [str(python), "-c", _WRAPPER, str(port), "1" if cache else "0", str(_policyd_config())],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            env=env,
        )
        try:
            # 127.0.0.1 is in the default skip_addresses: an answer without DNS, so start-up is not timed.
            self.ask("127.0.0.1", "localhost.invalid")
        except Exception:
            self.close()
            raise

    def ask(self, client: str, domain: str) -> str:
        """Send one request and return the answer's lines (without the blank line ending it)."""
        stdin, stdout = self.proc.stdin, self.proc.stdout
        assert stdin is not None and stdout is not None
        # A unique instance per request: policyd caches its verdict per instance (one message, many recipients).
        request = (
            "request=smtpd_access_policy\nprotocol_state=RCPT\nprotocol_name=ESMTP\n"
            f"client_address={client}\nclient_name=mx.{domain}\nhelo_name=mx.{domain}\n"
            f"sender=user@{domain}\nrecipient=rcpt@example.net\n"
            f"instance=bench.{os.getpid()}.{next(self._instances)}\nqueue_id=\n\n"
        )
        try:
            stdin.write(request.encode())
            stdin.flush()
            lines = []
            while (line := stdout.readline()) not in (b"\n", b""):
                lines.append(line)
        except BrokenPipeError:
            line = b""
        if line == b"":
            raise RuntimeError(f"policyd-spf exited ({self.proc.poll()}) while asked about {domain}:\n{self._stderr()}")
        return b"".join(lines).decode()

    def check(self, client: str, domain: str) -> None:
        answer = self.ask(client, domain)
        if "Received-SPF: Pass" not in answer:
            raise RuntimeError(f"policyd-spf {domain}: {answer.strip()}")

    def _stderr(self) -> str:
        self.stderr.seek(0)
        return self.stderr.read().decode(errors="replace")[-4000:]

    def close(self) -> None:
        """End of input ends main()'s read loop; kill only if it hangs."""
        try:
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        except BrokenPipeError:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def policyd_rates(
    port: int, cold_domains: list[str], warm_domains: list[str], client: str = "192.0.2.10"
) -> tuple[float, float]:
    """spf-engine's policyd-spf, one process, driven lock-step over stdin/stdout with Postfix policy requests.

    Its DNS is knot on 127.0.0.1:port (dnspython's default resolver, set by a
    wrapper that then calls ``spf_engine.policyd_spf.main()`` with the packaged
    default config).  Cold: a fresh process without a cache, each domain once.
    Warm: a fresh process with an LRUCache, one untimed pass over *warm_domains*,
    then a timed pass.  Process start-up is not timed.  Returns (cold, warm)
    requests/s; raises RuntimeError unless every answer has 'Received-SPF: Pass'.
    """
    python = ensure_policyd_venv()
    rates = []
    for domains, cache in ((cold_domains, False), (warm_domains, True)):
        with tempfile.TemporaryFile(prefix="peers-policyd-") as stderr:
            policyd = _Policyd(python, port, cache, stderr)
            try:
                if cache:
                    for d in domains:
                        policyd.check(client, d)
                t0 = time.perf_counter()
                for d in domains:
                    policyd.check(client, d)
                rates.append(len(domains) / (time.perf_counter() - t0))
            finally:
                policyd.close()
    return rates[0], rates[1]


def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _knot import knot
    from spf_driver import ORIGIN, zone

    def names(lo: int, hi: int) -> list[str]:
        return [f"d{i:05d}.{ORIGIN}" for i in range(lo, hi)]

    ensure_policyd_venv()  # before knot starts: a first install takes a while
    with knot({ORIGIN: zone(3000)}) as (_, port, _):
        # Each peer gets its own cold domains, as in peer-perf.md (no domain repeated per process).
        pcold, pwarm = pyspf_rates(port, names(0, 600), names(2900, 3000))
        dcold, dwarm = policyd_rates(port, names(600, 1200), names(2900, 3000))
    print("600 cold / 100 warm domains, checks/s")
    print(f"{'pyspf check2':14} cold {pcold:8.0f}   warm {pwarm:8.0f}")
    print(f"{'policyd-spf':14} cold {dcold:8.0f}   warm {dwarm:8.0f}")


if __name__ == "__main__":
    main()
