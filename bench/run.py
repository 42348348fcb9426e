"""The benchmark: rspamd-regcheck's targets, each measured beside its ceiling in the same run.

    .venv/bin/python bench/run.py            # a few minutes on 2 cores; writes bench/RESULTS.md and the plot
    .venv/bin/python bench/run.py --long     # longer runs, steadier numbers
    .venv/bin/python bench/run.py --tiny     # seconds: what the test suite runs (no targets judged)
    .venv/bin/python bench/run.py --path     # only the critical path (3, 3b); updates its rows in RESULTS.md

Needs knot, wrk and rspamd (./dev setup installs them), aiodns for the DNS
ceiling and matplotlib for the plot (pip install -e '.[bench]').  Everything
runs on loopback: knot serves a generated registry (IDs with QR1, SPF and
CSA data, a DNSBL), the worker runs as `rspamd-regcheck serve`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import _load  # noqa: E402
from _knot import knot  # noqa: E402
from _proxy import DelayProxy  # noqa: E402
from spf_driver import zone as spf_zone  # noqa: E402

REGISTRY = "registry.bench"
DNSBL = "bl.bench"
DWL = "dwl.bench"  # a DNSWL-shaped domain list (rating services that answer for themselves)
IPWL = "wl.bench"  # a DNSWL-shaped IP list
SPF_ORIGIN = "spf.bench.test"
CLIENT_NET = 0xC6120000  # 198.18.0.0/15 (RFC 2544 benchmarking range): 131,072 addresses
RATINGS = "svc=S1:A,M2:A,H1:B"


@dataclass
class Sizes:
    ids: int
    spf_domains: int
    seconds: float
    connections: int
    rounds: int
    memory_checks: int  # distinct-ID checks after the cache is full (3x what it holds)
    cache_size: int
    path_checks: int
    peers_cold: int
    peers_warm: int


SIZES = {
    "tiny": Sizes(2_000, 600, 0.5, 8, 1, 1_500, 500, 5, 30, 20),
    "default": Sizes(100_000, 12_000, 4.0, 50, 1, 150_000, 50_000, 40, 600, 100),
    "long": Sizes(200_000, 30_000, 10.0, 50, 3, 150_000, 50_000, 100, 1500, 300),
}


def ip_of(i: int) -> str:
    n = CLIENT_NET + (i % 131072)
    return ".".join(str((n >> s) & 255) for s in (24, 16, 8, 0))


# -- data --------------------------------------------------------------------------------------


def zones(sizes: Sizes) -> dict[str, str]:
    """The registry, the IDs' own zone (SPF and CSA), a DNSBL, and the peers' SPF zone."""
    soa = "$TTL 3600\n@ IN SOA ns1 hostmaster 1 3600 600 86400 3600\n@ IN NS ns1\nns1 IN A 127.0.0.1\n"
    registry = [f"$ORIGIN {REGISTRY}.", soa]
    ids = ["$ORIGIN test.", soa]
    for i in range(sizes.ids):
        if i % 2 == 0:
            registry.append(f'id{i}.test IN TXT "v=reg1 {RATINGS} ip4=198.18.0.0/15 meth=CSV:4,SPF:30"')
        else:
            registry.append(f'id{i}.test IN TXT "v=reg1 {RATINGS} meth=SPF:30,CSV:4"')
        ids.append(f'id{i} IN TXT "v=spf1 ip4:198.18.0.0/15 -all"')
        ids.append(f"_client._smtp.mx.id{i} IN SRV 1 2 0 mx.id{i}.test.")
        ids.append(f"mx.id{i} IN A {ip_of(i)}")
    registry.append(f'bench.test IN TXT "v=reg1 {RATINGS} meth=SPF:30"')  # the peers' senders: dN.spf.bench.test
    bl = [f"$ORIGIN {DNSBL}.", soa]
    ipwl = [f"$ORIGIN {IPWL}.", soa]
    for i in range(0, 131072, 10):
        a, b, c, d = ip_of(i).split(".")
        bl.append(f"{d}.{c}.{b}.{a} IN A 127.0.0.2")
        ipwl.append(f"{d}.{c}.{b}.{a} IN A 127.0.9.3")
    dwl = [f"$ORIGIN {DWL}.", soa] + [f"id{i}.test IN A 127.0.15.3" for i in range(0, sizes.ids, 4)]
    return {
        REGISTRY: "\n".join(registry) + "\n",
        "test": "\n".join(ids) + "\n",
        DNSBL: "\n".join(bl) + "\n",
        DWL: "\n".join(dwl) + "\n",
        IPWL: "\n".join(ipwl) + "\n",
        SPF_ORIGIN: spf_zone(sizes.spf_domains),
    }


def check_request(ip: str, helo: str, mail_from: str | None = None) -> bytes:
    head = f"POST /checkv2 HTTP/1.1\r\nHost: x\r\nIP: {ip}\r\nHelo: {helo}\r\nAccept: application/msgpack\r\n"
    if mail_from is not None:
        head += f"From: {mail_from}\r\n"
    return (head + "Content-Length: 0\r\n\r\n").encode()


WRK_SCRIPT = """
local counter = 0
local first, count, mode = {first}, {count}, "{mode}"
local net = 0xC6120000
local function ip(i)
  local n = net + (i % 131072)
  return string.format("%d.%d.%d.%d", math.floor(n / 16777216) % 256, math.floor(n / 65536) % 256,
                       math.floor(n / 256) % 256, n % 256)
end
request = function()
  local i = first + (counter % count)
  counter = counter + 1
  local h = {{ ["Accept"] = "application/msgpack", ["Content-Length"] = "0" }}
  if mode == "qr1" then
    i = i * 2
    h["IP"] = ip(i); h["Helo"] = "mx.id" .. i .. ".test"
  elseif mode == "spf" then
    i = i * 2 + 1
    h["IP"] = ip(i); h["Helo"] = "mx.id" .. i .. ".test"; h["From"] = "user@id" .. i .. ".test"
  elseif mode == "peer" then
    local d = string.format("d%05d.{spf}", i)
    h["IP"] = "192.0.2.10"; h["Helo"] = "mx." .. d; h["From"] = "user@" .. d
  elseif mode == "rspamd" then
    i = i * 2
    h["IP"] = ip(i); h["Helo"] = "mx.id" .. i .. ".test"; h["Content-Length"] = nil
    return wrk.format("POST", "/checkv2", h, "From: a@b.test\\r\\nSubject: x\\r\\n\\r\\nhello\\r\\n")
  end
  return wrk.format("POST", "/checkv2", h, "")
end
"""


# -- processes ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                s.sendall(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
                if b" 200 " in s.recv(64):
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"nothing answered on {port}")


class Worker:
    """`rspamd-regcheck serve` (one worker process) against the benchmark's knot."""

    def __init__(
        self,
        work: Path,
        name: str,
        dns_port: int,
        cache_size: int | None = None,
        prescreen: bool = True,
        services: bool = False,
        dns_extra: str = "",
    ):
        self.port = free_port()
        conf = work / f"{name}.toml"
        lines = [
            f'[registry]\nzones = ["{REGISTRY}"]',
            f'[dns]\nnameservers = ["127.0.0.1"]\nport = {dns_port}',
            "[policy]\nlocal_networks = []",
            '[log]\nlevel = "info"',
        ]
        if cache_size is not None:
            lines[1] += f"\ncache_size = {cache_size}"
        if dns_extra:
            lines[1] += f"\n{dns_extra}"
        if prescreen:
            lines.append(f'[[prescreen.zones]]\nzone = "{DNSBL}"')
        if services:
            lines.append(SERVICES)
        conf.write_text("\n".join(lines) + "\n")
        self.log = open(work / f"{name}.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "rspamd_regcheck", "--config", str(conf), "serve", "--listen", f"127.0.0.1:{self.port}"],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        wait_port(self.port, self.proc, 30)

    def worker_pid(self) -> int:
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    stat = Path(f"/proc/{entry}/stat").read_text()
                except OSError:
                    continue
                if int(stat.rsplit(")", 1)[1].split()[1]) == self.proc.pid:
                    return int(entry)
        raise RuntimeError("no worker process")

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.worker_pid()}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(30)
        self.log.close()


# Two live services beside the seed's three (read from the records): an ID list and an IP list.
SERVICES = "\n".join(
    [f'[services.{code}]\nratings = {{ A = 9, B = 7, C = 5, D = 0 }}' for code in ("S1", "M2", "H1")]
    + [
        f'[services.{code}]\nzone = "{zone}"\nask = "{ask}"\nratings = {{ A = 9, B = 7, C = 5 }}\n'
        'codes = { "127.0.*.3" = "A", "127.0.*.2" = "B", "127.0.*.0-127.0.*.1" = "C" }'
        for code, zone, ask in (("DWL", DWL, "id"), ("IPWL", IPWL, "ip"))
    ]
)


BARE = """
import asyncio, sys, msgpack, uvloop
size = int(sys.argv[2])
class P(asyncio.Protocol):
    def connection_made(self, t):
        self.t, self.buf = t, b""
    def data_received(self, d):
        self.buf += d
        while b"\\r\\n\\r\\n" in self.buf:
            head, _, self.buf = self.buf.partition(b"\\r\\n\\r\\n")
            headers = dict(line.split(b": ", 1) for line in head.split(b"\\r\\n")[1:])  # decode the request
            body = msgpack.packb({"ip": headers.get(b"IP", b"").decode(), "pad": "x" * size})  # same size reply
            self.t.write(b"HTTP/1.1 200 OK\\r\\nContent-Type: application/msgpack\\r\\nConnection: keep-alive\\r\\n"
                         b"Content-Length: %d\\r\\n\\r\\n" % len(body) + body)
async def main():
    s = await asyncio.get_running_loop().create_server(P, "127.0.0.1", int(sys.argv[1]))
    await s.serve_forever()
uvloop.run(main())
"""


def wrk(port: int, work: Path, mode: str, first: int, count: int, seconds: float, connections: int,
        path: str = "/checkv2") -> tuple[float, float]:
    """wrk against port; (requests/s, p50 ms).  Fails on any non-2xx answer."""
    script = work / f"wrk-{mode}-{first}.lua"
    script.write_text(WRK_SCRIPT.format(first=first, count=count, mode=mode, spf=SPF_ORIGIN))
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency", "-s", str(script),
         f"http://127.0.0.1:{port}{path}"],
        capture_output=True, text=True, check=True,
    ).stdout
    if "Non-2xx" in out:
        raise RuntimeError(f"wrk saw errors:\n{out}")
    found = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if found is None:
        raise RuntimeError(f"no rate in wrk's output:\n{out}")
    rps = float(found.group(1))
    p50 = re.search(r"^\s+50%\s+([\d.]+)(us|ms|s)", out, re.MULTILINE)
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    return rps, float(p50.group(1)) * scale[p50.group(2)] if p50 else float("nan")


# -- results ----------------------------------------------------------------------------------


@dataclass
class Result:
    name: str
    value: str
    ceiling: str = ""
    ratio: float | None = None
    target: str = ""
    passed: bool | None = None
    notes: list[str] = field(default_factory=list)


def judge(name: str, value: str, ceiling: str, ratio: float, target: float, higher: bool = True) -> Result:
    ok = ratio >= target if higher else ratio <= target
    sign = ">=" if higher else "<="
    return Result(name, value, ceiling, ratio, f"{sign} {target:g}", ok)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


# -- the measurements --------------------------------------------------------------------------


def dns_ceiling(port: int, n: int) -> tuple[float, float, str]:
    """Raw TXT queries/s of our client and of aiodns (c-ares), on uvloop, 100 in flight."""
    import uvloop

    from rspamd_regcheck import Transport
    from rspamd_regcheck._wire import RType

    names = [f"id{i}.test.{REGISTRY}" for i in range(0, 2000)]

    async def ours() -> float:
        t = Transport([("127.0.0.1", port)], timeout=2.0, recursion=False)
        sem = asyncio.Semaphore(100)

        async def one(i: int) -> None:
            async with sem:
                await t.ask(names[i % len(names)], RType.TXT)

        await asyncio.gather(*(one(i) for i in range(200)))
        t0 = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(n)))
        rate = n / (time.perf_counter() - t0)
        t.close()
        return rate

    async def cares() -> float:
        import aiodns

        r = aiodns.DNSResolver(nameservers=["127.0.0.1"], udp_port=port, tcp_port=port, timeout=2, tries=1)
        sem = asyncio.Semaphore(100)

        async def one(i: int) -> None:
            async with sem:
                # a name asked once only: c-ares answers repeated ones from its own cache
                try:
                    await r.query_dns(f"id{i}.test.{REGISTRY}", "TXT")
                except aiodns.error.DNSError:
                    pass  # NXDOMAIN past the generated IDs: answered all the same

        await asyncio.gather(*(one(i) for i in range(n, n + 200)))
        t0 = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(n)))
        return n / (time.perf_counter() - t0)

    our_rate = uvloop.run(ours())
    try:
        cares_rate = uvloop.run(cares())
        label = "aiodns (c-ares)"
    except ImportError:
        cares_rate, label = 0.0, "aiodns not installed"
    best = max(our_rate, cares_rate)
    return best, cares_rate, f"{label} {cares_rate:.0f} q/s, ours {our_rate:.0f} q/s"


def run(size: str, out_dir: Path) -> list[Result]:
    sizes = SIZES[size]
    work = Path(tempfile.mkdtemp(prefix="regcheck-bench-"))
    results: list[Result] = []
    series: dict[str, list[float]] = {}
    print(f"generating zones ({sizes.ids} IDs) ...", flush=True)
    with knot(zones(sizes)) as (_, kport, _):
        print(f"knot on {kport}", flush=True)

        # 1. warm: the worker with every answer cached, beside a bare handler
        worker = Worker(work, "worker", kport)
        try:
            wrk(worker.port, work, "qr1", 0, 100, 1, sizes.connections)  # fill the caches
            wrk(worker.port, work, "spf", 0, 100, 1, sizes.connections)
            bare_port = free_port()
            sample = subprocess.run(  # the size of a real reply
                ["curl", "-s", "-X", "POST", "-H", f"IP: {ip_of(0)}", "-H", "Helo: mx.id0.test", "-H",
                 "Accept: application/msgpack", f"http://127.0.0.1:{worker.port}/checkv2"],
                capture_output=True, check=True,
            ).stdout
            (work / "bare.py").write_text(BARE)
            bare = subprocess.Popen([sys.executable, str(work / "bare.py"), str(bare_port), str(max(0, len(sample) - 30))],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            wait_port(bare_port, bare, 30)
            qr1, spf_w, ceil = [], [], []
            for _ in range(sizes.rounds):
                ceil.append(wrk(bare_port, work, "qr1", 0, 100, sizes.seconds, sizes.connections)[0])
                qr1.append(wrk(worker.port, work, "qr1", 0, 100, sizes.seconds, sizes.connections)[0])
                spf_w.append(wrk(worker.port, work, "spf", 0, 100, sizes.seconds, sizes.connections)[0])
            bare.send_signal(signal.SIGTERM)
            bare.wait(10)
            c = median(ceil)
            results.append(judge("1. warm QR1 check (1 worker, keep-alive, msgpack)", f"{median(qr1):.0f}/s",
                                 f"bare handler {c:.0f}/s", median(qr1) / c, 0.20))
            results.append(judge("1. warm SPF check", f"{median(spf_w):.0f}/s", f"bare handler {c:.0f}/s",
                                 median(spf_w) / c, 0.10))
            series["warm QR1 latency (ms)"] = [
                x * 1000 for x in asyncio.run(_load.sequential(
                    "127.0.0.1", worker.port, lambda i: check_request(ip_of((i % 100) * 2), f"mx.id{(i % 100) * 2}.test"),
                    500 if size != "tiny" else 50))
            ]

            # 2. cold: a new ID and a new client address every check (2 questions: registry, DNSBL)
            best, cares, label = dns_ceiling(kport, 20_000 if size != "tiny" else 2_000)
            cold_first = 100  # the warm runs used indexes 0-99
            cold_count = int(min(sizes.ids // 2 - cold_first, 60_000))
            cold_rate, cold_p50 = wrk(worker.port, work, "qr1", cold_first, cold_count, sizes.seconds, sizes.connections)
            asked = cold_rate * sizes.seconds
            if asked > cold_count:
                results.append(Result("2. cold QR1", "run too long for the IDs", notes=["raise ids"]))
            ceiling = best / 2
            results.append(judge("2. cold QR1 check (new ID and address each time)", f"{cold_rate:.0f}/s",
                                 f"fastest DNS client / 2 questions = {ceiling:.0f}/s ({label})",
                                 cold_rate / ceiling, 0.50))
            results[-1].notes.append("the floor of a check that decides nothing is below this target: "
                                     "bench/cold_floor.py")
            if cares:
                # The issue names the ceiling's class, c-ares; our own client is faster (bench/README.md).
                results.append(judge("2. cold QR1 check beside c-ares (the client class the target names)",
                                     f"{cold_rate:.0f}/s", f"aiodns (c-ares) / 2 questions = {cares / 2:.0f}/s",
                                     cold_rate / (cares / 2), 0.50))
            next_free = cold_first + cold_count

            # 7. /ping while a cold run holds the worker at 70 % of its cold capacity
            rate = 0.7 * cold_rate
            first = next_free

            async def loaded() -> tuple[list[float], tuple[int, int]]:
                load = asyncio.ensure_future(_load.paced(
                    "127.0.0.1", worker.port, lambda i: check_request(ip_of(first + i), f"mx.id{(first + i) * 2}.test"),
                    rate, sizes.seconds))
                ping = await _load.pings("127.0.0.1", worker.port, sizes.seconds)
                return ping, await load

            ping, (answered, late) = asyncio.run(loaded())
            next_free += int(rate * sizes.seconds) + 10
            p99 = _load.percentile(ping, 99) * 1000
            series["/ping latency at 70% cold load (ms)"] = [x * 1000 for x in ping]
            r = Result("7. /ping p99 at 70% of cold capacity", f"{p99:.2f} ms", f"{answered} checks at {rate:.0f}/s",
                       p99, "<= 10 ms", p99 <= 10.0)
            if late:
                r.notes.append(f"{late} requests found no free connection in time")
            results.append(r)
        finally:
            worker.stop()

        # 3. critical path: answers 20 ms late, cold QR1 checks one at a time; 3b. with two live services
        results += critical_path(work, kport, next_free, sizes, series)
        next_free += 2 * sizes.path_checks

        # 5. peers: SPF cold and warm beside pyspf and policyd-spf, same zone and senders
        results += peers(work, kport, sizes)

        # 4. in rspamd: scans with the plugin and a warm worker vs without
        results += in_rspamd(work, kport, sizes)

        # 6. memory: after filling the default cache, and after 3x as many distinct-ID checks
        results.append(memory(work, kport, sizes))
    plot(series, out_dir / "latency.png")
    shutil.rmtree(work, ignore_errors=True)
    return results


DELAY = 0.020  # seconds the proxy holds each DNS answer: one round trip


def critical_path(work: Path, kport: int, first: int, sizes: Sizes, series: dict[str, list[float]]) -> list[Result]:
    """Cold QR1 checks one at a time, every DNS answer 20 ms late: without and with two live services.

    With services the check asks five questions (registry, DNSBL, an ID list, an IP list); they
    fly together, so the check should still take one round trip and a little.
    """
    out = []
    runs = (("3. critical path: p50 cold QR1 check, answers 20 ms late", False, "cold QR1 latency"),
            ("3b. critical path with two live rating services (ID list and IP list)", True,
             "cold QR1 latency, two live services"))
    for n, (name, services, label) in enumerate(runs):
        start = first + n * sizes.path_checks
        with DelayProxy(("127.0.0.1", kport), DELAY) as proxy:
            slow = Worker(work, "delayed-services" if services else "delayed", proxy.port, services=services)
            try:
                lat = asyncio.run(_load.sequential(
                    "127.0.0.1", slow.port,
                    lambda i, s=start: check_request(ip_of(s + i), f"mx.id{(s + i) * 2}.test"),
                    sizes.path_checks))
            finally:
                slow.stop()
        p50 = _load.percentile(lat, 50)
        series[f"{label}, DNS answers 20 ms late (ms)"] = [x * 1000 for x in lat]
        rts = p50 / DELAY
        out.append(judge(name, f"{p50 * 1000:.1f} ms", "1 round trip = 20 ms", rts, 1.5, higher=False))
        out[-1].value += f" = {rts:.2f} round trips"
    return out


def path_only(out_dir: Path) -> list[Result]:
    """`--path`: only the critical path, and its rows of RESULTS.md replaced in place."""
    sizes = SIZES["default"]
    work = Path(tempfile.mkdtemp(prefix="regcheck-bench-"))
    series: dict[str, list[float]] = {}
    with knot(zones(sizes)) as (_, kport, _):
        results = critical_path(work, kport, 100, sizes, series)
    shutil.rmtree(work, ignore_errors=True)
    path = out_dir / "RESULTS.md"
    lines = [ln for ln in path.read_text().splitlines() if not ln.startswith(("| 3. ", "| 3b. "))] if path.exists() else []
    at = next((i for i, ln in enumerate(lines) if ln.startswith("| 5. ")), len(lines))
    rows = report(results, "path", 0).splitlines()
    lines[at:at] = [r for r in rows if r.startswith(("| 3. ", "| 3b. "))]
    note = "- Rows 3 and 3b: `bench/run.py --path`"
    lines = [ln for ln in lines if not ln.startswith(note)]
    head = next((i for i, ln in enumerate(lines) if ln.startswith("- Every ratio")), 0)
    lines.insert(head, f"{note}, {time.strftime('%Y-%m-%d %H:%M %Z')}")
    path.write_text("\n".join(lines) + "\n")
    return results


def peers(work: Path, kport: int, sizes: Sizes) -> list[Result]:
    import peers as peer_mod

    worker = Worker(work, "spf-peer", kport, prescreen=False)
    try:
        n_cold = sizes.peers_cold
        warm = [f"d{i:05d}.{SPF_ORIGIN}" for i in range(100)]
        py_cold, py_warm = peer_mod.pyspf_rates(kport, [f"d{i:05d}.{SPF_ORIGIN}" for i in range(100, 100 + n_cold)], warm)
        pd_cold, pd_warm = peer_mod.policyd_rates(
            kport, [f"d{i:05d}.{SPF_ORIGIN}" for i in range(100 + n_cold, 100 + 2 * n_cold)], warm)
        first = 100 + 2 * n_cold
        count = sizes.spf_domains - first
        ours_cold = wrk(worker.port, work, "peer", first, count, min(sizes.seconds, 2.0), 8)[0]
        wrk(worker.port, work, "peer", 0, 100, 1, 8)
        ours_warm = wrk(worker.port, work, "peer", 0, 100, sizes.seconds, 8)[0]
    finally:
        worker.stop()
    note = f"pyspf check2 {py_cold:.0f}/{py_warm:.0f}/s cold/warm; policyd-spf {pd_cold:.0f}/{pd_warm:.0f}/s"
    return [
        judge("5. warm SPF vs policyd-spf (whole worker check over HTTP)", f"{ours_warm:.0f}/s",
              f"policyd-spf {pd_warm:.0f}/s", ours_warm / pd_warm, 3.0),
        judge("5. warm SPF vs pyspf check2 with its cache", f"{ours_warm:.0f}/s", f"pyspf {py_warm:.0f}/s",
              ours_warm / py_warm, 1.0),
        judge("5. cold SPF vs policyd-spf", f"{ours_cold:.0f}/s", f"policyd-spf {pd_cold:.0f}/s",
              ours_cold / pd_cold, 1.5),
        Result("5. peers (for the record)", note),
    ]


def in_rspamd(work: Path, kport: int, sizes: Sizes) -> list[Result]:
    rspamd = shutil.which("rspamd")
    if rspamd is None:
        return [Result("4. in rspamd", "rspamd not installed", passed=False)]
    worker = Worker(work, "for-rspamd", kport)
    procs = []
    try:
        hs = ROOT / ".cache" / "rspamd-hs"
        hs.mkdir(parents=True, exist_ok=True)
        rates = {}
        for mode in ("off", "on"):
            d = work / f"rspamd-{mode}"
            d.mkdir()
            port = free_port()
            plugin = (f'modules {{ path = "{ROOT}/lua_shim/regcheck.lua"; }}\n'
                      f'.include "{ROOT}/rules/regcheck_group.conf"\n'
                      f'regcheck {{ servers = "127.0.0.1:{worker.port}"; timeout = 4s; }}\n') if mode == "on" else ""
            (d / "rspamd.conf").write_text(
                f'options {{ pidfile = "{d}/rspamd.pid"; hs_cache_dir = "{hs}"; filters = ""; '
                f'dns {{ nameserver = ["127.0.0.1:{kport}"]; }} }}\n'
                f'logging {{ type = "file"; filename = "{d}/rspamd.log"; level = "warning"; }}\n'
                f'worker "normal" {{ bind_socket = "127.0.0.1:{port}"; count = 1; }}\n'
                'actions { reject = 15; "add header" = 6; greylist = 4; }\n' + plugin
            )
            proc = subprocess.Popen([rspamd, "-f", "-i", "-c", str(d / "rspamd.conf")],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            procs.append(proc)
            wait_port(port, proc, 180)
            wrk(port, work, "rspamd", 0, 100, 1, 8)  # warm the worker and rspamd
            # scans/s under load (8 connections); the latency one scan at a time, so that it is
            # what the plugin adds to a scan, not time spent queueing behind other scans
            rates[mode] = [
                (wrk(port, work, "rspamd", 0, 100, sizes.seconds, 8)[0],
                 wrk(port, work, "rspamd", 0, 100, sizes.seconds, 1)[1])
                for _ in range(sizes.rounds)
            ]
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
        worker.stop()
    on_rps, on_p50 = median([r[0] for r in rates["on"]]), median([r[1] for r in rates["on"]])
    off_rps, off_p50 = median([r[0] for r in rates["off"]]), median([r[1] for r in rates["off"]])
    added = on_p50 - off_p50
    return [
        Result("4. in rspamd: scans/s with the plugin (warm worker) vs without", f"{on_rps:.0f}/s",
               f"without {off_rps:.0f}/s", on_rps / off_rps, "informational", None),
        Result("4. in rspamd: added p50 latency (one scan at a time)",
               f"{added:.2f} ms (p50 {on_p50:.2f} vs {off_p50:.2f} ms)", "", added, "<= 1 ms", added <= 1.0),
    ]


def memory(work: Path, kport: int, sizes: Sizes) -> Result:
    """RSS after filling the cache, then after 3x as many distinct-ID checks as it holds (IDs not in the
    registry: NXDOMAIN answers are cached like any other)."""
    worker = Worker(work, "memory", kport, cache_size=sizes.cache_size if sizes.cache_size != 50_000 else None)
    try:
        def nx(i: int) -> bytes:
            return check_request(ip_of(i), f"mx.nx{i}.example")

        # two answers a check (registry, DNSBL): half the cache size in checks fills it
        async def until(first: int, n: int) -> None:
            done = 0
            while done < n:
                step = min(5000, n - done)
                await asyncio.gather(*(_load.sequential("127.0.0.1", worker.port,
                                                        lambda i, b=first + done + k * step // 8: nx(b + i), step // 8)
                                       for k in range(8)))
                done += step

        asyncio.run(until(0, sizes.cache_size // 2 + 1000))
        first_rss = worker.rss_mb()
        asyncio.run(until(10_000_000, sizes.memory_checks))
        second_rss = worker.rss_mb()
    finally:
        worker.stop()
    growth = second_rss / first_rss - 1
    ok = first_rss <= 200 and growth <= 0.10
    r = Result("6. memory: RSS with the cache full, then after 3x as many distinct-ID checks",
               f"{first_rss:.0f} MB -> {second_rss:.0f} MB ({growth * 100:+.1f}%)", f"cache {sizes.cache_size} answers",
               growth, "<= 200 MB, growth <= 10%", ok)
    return r


def plot(series: dict[str, list[float]], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot (pip install -e '.[bench]')")
        return
    fig, axes = plt.subplots(1, len(series), figsize=(5 * len(series), 4))
    for ax, (title, values) in zip(axes if len(series) > 1 else [axes], series.items(), strict=False):
        ordered = sorted(values)
        ax.plot(ordered, [i / len(ordered) for i in range(len(ordered))])
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("ms")
        ax.set_ylabel("fraction of requests")
        ax.grid(True, alpha=0.3)
    fig.suptitle("rspamd-regcheck latency distributions (CDF)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def report(results: list[Result], size: str, seconds: float) -> str:
    machine = f"{platform.node()}, {os.cpu_count()} cores, {platform.platform()}, Python {platform.python_version()}"
    lines = [
        "# Benchmark results",
        "",
        f"- Date: {time.strftime('%Y-%m-%d %H:%M %Z')}",
        f"- Machine: {machine}",
        f"- Command: `bench/run.py{'' if size == 'default' else ' --' + size}` ({seconds:.0f} s)",
        "- Every ratio is measured side by side in the same run; the load generator, knot and the",
        "  worker share the same cores.",
        "",
        "| measurement | value | beside | ratio | target | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        verdict = "" if r.passed is None else ("PASS" if r.passed else "FALLS SHORT")
        ratio = "" if r.ratio is None else f"{r.ratio:.2f}"
        note = f" ({'; '.join(r.notes)})" if r.notes else ""
        lines.append(f"| {r.name} | {r.value}{note} | {r.ceiling} | {ratio} | {r.target} | {verdict} |")
    lines += ["", "![latency distributions](latency.png)", ""]
    return "\n".join(lines)


KEPT_SECTIONS = "\n## "  # from here on, RESULTS.md holds sections of other scripts (bench/ports.py)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--tiny", action="store_true", help="seconds; for the test suite; targets not judged")
    g.add_argument("--long", action="store_true", help="longer runs and three rounds")
    g.add_argument("--path", action="store_true", help="only the critical path; its rows of RESULTS.md replaced")
    p.add_argument("--out", type=Path, default=HERE, help="where RESULTS.md and latency.png go")
    args = p.parse_args()
    if args.path:
        for r in path_only(args.out):
            print(f"{r.name}: {r.value} ({'PASS' if r.passed else 'FALLS SHORT'})")
        return 0
    size = "tiny" if args.tiny else "long" if args.long else "default"
    started = time.monotonic()
    results = run(size, args.out)
    text = report(results, size, time.monotonic() - started)
    print(text)
    if size != "tiny":
        old = args.out / "RESULTS.md"
        kept = old.read_text().partition(KEPT_SECTIONS)[1:] if old.exists() else ("", "")
        (args.out / "RESULTS.md").write_text(text + "".join(kept))  # sections other scripts wrote stay
    else:
        (args.out / "RESULTS-tiny.md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
