"""How close can a cold check get to the DNS client's own rate?  The floor under the cold target.

    .venv/bin/python bench/cold_floor.py [SECONDS]

Against one knot serving the benchmark's registry, side by side:

- the raw rate of our DNS client and of aiodns (c-ares), as `run.py` measures them;
- the worker's cold QR1 check over HTTP (wrk, 50 connections, a new ID and
  client address each time), in a process of its own;
- the same worker with the check cut down to its floor: the HTTP request read,
  the registry and DNSBL questions asked through the same DNS layer, a reply
  written, and nothing decided (with the check log on, as by default, and off).

Each server runs in a child process (the cut-down check is patched in there
only) on uvloop with the worker's garbage-collector tuning; its CPU time per
check is read from /proc.  The floor shows what no decision logic, however
fast, could beat: the cold target's ratio is bounded by the floor's ratio.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import run as bench  # noqa: E402
from _knot import knot  # noqa: E402

FIRST, COUNT = 100, 49_000  # IDs 2 * (FIRST .. FIRST + COUNT): the even ones, with netblocks (QR1)
MODES = {
    "check": "the worker's cold QR1 check",
    "floor": "floor: the two questions and a reply, nothing decided",
    "floor-nolog": "floor, check log off",
}


def child(mode: str, kport: int, port: int) -> None:
    """Serve checks on *port* the way `serve` does, cut down to the floor unless *mode* is 'check'."""
    import uvloop

    from rspamd_regcheck._check import Checker
    from rspamd_regcheck._evaluate import Facts
    from rspamd_regcheck._http import App, start_server
    from rspamd_regcheck._log import setup_logging
    from rspamd_regcheck._names import reverse_name
    from rspamd_regcheck._serve import tune_gc
    from rspamd_regcheck._wire import RType
    from rspamd_regcheck.config import config_from_mapping

    setup_logging("warning" if mode == "floor-nolog" else "info", "text")
    config = config_from_mapping(
        {
            "registry": {"zones": [bench.REGISTRY]},
            "dns": {"nameservers": ["127.0.0.1"], "port": kport},
            "policy": {"local_networks": []},
            "prescreen": {"zones": [{"zone": bench.DNSBL}]},
        }
    )
    if mode != "check":

        async def facts(self, env, session):  # type: ignore[no-untyped-def]
            ident = env.helo.split(".", 1)[1]  # mx.idN.test -> idN.test
            registry = session.begin(f"{ident}.{bench.REGISTRY}", RType.TXT)
            dnsbl = session.begin(reverse_name(env.ip, bench.DNSBL), RType.A)
            await session.end(registry)
            await session.end(dnsbl)
            return Facts(ip=env.ip, skipped="floor")

        Checker._facts = facts  # type: ignore[method-assign]

    async def serve() -> None:
        app = App(Checker(config))
        server = await start_server(app, "127.0.0.1", port)
        tune_gc()
        async with server:
            await server.serve_forever()

    uvloop.run(serve())


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(mode: str, kport: int, work: Path, first: int, seconds: float) -> tuple[float, float]:
    """(checks/s, CPU us per check) of one server mode."""
    port = bench.free_port()
    log = open(work / f"{mode}.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, __file__, "--child", mode, str(kport), str(port)], stdout=log, stderr=subprocess.STDOUT
    )
    try:
        bench.wait_port(port, proc, 30)
        before, started = cpu_seconds(proc.pid), time.monotonic()
        rate, _ = bench.wrk(port, work, "qr1", first, COUNT, seconds, 50)
        used, elapsed = cpu_seconds(proc.pid) - before, time.monotonic() - started
        return rate, 1e6 * used / (rate * elapsed)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
        log.close()


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
        return 0
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 4.0
    sizes = bench.SIZES["default"]
    work = Path(tempfile.mkdtemp(prefix="regcheck-floor-"))
    with knot(bench.zones(sizes)) as (_, kport, _):
        _, cares, label = bench.dns_ceiling(kport, 20_000)
        ours = float(label.rsplit("ours ", 1)[1].split()[0])
        print(f"DNS clients: {label}")
        print("| server | checks/s | CPU per check | / (ours / 2) | / (c-ares / 2) |\n|---|---|---|---|---|")
        for mode, what in MODES.items():
            # each server is a new process with empty caches: the same IDs are cold for each
            rate, cpu = measure(mode, kport, work, FIRST, seconds)
            if rate * seconds > COUNT:
                print(f"({what}: more checks than distinct IDs; shorten the run)")
            c_ratio = f"{rate / (cares / 2):.2f}" if cares else "-"
            print(f"| {what} | {rate:.0f} | {cpu:.0f} us | {rate / (ours / 2):.2f} | {c_ratio} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
