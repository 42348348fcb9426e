"""Real processes for the rspamd tests: the worker, and rspamd 3.4 loading the shim."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
HS_CACHE = ROOT / ".cache" / "rspamd-hs"  # kept between runs: a cold rspamd start compiles for ~10 s


def wait_http(port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode}: {log.read_text(errors='replace')[-3000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                s.sendall(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
                if s.recv(64).split(b"\r\n", 1)[0].endswith(b" 200 OK"):
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"no answer on port {port} after {timeout} s: {log.read_text(errors='replace')[-3000:]}")


class Proc:
    """A process with its log file; stop() sends SIGTERM and waits."""

    def __init__(self, argv: list[str], log: Path):
        self.log_path = log
        self.log = open(log, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def start_worker(base: Path, name: str, config: str, port: int) -> Proc:
    conf = base / f"{name}.toml"
    conf.write_text(config)
    worker = Proc(
        [sys.executable, "-m", "rspamd_regcheck", "--config", str(conf), "serve", "--listen", f"127.0.0.1:{port}"],
        base / f"{name}.log",
    )
    wait_http(port, worker.proc, worker.log_path, 30)
    return worker


EXTRA_LUA = """
-- another rule, to show a failing regcheck keeps every other result
rspamd_config:register_symbol({ name = 'TEST_OTHER', score = 0.1, group = 'test',
  callback = function(task) return true, 'still here' end })
"""


def start_rspamd(base: Path, name: str, regcheck_block: str, knot_port: int, extra: str = "") -> tuple[Proc, int]:
    """rspamd -f with a minimal config (rspamd-3.4-notes.md option B): our plugin, rules and one more rule."""
    rspamd = shutil.which("rspamd")
    if rspamd is None:
        pytest.fail("rspamd not found: ./dev test installs Debian's rspamd package")
    HS_CACHE.mkdir(parents=True, exist_ok=True)
    d = base / name
    d.mkdir()
    (d / "extra.lua").write_text(EXTRA_LUA)
    port = free_port()
    (d / "rspamd.conf").write_text(
        f"""
options {{
  pidfile = "{d}/rspamd.pid";
  hs_cache_dir = "{HS_CACHE}";
  filters = "";
  dns {{ nameserver = ["127.0.0.1:{knot_port}"]; timeout = 1s; retransmits = 1; }}
  {extra}
}}
logging {{ type = "file"; filename = "{d}/rspamd.log"; level = "info"; }}
worker "normal" {{ bind_socket = "127.0.0.1:{port}"; count = 1; task_timeout = 8s; }}
actions {{ reject = 15; "add header" = 6; greylist = 4; }}
modules {{ path = "{ROOT}/lua_shim/regcheck.lua"; }}
lua = "{d}/extra.lua";
.include "{ROOT}/rules/regcheck_group.conf"
{regcheck_block}
"""
    )
    proc = Proc([rspamd, "-f", "-i", "-c", str(d / "rspamd.conf")], d / "stdout.log")
    wait_http(port, proc.proc, d / "rspamd.log", 120)
    return proc, port


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rspamc(port: int, eml: Path, *args: str) -> tuple[dict, float]:
    """Scan through rspamd with rspamc; the JSON result and the wall time."""
    started = time.monotonic()
    proc = subprocess.run(
        [shutil.which("rspamc") or "rspamc", "-h", f"127.0.0.1:{port}", "-j", *args, str(eml)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    elapsed = time.monotonic() - started
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(proc.stdout), elapsed
