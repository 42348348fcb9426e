"""What the plugin costs an rspamd scan, at the rate mail arrives, beside rspamd's own SPF module.

    .venv/bin/python bench/rspamd_cost.py                 # ~4 minutes; writes a section of RESULTS.md
    .venv/bin/python bench/rspamd_cost.py --scans 500 --rounds 1 --no-write   # a quick look

One knot serves the benchmark's registry (bench/run.py: 100,000 IDs, QR1,
SPF and a DNSBL); one worker (`rspamd-regcheck serve`) answers from it; eight
rspamd 3.4 instances, each with one normal worker, scan at a fixed rate:

- base: nothing loaded (what any scan costs);
- regcheck: the plugin as shipped (result cache on, slim replies);
- regcheck, no cache: the plugin with ``cache_size = 0`` (every scan asks the worker);
- native SPF: rspamd's own ``spf`` module, on the same sender domains;
- floor: the plugin (cache off) against a bare asyncio server that reads the
  request and writes a fixed slim reply, checking nothing: what the HTTP
  exchange alone costs;
- floor with DNS (two of them): the plugin (cache off) against a bare server
  (bench/_bare.py, Python on uvloop as the worker runs) that also asks knot
  the two questions the worker asks for a cold QR1 check (the registry TXT
  of the ID, the DNSBL A of the client address) and waits for both answers
  before the same fixed reply, parsing and deciding nothing: from a pool of
  64 connected sockets with a port replaced every 4 questions, as the worker
  asks (issue 15's random ports), and from a socket of its own per question.
  That is the floor under any Python worker of this design;- warm floor: a few lines of Lua that insert the symbols, options and milter
  headers the worker gives a warm sender, from a constant (no key, no
  lookup): what reporting these symbols costs any plugin, the floor under a
  cache hit.

In short interleaved blocks (every configuration once per round, at each
rate) a client sends scans at the rate (a new connection each, as rspamc
and the proxy do): warm blocks repeat 100 senders, cold blocks give each
scan an ID (and sender domain) never seen before.  CPU is read from
/proc/PID/task/*/schedstat of each process group (every rspamd process of
an instance; the worker's supervisor and its child) before and after each
block; rspamd's CPU per scan minus the base instance's in the same round is
what the module added.  knot's own counters (mod-stats, read with knotc)
give the DNS questions each configuration asks per scan, so the plugin's
questions can be set beside those of rspamd's SPF module.  Latency is the client's p50 minus the base's, at the
rate and, after each block, for scans sent one at a time: on a machine whose
cores other work also wants, a rate the processes cannot keep up with builds
a queue, and the p50 at the rate then measures the queue; one at a time it
measures what the module adds to a scan.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import run as bench  # noqa: E402
from _knot import knot  # noqa: E402

WARM = 100  # senders repeated by warm blocks
MESSAGE = b"From: Sender <user@example.net>\r\nTo: rcpt@receiver.test\r\nSubject: cost\r\n\r\nhello\r\n"
SECTION = "## What the plugin costs an rspamd scan"  # the section of RESULTS.md this script owns
SPF_PLUGIN = "/usr/share/rspamd/plugins/spf.lua"


@dataclass(frozen=True)
class Row:
    """One line of the table: which rspamd instance, and which senders."""

    label: str
    instance: str
    kind: str  # warm-qr1, cold-qr1, cold-spf, warm-spf, cold-native


ROWS = [
    Row("base rspamd, nothing loaded", "base", "warm-qr1"),
    Row("regcheck plugin, warm (result cache)", "regcheck", "warm-qr1"),
    Row("regcheck plugin, warm, cache off (slim round trip)", "nocache", "warm-qr1"),
    Row("regcheck plugin, cold (QR1)", "regcheck", "cold-qr1"),
    Row("regcheck plugin, cold (SPF)", "regcheck", "cold-spf"),
    Row("rspamd's native spf module, warm", "native", "warm-spf"),
    Row("rspamd's native spf module, cold", "native", "cold-native"),
    Row("floor: plugin to a bare server, fixed slim reply, nothing checked", "floor", "cold-qr1"),
    Row("floor with DNS: bare server asking knot a cold QR1 check's 2 questions, a pool of 64 ports",
        "floorpool", "cold-qr1"),
    Row("floor with DNS, a socket (port) per question", "floorsock", "cold-qr1"),
    Row("warm floor: a plugin inserting the same symbols and headers from a constant", "warmfloor", "warm-qr1"),
]
SERVED = ("regcheck", "nocache", "floor", "floorpool", "floorsock")  # instances with a server of their own to count
BARE_MODES = {"floor": "none", "floorpool": "pool", "floorsock": "socket"}  # the floors' servers (bench/_bare.py)
FLOOR_NAMES = {"floor": "exchange alone", "floorpool": "with DNS, pool", "floorsock": "with DNS, socket a question"}

# The warm floor's plugin: what a cache hit inserts (RESULT: the worker's slim reply for a warm
# sender, as JSON), with none of the work of finding it.
WARM_FLOOR = """
local ucl = require "ucl"
local parser = ucl.parser()
assert(parser:parse_string([==[%(result)s]==]))
local reply = parser:get_object()
local SYMBOLS = {}
for _, s in ipairs(reply.symbols) do
  local options = {}
  for _, o in ipairs(s[3] or {}) do
    options[#options + 1] = tostring(o)
  end
  SYMBOLS[#SYMBOLS + 1] = { s[1], tonumber(s[2]) or 1.0, options }
end
local MILTER = reply.milter
local id = rspamd_config:register_symbol({
  name = 'REGCHECK_CHECK', type = 'callback', group = 'regcheck', score = 0.0, flags = 'empty',
  callback = function(task)
    for _, s in ipairs(SYMBOLS) do
      task:insert_result(s[1], s[2], s[3])
    end
    if MILTER then
      task:set_milter_reply(MILTER)
    end
  end,
})
for _, name in ipairs(%(catalogue)s) do
  if name ~= 'REGCHECK_CHECK' then
    rspamd_config:register_symbol({ name = name, type = 'virtual', parent = id, group = 'regcheck', score = 0.0 })
  end
end
"""


def warm_reply(port: int) -> dict:
    """The worker's slim reply for warm sender 0, asked as the plugin asks."""
    import http.client

    import msgpack

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("POST", "/checkv2", body=MESSAGE.split(b"\r\n\r\n")[0] + b"\r\n\r\n", headers={
        "IP": bench.ip_of(0), "Helo": "mx.id0.test", "From": "user@id0.test", "Rcpt": "rcpt@receiver.test",
        "Accept": "application/msgpack", "Regcheck-Reply": "slim"})
    reply = conn.getresponse()
    body = reply.read()
    conn.close()
    if reply.status != 200:
        raise RuntimeError(f"the worker answered {reply.status}: {body[:200]!r}")
    return msgpack.unpackb(body)


def warm_floor_plugin(reply: dict) -> str:
    """The warm floor's Lua source: *reply*'s symbols and milter headers, and the whole catalogue registered."""
    import json

    from rspamd_regcheck.symbols import CATALOGUE

    result = json.dumps({"symbols": reply["symbols"], "milter": reply.get("milter")})
    catalogue = "{ " + ", ".join(f"'{s.name}'" for s in CATALOGUE) + " }"
    return WARM_FLOOR % {"result": result, "catalogue": catalogue}


class Ids:
    """Fresh IDs for cold blocks: each kind its own range, never repeated."""

    def __init__(self) -> None:
        self.next = {"cold-qr1": 1000, "cold-spf": 1001, "cold-native": 60_001}

    def take(self, kind: str, n: int) -> list[int]:
        first = self.next[kind]
        self.next[kind] = first + 2 * n
        return list(range(first, first + 2 * n, 2))  # even: netblocks (QR1); odd: SPF only


def request(i: int) -> bytes:
    """A scan of ID *i*'s host: its address, HELO and a sender at its domain."""
    head = (
        f"POST /checkv2 HTTP/1.0\r\nIP: {bench.ip_of(i)}\r\nHelo: mx.id{i}.test\r\nFrom: user@id{i}.test\r\n"
        f"Rcpt: rcpt@receiver.test\r\nContent-Length: {len(MESSAGE)}\r\n\r\n"
    )
    return head.encode() + MESSAGE


# -- CPU of a process group ---------------------------------------------------------------------


def cpu_ns(pids: list[int]) -> int:
    """Nanoseconds on CPU of every thread of *pids* (schedstat's first field)."""
    total = 0
    for pid in pids:
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                total += int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[0])
            except (OSError, ValueError, IndexError):
                continue
    return total


# -- the client ---------------------------------------------------------------------------------


async def _scan(port: int, data: bytes) -> float:
    t0 = time.perf_counter()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        reply = await reader.read()  # HTTP/1.0: rspamd closes after the reply
    finally:
        writer.close()
    if not reply.startswith(b"HTTP/1.") or b" 200 " not in reply[:16]:
        raise RuntimeError(f"scan failed: {reply[:200]!r}")
    return time.perf_counter() - t0


async def one_at_a_time(port: int, make: Callable[[int], bytes], first: int, count: int) -> list[float]:
    """*count* scans, each sent when the one before is answered; latencies."""
    return [await _scan(port, make(first + n)) for n in range(count)]


async def paced(port: int, make: Callable[[int], bytes], count: int, rate: float) -> list[float]:
    """*count* scans started at *rate* per second (each on time, whatever the others do); latencies."""
    tasks = []
    start = time.perf_counter()
    for n in range(count):
        delay = start + n / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(_scan(port, make(n))))
    return list(await asyncio.gather(*tasks))


# -- processes ----------------------------------------------------------------------------------


class Rspamd:
    """rspamd -f with a minimal config (one normal worker) and *modules* loaded."""

    def __init__(self, work: Path, name: str, kport: int, modules: str):
        self.dir = work / f"rspamd-{name}"
        self.dir.mkdir()
        hs = ROOT / ".cache" / "rspamd-hs"
        hs.mkdir(parents=True, exist_ok=True)
        self.port = bench.free_port()
        (self.dir / "rspamd.conf").write_text(
            f'options {{ pidfile = "{self.dir}/rspamd.pid"; hs_cache_dir = "{hs}"; filters = ""; '
            f'dns {{ nameserver = ["127.0.0.1:{kport}"]; timeout = 2s; }} }}\n'
            f'logging {{ type = "file"; filename = "{self.dir}/rspamd.log"; level = "warning"; }}\n'
            f'worker "normal" {{ bind_socket = "127.0.0.1:{self.port}"; count = 1; }}\n'
            'actions { reject = 15; "add header" = 6; greylist = 4; }\n' + modules
        )
        self.proc = subprocess.Popen(
            [shutil.which("rspamd") or "rspamd", "-f", "-i", "-c", str(self.dir / "rspamd.conf")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        bench.wait_port(self.port, self.proc, 180)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(30)


def instances(work: Path, kport: int, worker_port: int, bare: dict[str, int], warm_floor: Path) -> dict[str, Rspamd]:
    """The rspamd instances by name; *bare*: the port of each floor's bare server."""

    def plugin(port: int, extra: str = "") -> str:
        return (f'modules {{ path = "{ROOT}/lua_shim/regcheck.lua"; }}\n.include "{ROOT}/rules/regcheck_group.conf"\n'
                f'regcheck {{ servers = "127.0.0.1:{port}"; timeout = 4s; {extra} }}\n')

    return {
        "base": Rspamd(work, "base", kport, ""),
        "regcheck": Rspamd(work, "regcheck", kport, plugin(worker_port)),
        "nocache": Rspamd(work, "nocache", kport, plugin(worker_port, "cache_size = 0;")),
        "native": Rspamd(work, "native", kport, f'modules {{ path = "{SPF_PLUGIN}"; }}\nspf {{ }}\n'),
        **{name: Rspamd(work, name, kport, plugin(port, "cache_size = 0;")) for name, port in bare.items()},
        "warmfloor": Rspamd(work, "warmfloor", kport,
                            f'modules {{ path = "{warm_floor}"; }}\n.include "{ROOT}/rules/regcheck_group.conf"\n'
                            f'{warm_floor.stem} {{ }}\n'),  # rspamd loads a module that has a section
    }


def regcheck_part(port: int, i: int) -> tuple[dict, object]:
    """ID *i*'s scan at *port*: the REGCHECK_* symbols (score, options) and the milter block of the reply."""
    import json

    reply = bench_reply(port, request(i))
    obj = json.loads(reply.partition(b"\r\n\r\n")[2])
    symbols = {k: (v.get("score"), v.get("options")) for k, v in obj.get("symbols", {}).items()
               if k.startswith("REGCHECK_")}
    return symbols, obj.get("milter")


def bench_reply(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def dns_rtt(kport: int, n: int = 500) -> float:
    """p50 seconds of a bare UDP question to knot and its answer (no parsing): one DNS round trip."""
    import dns.message

    wire = dns.message.make_query(f"id0.test.{bench.REGISTRY}", "TXT").to_wire()
    times = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("127.0.0.1", kport))
        s.settimeout(2)
        for _ in range(n):
            t0 = time.perf_counter()
            s.send(wire)
            s.recv(4096)
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


# -- measuring ----------------------------------------------------------------------------------


@dataclass
class Block:
    rspamd_us: float  # CPU per scan of the rspamd instance
    worker_us: float  # CPU per scan of the worker (regcheck rows)
    p50_ms: float  # at the rate
    alone_ms: float  # one scan at a time
    questions: float  # DNS questions knot answered per scan (at the rate)


class Questions:
    """Questions knot has answered so far (its mod-stats counters, read with knotc)."""

    def __init__(self, knot_dir: Path) -> None:
        self.conf = str(knot_dir / "knot.conf")

    def __call__(self) -> int:
        out = subprocess.run(["knotc", "-c", self.conf, "stats", "mod-stats.server-operation"],
                             capture_output=True, text=True, check=True).stdout
        return sum(int(line.rpartition("=")[2]) for line in out.splitlines() if "[query]" in line)


@dataclass
class Stats:
    blocks: dict[tuple[float, str], list[Block]] = field(default_factory=dict)  # (rate, row label) -> rounds


def run_block(inst: Rspamd, server_pids: list[int], kind: str, ids: Ids, rate: float, scans: int,
              asked: Questions, alone: int = 0) -> Block:
    if kind.startswith("cold"):
        fresh = ids.take(kind, scans + alone)

        def make(n: int) -> bytes:
            return request(fresh[n])
    else:
        first = 0 if kind == "warm-qr1" else 1  # even IDs have netblocks, odd ones SPF

        def make(n: int) -> bytes:
            return request(first + 2 * (n % WARM))

    pids = bench.descendants(inst.proc.pid)
    q0 = asked()
    r0, w0 = cpu_ns(pids), cpu_ns(server_pids)
    lat = asyncio.run(paced(inst.port, make, scans, rate))
    r1, w1 = cpu_ns(pids), cpu_ns(server_pids)
    q1 = asked()
    by_one = asyncio.run(one_at_a_time(inst.port, make, scans, alone)) if alone else [float("nan")]
    return Block((r1 - r0) / scans / 1000, (w1 - w0) / scans / 1000, statistics.median(lat) * 1000,
                 statistics.median(by_one) * 1000, (q1 - q0) / scans)


def measure(rates: list[float], scans: int, rounds: int, alone: int) -> tuple[Stats, float]:
    work = Path(tempfile.mkdtemp(prefix="regcheck-cost-"))
    stats = Stats()
    print(f"generating zones ({bench.SIZES['default'].ids} IDs) ...", flush=True)
    with knot(bench.zones(bench.SIZES["default"]), stats=True) as (_, kport, knot_dir):
        asked = Questions(knot_dir)
        worker = bench.Worker(work, "worker", kport)
        bare = {name: (bench.free_port(), mode) for name, mode in BARE_MODES.items()}
        bare_procs = {name: subprocess.Popen([sys.executable, str(HERE / "_bare.py"), str(port), mode, str(kport)])
                      for name, (port, mode) in bare.items()}
        insts: dict[str, Rspamd] = {}
        try:
            (work / "warm_floor.lua").write_text(warm_floor_plugin(warm_reply(worker.port)))
            for name, (port, _) in bare.items():
                bench.wait_port(port, bare_procs[name], 30)
            insts = instances(work, kport, worker.port, {name: port for name, (port, _) in bare.items()},
                              work / "warm_floor.lua")
            worker_pids = bench.descendants(worker.proc.pid)
            servers = {"regcheck": worker_pids, "nocache": worker_pids,
                       **{name: [proc.pid] for name, proc in bare_procs.items()}}
            rtt = dns_rtt(kport)
            shipped = regcheck_part(insts["regcheck"].port, 0)
            if not shipped[0] or regcheck_part(insts["warmfloor"].port, 0) != shipped:
                raise RuntimeError(f"the warm floor inserts other symbols or headers than the plugin: {shipped} vs "
                                   f"{regcheck_part(insts['warmfloor'].port, 0)}")
            ids = Ids()
            for row in ROWS:  # warm everything the warm blocks repeat (rspamd, plugin and worker caches)
                if not row.kind.startswith("cold"):
                    run_block(insts[row.instance], servers.get(row.instance, []), row.kind, ids, 200, 2 * WARM, asked)
            for rate in rates:
                for r in range(rounds):
                    for row in ROWS:
                        block = run_block(insts[row.instance], servers.get(row.instance, []), row.kind, ids, rate, scans,
                                          asked, alone)
                        stats.blocks.setdefault((rate, row.label), []).append(block)
                        print(f"{rate:.0f}/s round {r + 1} {row.label}: rspamd {block.rspamd_us:.0f} us, "
                              f"worker {block.worker_us:.0f} us, p50 {block.p50_ms:.2f} ms, "
                              f"alone {block.alone_ms:.2f} ms, {block.questions:.2f} DNS questions", flush=True)
        finally:
            for inst in insts.values():
                inst.stop()
            worker.stop()
            for proc in bare_procs.values():
                proc.send_signal(signal.SIGTERM)
                proc.wait(10)
    shutil.rmtree(work, ignore_errors=True)
    return stats, rtt


# -- the table ----------------------------------------------------------------------------------


@dataclass
class Line:
    label: str
    rspamd_added: float
    worker: float
    p50_added: float
    alone_added: float
    questions: float  # DNS questions per scan

    @property
    def total(self) -> float:
        return self.rspamd_added + self.worker


def lines(stats: Stats, rate: float) -> list[Line]:
    base = stats.blocks[(rate, ROWS[0].label)]
    out = []
    for row in ROWS:
        blocks = stats.blocks[(rate, row.label)]
        rspamd_added = statistics.median(b.rspamd_us - base[i].rspamd_us for i, b in enumerate(blocks))
        worker = statistics.median(b.worker_us for b in blocks) if row.instance in SERVED else 0.0
        p50 = statistics.median(b.p50_ms - base[i].p50_ms for i, b in enumerate(blocks))
        alone = statistics.median(b.alone_ms - base[i].alone_ms for i, b in enumerate(blocks))
        out.append(Line(row.label, rspamd_added, worker, p50, alone, statistics.median(b.questions for b in blocks)))
    return out


def row(ls: list[Line], instance: str, kind: str) -> Line:
    """The line of *instance* scanning *kind* senders."""
    return ls[[(r.instance, r.kind) for r in ROWS].index((instance, kind))]


def targets(ls: list[Line], rtt_ms: float) -> list[tuple[str, str, bool, str]]:
    """The issue's three targets, as ratios to native SPF in the same run: (what, figures, met, floor)."""
    warm, cold, warm_floor = row(ls, "regcheck", "warm-qr1"), row(ls, "regcheck", "cold-qr1"), row(ls, "warmfloor", "warm-qr1")
    floors = [(row(ls, name, "cold-qr1"), FLOOR_NAMES[name]) for name in ("floorpool", "floorsock", "floor")]
    n_warm, n_cold = row(ls, "native", "warm-spf"), row(ls, "native", "cold-native")
    out = []
    ratio = warm.total / max(n_warm.total, 1.0)
    out.append(("warm: total added CPU <= 2x native SPF warm",
                f"{warm.total:.0f} us vs {n_warm.total:.0f} us = {ratio:.1f}x", ratio <= 2.0,
                f"{warm_floor.total:.0f} us = {warm_floor.total / max(n_warm.total, 1.0):.1f}x (warm floor)"))
    ratio = cold.total / max(n_cold.total, 1.0)
    out.append(("cold QR1: total added CPU <= 3x native SPF cold",
                f"{cold.total:.0f} us vs {n_cold.total:.0f} us = {ratio:.1f}x", ratio <= 3.0,
                "; ".join(f"{x.total:.0f} us = {x.total / max(n_cold.total, 1.0):.1f}x ({what})" for x, what in floors)))
    limit = rtt_ms + 0.3
    out.append(("cold QR1: p50 added latency (one at a time) <= 1 DNS round trip + 0.3 ms",
                f"{cold.alone_added:.2f} ms vs {rtt_ms:.2f} + 0.3 = {limit:.2f} ms", cold.alone_added <= limit,
                "; ".join(f"{x.alone_added:.2f} ms ({what})" for x, what in floors)))
    return out


def report(stats: Stats, rates: list[float], rtt: float, scans: int, rounds: int, seconds: float,
           loads: tuple[float, float]) -> str:
    out = [
        SECTION,
        "",
        f"- Date: {time.strftime('%Y-%m-%d %H:%M %Z')}; {platform.node()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}",
        f"- Command: `bench/rspamd_cost.py --scans {scans} --rounds {rounds}` ({seconds:.0f} s); rates "
        + ", ".join(f"{r:.0f}/s" for r in rates)
        + f"; load average {loads[0]:.1f} at the start, {loads[1]:.1f} at the end (2 cores shared)",
        "- rspamd 3.4, one normal worker per configuration; the worker (`serve`, one process) and knot",
        "  with the 100,000-ID registry; every configuration in each round, blocks interleaved.",
        "- CPU per scan from /proc/PID/task/*/schedstat of each process group; rspamd's minus the",
        "  base instance's in the same round (median of the rounds). p50 added: the client's p50",
        "  minus the base's, for scans sent one at a time after each block, and at the rate (where",
        "  the machine cannot keep up with the rate, that one measures the queue).",
        f"- One DNS round trip to knot (bare UDP, p50): {rtt * 1000:.3f} ms. DNS questions per scan: what",
        "  knot answered during the block at the rate (its mod-stats counters), divided by the scans.",
        "- The floors with DNS ask the two questions of a cold QR1 check and parse nothing: the least",
        "  any Python worker of this design spends on a cold check (bench/_bare.py).",
        "",
    ]
    for rate in rates:
        ls = lines(stats, rate)
        out += [
            f"### {rate:.0f} scans/s",
            "",
            "| | rspamd CPU added | worker CPU | total added | p50 added, one at a time | p50 added at the rate "
            "| DNS questions per scan |",
            "|---|---|---|---|---|---|---|",
        ]
        for line in ls[1:]:
            worker = f"{line.worker:.0f} us" if line.worker else "-"
            out.append(f"| {line.label} | {line.rspamd_added:.0f} us | {worker} | **{line.total:.0f} us** | "
                       f"{line.alone_added:.2f} ms | {line.p50_added:.2f} ms | {line.questions:.2f} |")
        base = stats.blocks[(rate, ROWS[0].label)]
        out += [
            "",
            f"Base rspamd itself: {statistics.median(b.rspamd_us for b in base):.0f} us of CPU and p50 "
            f"{statistics.median(b.p50_ms for b in base):.2f} ms per scan at the rate, "
            f"{statistics.median(b.alone_ms for b in base):.2f} ms one at a time.",
            "",
            "| target (ratio to native SPF, same run) | measured | verdict | floor |",
            "|---|---|---|---|",
        ]
        for what, figures, met, floor in targets(ls, rtt * 1000):
            out.append(f"| {what} | {figures} | {'PASS' if met else 'FALLS SHORT'} | {floor} |")
        out.append("")
    out += ["![CPU added per scan](rspamd_cost.png)", ""]
    return "\n".join(out)


def plot(stats: Stats, rates: list[float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(rates), figsize=(7 * len(rates), 4.5), squeeze=False)
    for ax, rate in zip(axes[0], rates, strict=True):
        ls = lines(stats, rate)[1:]
        y = range(len(ls))
        ax.barh(y, [x.rspamd_added for x in ls], label="rspamd CPU added")
        ax.barh(y, [x.worker for x in ls], left=[x.rspamd_added for x in ls], label="worker CPU")
        ax.set_yticks(list(y), [x.label for x in ls], fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel("us of CPU per scan")
        ax.set_title(f"{rate:.0f} scans/s")
        ax.grid(True, axis="x", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("What a scan costs beyond a bare rspamd (median of the rounds)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def write_section(text: str, path: Path) -> None:
    """Replace this script's section of RESULTS.md (or add it at the end)."""
    old = path.read_text() if path.exists() else ""
    if SECTION in old:
        head, _, rest = old.partition(SECTION)
        tail = rest[rest.find("\n## ") + 1 :] if "\n## " in rest else ""
        old = head.rstrip("\n") + "\n\n" + text + ("\n" + tail if tail else "")
    else:
        old = old.rstrip("\n") + "\n\n" + text
    path.write_text(old)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rate", type=float, action="append", help="scans/s (repeat; default 500 and 1000)")
    p.add_argument("--scans", type=int, default=1000, help="scans per block")
    p.add_argument("--rounds", type=int, default=5, help="rounds of interleaved blocks per rate")
    p.add_argument("--alone", type=int, default=100, help="scans sent one at a time after each block")
    p.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md and the plot")
    p.add_argument("--out", type=Path, default=HERE, help="the folder of RESULTS.md and rspamd_cost.png")
    args = p.parse_args()
    rates = args.rate or [500.0, 1000.0]
    started = time.monotonic()
    load = os.getloadavg()[0]
    stats, rtt = measure(rates, args.scans, args.rounds, args.alone)
    loads = (load, os.getloadavg()[0])
    text = report(stats, rates, rtt, args.scans, args.rounds, time.monotonic() - started, loads)
    print(text)
    if not args.no_write:
        write_section(text, args.out / "RESULTS.md")
        plot(stats, rates, args.out / "rspamd_cost.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
