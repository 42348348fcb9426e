"""HTTP layer side by side: our worker vs aiohttp vs a bare asyncio handler, with wrk.

    .venv/bin/python bench/http_server.py [SECONDS] [CONNECTIONS]

Each server runs in its own process on uvloop and answers POST /checkv2 with
msgpack over keep-alive, as the shim calls it (wrk, one thread):

- regcheck worker, warm QR1 check: the real `serve`, registry from a zone
  file (every answer local), the seed's heaven.net example;
- regcheck HTTP, fixed result: our protocol and reply encoding, the check
  replaced by a stored result (what the HTTP layer costs);
- aiohttp: a handler that decodes nothing and returns a msgpack reply of the
  same size (aiohttp is installed only for this comparison);
- bare: an asyncio.Protocol that only finds the end of the request and
  writes the same reply (no parsing at all: the ceiling).
"""

from __future__ import annotations

import importlib.util
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEADERS = {"IP": "208.20.133.17", "Helo": "mailout17.heaven.net", "Accept": "application/msgpack"}


def reply_bytes() -> bytes:
    """The msgpack reply of the warm check, computed once (the fakes send the same bytes)."""
    import asyncio
    import ipaddress

    import msgpack

    from rspamd_regcheck import Checker, Envelope, build_reply
    from rspamd_regcheck.config import load_config

    config = load_config(str(ROOT / "demo" / "regcheck.toml"))

    async def go() -> bytes:
        checker = Checker(config)
        try:
            result = await checker.check(Envelope(ipaddress.ip_address(HEADERS["IP"]), HEADERS["Helo"]))
            return bytes(msgpack.packb(build_reply(result.verdict, config, result.queries)))
        finally:
            checker.close()

    return asyncio.run(go())


AIOHTTP = """
import sys, uvloop
from aiohttp import web
body = open(sys.argv[2], "rb").read()
async def h(request):
    await request.read()
    return web.Response(body=body, content_type="application/msgpack")
app = web.Application(); app.router.add_post("/checkv2", h)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None, loop=uvloop.new_event_loop())
"""

BARE = """
import asyncio, sys, uvloop
body = open(sys.argv[2], "rb").read()
head = b"HTTP/1.1 200 OK\\r\\nContent-Type: application/msgpack\\r\\nConnection: keep-alive\\r\\nContent-Length: %d\\r\\n\\r\\n" % len(body)
class P(asyncio.Protocol):
    def connection_made(self, t): self.t = t; self.buf = b""
    def data_received(self, d):
        self.buf += d
        while b"\\r\\n\\r\\n" in self.buf:
            _, _, self.buf = self.buf.partition(b"\\r\\n\\r\\n")
            self.t.write(head + body)
async def main():
    s = await asyncio.get_running_loop().create_server(P, "127.0.0.1", int(sys.argv[1]))
    await s.serve_forever()
uvloop.run(main())
"""

# Our HTTP layer with the check replaced by a fixed result: what the protocol itself costs.
OURS_STUB = """
import asyncio, ipaddress, sys, uvloop
from rspamd_regcheck import Checker, Envelope
from rspamd_regcheck._http import App, start_server
from rspamd_regcheck.config import load_config
config = load_config(sys.argv[2])
class Stub:  # the real checker in every respect but the check itself
    def __init__(self, real, result):
        self.real, self.result = real, result
    def __getattr__(self, name): return getattr(self.real, name)
    async def check(self, env): return self.result
async def main():
    real = Checker(config)
    result = await real.check(Envelope(ipaddress.ip_address("208.20.133.17"), "mailout17.heaven.net"))
    server = await start_server(App(Stub(real, result)), "127.0.0.1", int(sys.argv[1]))
    await server.serve_forever()
uvloop.run(main())
"""

WRK_LUA = """
wrk.method = "POST"
wrk.headers["IP"] = "{IP}"
wrk.headers["Helo"] = "{Helo}"
wrk.headers["Accept"] = "{Accept}"
"""


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes]) -> None:
    import socket

    for _ in range(200):
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode} before listening on {port}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def wrk(port: int, seconds: int, connections: int, script: str) -> tuple[float, str]:
    out = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{seconds}s",
            "--latency",
            "-s",
            script,
            f"http://127.0.0.1:{port}/checkv2",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    errors = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    if errors is not None:  # a server that fails fast is not a fast server
        raise RuntimeError(f"{errors.group(1)} error replies in wrk's run:\n{out}")
    found = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if found is None:
        raise RuntimeError(f"no rate in wrk's output:\n{out}")
    rps = float(found.group(1))
    p50 = re.search(r"^\s+50%\s+(\S+)", out, re.MULTILINE)
    return rps, p50.group(1) if p50 else "?"


def main() -> None:
    seconds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    connections = int(sys.argv[2]) if len(sys.argv) > 2 else 50
    work = Path(tempfile.mkdtemp(prefix="regcheck-http-"))
    (work / "reply.bin").write_bytes(reply_bytes())
    (work / "aio.py").write_text(AIOHTTP)
    (work / "bare.py").write_text(BARE)
    (work / "stub.py").write_text(OURS_STUB)
    (work / "post.lua").write_text(WRK_LUA.format(**HEADERS))
    py = sys.executable
    servers = {
        "regcheck worker (warm QR1)": lambda p: [
            py,
            "-m",
            "rspamd_regcheck",
            "--config",
            str(ROOT / "demo" / "regcheck.toml"),
            "serve",
            "--listen",
            f"127.0.0.1:{p}",
        ],
        "regcheck HTTP, fixed result": lambda p: [
            py,
            str(work / "stub.py"),
            str(p),
            str(ROOT / "demo" / "regcheck.toml"),
        ],
        "aiohttp, same reply": lambda p: [py, str(work / "aio.py"), str(p), str(work / "reply.bin")],
        "bare asyncio, same reply": lambda p: [py, str(work / "bare.py"), str(p), str(work / "reply.bin")],
    }
    if importlib.util.find_spec("aiohttp") is None:
        del servers["aiohttp, same reply"]
        print("aiohttp not installed (pip install aiohttp): skipped")
    print(f"wrk -t1 -c{connections} -d{seconds}s, msgpack POST /checkv2, keep-alive, uvloop")
    for label, cmd in servers.items():
        port = free_port()
        proc = subprocess.Popen(
            cmd(port), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(os.environ, PYTHONPATH=str(ROOT))
        )
        try:
            wait_port(port, proc)
            wrk(port, 1, connections, str(work / "post.lua"))  # warm-up
            rps, p50 = wrk(port, seconds, connections, str(work / "post.lua"))
            print(f"{label:28} {rps:9.0f} req/s   p50 {p50}")
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=10)


if __name__ == "__main__":
    main()
