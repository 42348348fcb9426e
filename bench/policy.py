"""Postfix policy requests/s: our policy listener beside spf-engine's policyd-spf, same machine, same run.

    .venv/bin/python bench/policy.py            # about two minutes on 2 cores; writes bench/RESULTS-postfix.md
    .venv/bin/python bench/policy.py --quick    # seconds, smaller counts (no file written)

Every server gets the same Postfix policy requests (protocol_state=RCPT, a
unique ``instance`` per request so none reuses a per-message verdict), from
the same driver (bench/_lockstep.py), lock-step per connection as Postfix's
smtpd asks: send a request, read the answer, send the next.  The driver is
one process per connection with a blocking socket (or blocking pipes), every
request built before the clock starts, and per request only a send, the
reads up to the empty line and one ``in`` check of the answer: on one
connection the rate is a ping-pong, and a driver that cost much would hide
the servers behind its own time.

- **ours**: `rspamd-regcheck serve` with a worker process per core, ``[policy_server]``
  on a loopback TCP port, and again on a UNIX socket (``listen = "unix:/path"``;
  its rows are skipped, with the worker's reason printed, if the worker does not
  accept that); the check is the whole seed check (registry record, ratings, SPF
  for the MAIL FROM), answered ``PREPEND X-Regcheck: ... SPF pass``.
- **policyd-spf** (spf-engine, its own venv under ``.cache/``, bench/peers.py):
  the way Postfix runs it, one process per connection (spawn(8)), over its
  stdin/stdout; packaged default config; dnspython pointed at the same knot,
  with an LRU cache for the warm runs (stock policyd-spf has none).
- **the floor**: a bare uvloop server that reads up to the empty line and
  answers a fixed PREPEND, no parsing, no check, on TCP and on a UNIX socket:
  what the driver and the kernel's round trip alone allow, the ceiling of any
  server on this machine.

Data: bench/spf_driver.py's zone (the shapes of shared peer-perf: 2-4 counted
SPF lookups, 4-6 questions, pass via ``mx``) plus a registry record for the
senders' Registered ID.  Cold: every request names a sender domain never
asked before (in that process); all senders share the one Registered ID, so
after the first request the registry's answer is cached and a cold request
is a cold SPF evaluation (policyd-spf does SPF alone).  Warm: a pool of 100 domains asked once untimed
(on the same connection), then again and again.  "one" is one connection;
"many" is C connections (C processes for policyd-spf).  Start-up is never timed.

Placement.  One connection never has the client and the server running at
once: each request wakes the server and each answer wakes the driver.  When
the OS puts them on different CPUs, each wake-up crosses CPUs, which on this
VM costs tens of microseconds of CPU per hop, whoever answers.  So every
1-connection run is made twice: as the OS places the processes, and with the
driver and the answering server's processes (our worker processes,
policyd-spf's process, the floor's server) pinned to one CPU
(``sched_setaffinity``), identically for every server: the CPU idle the
longest in the 0.2 s before that run, since others share the machine.  knot
is never pinned.  Where the OS puts the pair depends on the machine's load
at that moment, so the rows placed by the OS move from run to run.

Beside each rate, the CPU time per request of the answering processes (from
/proc/PID/task/*/schedstat: our worker processes, policyd-spf's processes,
the floor's server; not knot's) and of the driver (its own process time):
CPU time moves less with the load of a shared machine than a rate does.

It also measures the case docs/postfix.md describes: rspamd asking the
worker (over HTTP, as the plugin does) about a message Postfix's policy
request already checked: how many DNS questions that second check asks, and
its rate.
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import re
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import peers  # noqa: E402
from _knot import free_port, knot  # noqa: E402
from _lockstep import Pipes, Result, Target, Tcp, Unix, idlest_cpu, pin, run  # noqa: E402
from spf_driver import ORIGIN, zone  # noqa: E402

REGISTRY = "registry.bench"
CLIENT = "192.0.2.10"
POOL = 100  # warm domains
MANY = 8  # connections (policyd-spf: processes) in the "many" runs
WORKERS = os.cpu_count() or 1  # our worker processes: server.workers as an admin sets it, one per core
ALL_CPUS = os.sched_getaffinity(0)
PLACES = ("os", "pin")
PLACE_LABEL = {"os": "placed by the OS", "pin": "pinned to one CPU"}
OURS_EXPECT, PEER_EXPECT = b"SPF pass", b"Received-SPF: Pass"

# The floor: an asyncio policy server (uvloop, as the worker) that reads up to the empty line
# and answers a fixed PREPEND, with no parsing and no check: what the driver and the round trip
# alone allow.  Its argument: a TCP port, or the path of a UNIX socket.
BARE = """
import asyncio, sys, uvloop
ANSWER = b"action=PREPEND X-Regcheck: 192.0.2.10 bench.test SPF pass ratings=S1:A\\n\\n"
class P(asyncio.Protocol):
    def connection_made(self, t):
        self.t, self.buf = t, b""
    def data_received(self, data):
        self.buf += data
        n = self.buf.count(b"\\n\\n")
        if n:
            self.buf = self.buf[self.buf.rfind(b"\\n\\n") + 2:]
            self.t.write(ANSWER * n)
async def main():
    loop, where = asyncio.get_running_loop(), sys.argv[1]
    if where.startswith("/"):
        server = await loop.create_unix_server(P, where)
    else:
        server = await loop.create_server(P, "127.0.0.1", int(where))
    await server.serve_forever()
uvloop.run(main())
"""


def zones(n: int) -> dict[str, str]:
    soa = "$TTL 3600\n@ IN SOA ns1 hostmaster 1 3600 600 86400 3600\n@ IN NS ns1\nns1 IN A 127.0.0.1\n"
    # the senders dN.spf.bench.test all have the Registered ID bench.test
    registry = f'$ORIGIN {REGISTRY}.\n{soa}bench.test IN TXT "v=reg1 svc=S1:A,M2:A,H1:B meth=SPF:30"\n'
    return {REGISTRY: registry, ORIGIN: zone(n)}


_instances = itertools.count()


def request(domain: str, client: str = CLIENT) -> bytes:
    """One RCPT request of a transaction of its own (a unique ``instance``)."""
    return (
        "request=smtpd_access_policy\nprotocol_state=RCPT\nprotocol_name=ESMTP\n"
        f"client_address={client}\nclient_name=mx.{domain}\nhelo_name=mx.{domain}\n"
        f"sender=user@{domain}\nrecipient=rcpt@example.net\ninstance=b{os.getpid()}.{next(_instances)}\nqueue_id=\n\n"
    ).encode()


def requests(domains: list[str]) -> list[bytes]:
    return [request(d) for d in domains]


def connect(target: Target, timeout: float = 0.5) -> socket.socket:
    if isinstance(target, Unix):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(target.path)
        except OSError:
            sock.close()
            raise
        return sock
    assert isinstance(target, Tcp)
    return socket.create_connection(("127.0.0.1", target.port), timeout=timeout)


def wait_listening(target: Target, proc: subprocess.Popen[bytes], what: str, log: Path | None = None) -> None:
    """Until *target* accepts a connection; raises RuntimeError if *proc* exits first or after 30 s."""
    deadline = time.monotonic() + 30
    while True:
        try:
            connect(target).close()
            return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                said = log.read_text(errors="replace").strip() if log is not None else ""
                raise Refused(f"{what} did not start listening on {target}: {said[-2000:]}") from None
            time.sleep(0.1)


class Refused(RuntimeError):
    """A server that exited instead of listening (for our worker: a configuration it rejects)."""


@contextmanager
def floor(target: Target) -> Iterator[int]:
    """The floor's server listening on *target*; yields its pid."""
    if isinstance(target, Unix):
        where = target.path
    else:
        assert isinstance(target, Tcp)
        where = str(target.port)
    bare = subprocess.Popen([sys.executable, "-c", BARE, where])
    try:
        wait_listening(target, bare, "the floor's server")
        yield bare.pid
    finally:
        bare.terminate()
        bare.wait(10)


def children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


class Worker:
    """`rspamd-regcheck serve` with its policy listener on a TCP port or, *unix*, on a UNIX socket."""

    def __init__(self, work: Path, kport: int, level: str = "warning", workers: int = WORKERS, unix: bool = False):
        self.http_port = free_port()
        name = f"policy-{level}-{'unix' if unix else 'tcp'}"
        self.target: Target
        if unix:
            self.target = Unix(str(work / f"{name}.sock"))
            listen = f"unix:{self.target.path}"
        else:
            port = free_port()
            self.target = Tcp(port)
            listen = f"127.0.0.1:{port}"
        conf = work / f"{name}.toml"
        conf.write_text(
            f'[registry]\nzones = ["{REGISTRY}"]\n[dns]\nnameservers = ["127.0.0.1"]\nport = {kport}\n'
            f'[server]\nworkers = {workers}\n[policy]\nlocal_networks = []\n[log]\nlevel = "{level}"\n'
            f'[policy_server]\nlisten = "{listen}"\nmode = "enforce"\n'
        )
        self.log_path = work / f"{name}.log"
        self.log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        serve = [sys.executable, "-m", "rspamd_regcheck", "--config", str(conf), "serve"]
        http = ["--listen", f"127.0.0.1:{self.http_port}"]
        self.proc = subprocess.Popen([*serve, *http], stdout=self.log, stderr=subprocess.STDOUT)
        try:
            wait_listening(self.target, self.proc, "the worker", self.log_path)
        except Refused:
            self.stop()
            raise

    @property
    def pids(self) -> list[int]:
        """The worker processes (the supervisor only waits)."""
        return children(self.proc.pid)

    def http(self, data: bytes) -> bytes:
        with socket.create_connection(("127.0.0.1", self.http_port), timeout=10) as s:
            s.sendall(data)
            buf = b""
            while b"\r\n\r\n" not in buf:
                buf += s.recv(65536)
            head, _, body = buf.partition(b"\r\n\r\n")
            found = re.search(rb"Content-Length: (\d+)", head, re.I)
            if found is None:
                raise RuntimeError(f"the worker's reply has no Content-Length: {head[:200]!r}")
            length = int(found.group(1))
            while len(body) < length:
                body += s.recv(65536)
            return body

    def questions(self) -> int:
        time.sleep(1.2)  # a worker hands its counts to /metrics once a second
        text = self.http(b"GET /metrics HTTP/1.1\r\n\r\n").decode()
        m = re.search(r'regcheck_dns_total\{event="question"\} ([0-9.e+]+)', text)
        return int(float(m.group(1))) if m else 0

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)
        self.log.close()


@contextmanager
def placed(place: str, pids: list[int]) -> Iterator[set[int] | None]:
    """The drivers' CPUs for *place*; "pin" also pins *pids* (every thread) there for the run: one
    CPU, the one idle the longest just before the run (others share this machine)."""
    if place == "os":
        yield None
        return
    cpus = {idlest_cpu(ALL_CPUS)}
    pin(pids, cpus)
    try:
        yield cpus
    finally:
        pin(pids, ALL_CPUS)


def record(out: dict[str, float], key: str, result: Result) -> None:
    out[key] = result.rate
    out[f"{key} cpu"] = result.server_us
    out[f"{key} drv"] = result.driver_us


class Sizes:
    """How many requests each run asks: ``--quick`` or the full run."""

    def __init__(self, quick: bool) -> None:
        if quick:
            self.ours_cold, self.peer_cold, self.ours_reps, self.peer_reps = (150, 300), (40, 80), 5, 2
        else:
            self.ours_cold, self.peer_cold, self.ours_reps, self.peer_reps = (1500, 6000), (400, 800), 40, 10

    def domains(self) -> int:
        """Domains one round uses: the warm pool, ours cold on both transports, the rspamd check, policyd-spf cold."""
        one, many = self.ours_cold
        peer_one, peer_many = self.peer_cold
        return POOL + 2 * (len(PLACES) * one + many) + 200 + len(PLACES) * peer_one + peer_many


def measure(kport: int, work: Path, size: Sizes, skipped: dict[str, str]) -> dict[str, float]:
    """Rates and CPU times by name ("ours warm one tcp pin", "... cpu", "... drv").

    Domains are handed out so that no cold run repeats one.  A transport the worker rejects is
    left out and its reason put in *skipped*.
    """
    out: dict[str, float] = {}
    pool = names(0, POOL)
    nxt = POOL

    def take(n: int) -> list[str]:
        nonlocal nxt
        nxt += n
        return names(nxt - n, nxt)

    def fill(conns: int = 1) -> list[list[bytes]]:
        return [requests(pool) for _ in range(conns)]

    def warm_ours(conns: int = 1) -> list[list[bytes]]:
        return [requests(pool * size.ours_reps) for _ in range(conns)]

    targets: dict[str, Target] = {"tcp": Tcp(free_port()), "unix": Unix(str(work / "floor.sock"))}
    for via, target in targets.items():
        with floor(target) as pid:
            for place in PLACES:
                with placed(place, [pid]) as cpus:
                    record(out, f"floor one {via} {place}", run([target], [[]], warm_ours(), OURS_EXPECT, [pid], cpus))
            many = run([target] * MANY, [[]] * MANY, warm_ours(MANY), OURS_EXPECT, [pid])
            record(out, f"floor many {via} os", many)

    cold_one, cold_many = size.ours_cold
    for via in ("tcp", "unix"):
        try:
            worker = Worker(work, kport, unix=via == "unix")
        except Refused as exc:
            skipped[via] = str(exc)
            print(f"ours over {via}: skipped: {exc}", file=sys.stderr, flush=True)
            continue
        try:
            target, pids = worker.target, worker.pids
            for place in PLACES:
                with placed(place, pids) as cpus:
                    cold = run([target], [[]], [requests(take(cold_one))], OURS_EXPECT, pids, cpus)
                    record(out, f"ours cold one {via} {place}", cold)
                    warm = run([target], fill(), warm_ours(), OURS_EXPECT, pids, cpus)
                    record(out, f"ours warm one {via} {place}", warm)
            cold_lists = [requests(d) for d in split(take(cold_many), MANY)]
            record(out, f"ours cold many {via} os", run([target] * MANY, [[]] * MANY, cold_lists, OURS_EXPECT, pids))
            # every connection fills the caches of the worker process that took it, untimed
            warm = run([target] * MANY, fill(MANY), warm_ours(MANY), OURS_EXPECT, pids)
            record(out, f"ours warm many {via} os", warm)
        finally:
            worker.stop()

    rspamd_after_policy(out, work, kport, take(200), fill()[0], warm_ours()[0])

    python = peers.ensure_policyd_venv()
    peer_one, peer_many = size.peer_cold
    # 127.0.0.1 is in policyd-spf's default skip_addresses: an answer without DNS, so start-up is not timed
    hello = [request("localhost.invalid", "127.0.0.1")]

    def untimed(conns: int, cache: bool) -> list[list[bytes]]:
        """Each connection's first requests: the start-up answer, then (warm) the pool, untimed."""
        return [hello + f for f in fill(conns)] if cache else [hello] * conns

    with tempfile.TemporaryFile() as err:
        for cache in (False, True):
            temp = "warm" if cache else "cold"

            for place in PLACES:
                with policyd(python, kport, cache, err, 1) as (pipes, pids), placed(place, pids) as cpus:
                    timed = [requests(pool * size.peer_reps) if cache else requests(take(peer_one))]
                    one = run(pipes, untimed(1, cache), timed, PEER_EXPECT, pids, cpus)
                    record(out, f"policyd-spf {temp} one pipe {place}", one)
            with policyd(python, kport, cache, err, MANY) as (pipes, pids):
                if cache:
                    timed_lists = [requests(pool * size.peer_reps) for _ in range(MANY)]
                else:
                    timed_lists = [requests(d) for d in split(take(peer_many), MANY)]
                many = run(pipes, untimed(MANY, cache), timed_lists, PEER_EXPECT, pids)
                record(out, f"policyd-spf {temp} many pipe os", many)
    return out


@contextmanager
def policyd(python: Path, kport: int, cache: bool, err: IO[bytes], n: int) -> Iterator[tuple[list[Target], list[int]]]:
    """*n* policyd-spf processes, as Postfix's spawn(8) runs them; yields their pipes and pids.

    Their stderr goes to the file *err*, whose end is quoted if a driver fails.
    """
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    argv = [str(python), "-c", peers._WRAPPER, str(kport), "1" if cache else "0", str(peers._policyd_config())]
    procs = [
        subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, env=env) for _ in range(n)
    ]
    ends = [(p.stdout, p.stdin) for p in procs if p.stdout is not None and p.stdin is not None]
    try:
        try:
            yield [Pipes(out.fileno(), into.fileno()) for out, into in ends], [p.pid for p in procs]
        except RuntimeError as exc:
            err.seek(0)
            said = err.read().decode(errors="replace")[-2000:]
            raise RuntimeError(f"{exc}\npolicyd-spf's stderr:\n{said}") from exc
    finally:
        for _, into in ends:
            into.close()  # end of input ends its read loop
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for out, _ in ends:
            out.close()


def rspamd_after_policy(
    out: dict[str, float], work: Path, kport: int, fresh: list[str], fill: list[bytes], warm: list[bytes]
) -> None:
    """rspamd after Postfix: the envelopes Postfix just asked about, over HTTP as the plugin sends
    them, to a worker logging each check (its time in the worker: the log line's ms=).  One worker
    process: the DNS cache is per process (docs/postfix.md)."""
    worker = Worker(work, kport, level="info", workers=1)
    try:
        run([worker.target], [[]], [requests(fresh)], OURS_EXPECT, [])
        before = worker.questions()
        for d in fresh:
            body = f"From: user@{d}\r\nSubject: x\r\n\r\nbody\r\n".encode()
            reply = worker.http(
                f"POST /checkv2 HTTP/1.1\r\nIP: {CLIENT}\r\nHelo: mx.{d}\r\nFrom: user@{d}\r\nRcpt: rcpt@example.net\r\n"
                f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            if b"REGCHECK_SPF_ALLOW" not in reply:
                raise RuntimeError(f"HTTP check of {d}: {reply[:200]!r}")
        out["rspamd after policy, DNS questions"] = worker.questions() - before
        first, second = check_times(worker.log_path.read_text())
        out["policy check ms (first, cold)"] = first
        out["rspamd check ms (second)"] = second
        # the warm run again with the check log on (log.level = "info", the default; above: "warning")
        record(out, "ours warm one logged", run([worker.target], [fill], [warm], OURS_EXPECT, worker.pids))
    finally:
        worker.stop()


def names(lo: int, hi: int) -> list[str]:
    return [f"d{i:05d}.{ORIGIN}" for i in range(lo, hi)]


def split(domains: list[str], parts: int) -> list[list[str]]:
    return [domains[i::parts] for i in range(parts)]


def check_times(log: str) -> tuple[float, float]:
    """Median time in the worker of the first check of each HELO (Postfix's) and of the second (rspamd's)."""
    seen: dict[str, list[float]] = {}
    for m in re.finditer(r"event=check .*?helo=(\S+) .* ms=([0-9.]+)", log):
        seen.setdefault(m.group(1), []).append(float(m.group(2)))
    firsts = sorted(v[0] for v in seen.values() if len(v) == 2)
    seconds = sorted(v[1] for v in seen.values() if len(v) == 2)
    if not firsts:
        raise RuntimeError("no HELO was checked twice: is the check log on?")
    return firsts[len(firsts) // 2], seconds[len(seconds) // 2]


def report(rounds: list[dict[str, float]], skipped: dict[str, str], started: str, seconds: float) -> str:
    def have(key: str) -> bool:
        return all(key in r for r in rounds)

    def med(key: str) -> float:
        values = sorted(r[key] for r in rounds)
        return values[len(values) // 2]

    def rng(key: str) -> str:
        if not have(key):
            return "skipped"
        values = [r[key] for r in rounds]
        return f"{med(key):,.0f} ({min(values):,.0f}-{max(values):,.0f})"

    def ratio(a: str, b: str) -> float:
        values = sorted(r[a] / r[b] for r in rounds)
        return values[len(values) // 2]

    def us(key: str) -> str:
        return f"{med(key):.1f}" if have(key) else "skipped"

    def row(*cells: str) -> str:
        return "| " + " | ".join(cells) + " |"

    def conns(n: str) -> str:
        return "1 connection" if n == "one" else f"{MANY} connections"

    def floor_pair(place: str) -> str:
        key = f"floor one tcp {place}"
        return ", ".join(f"{r[f'{key} cpu'] + r[f'{key} drv']:.0f}" for r in rounds)

    runs = [(n, place) for n in ("one", "many") for place in (PLACES if n == "one" else ("os",))]
    lines = [
        "# Postfix policy requests/s: rspamd-regcheck beside policyd-spf",
        "",
        f"Written by `bench/policy.py` at {started} UTC ({seconds:.0f} s, {len(rounds)} rounds; median, range in",
        f"brackets). Host: {platform.node()}, {os.cpu_count()} CPUs, Python {platform.python_version()}; the",
        "driver, the servers and knot share the machine. Method and data: the docstring of bench/policy.py.",
        f"rspamd-regcheck runs {WORKERS} worker processes; policyd-spf one process per connection, on its",
        "stdin/stdout (Postfix's spawn(8)). \"Pinned\": the driver and the answering server's processes on one",
        "CPU, the idlest just before the run (knot is never pinned); otherwise the OS places them.",
        "Within a round the servers run one after another (the floor, ours over TCP, ours over UNIX, policyd-spf);",
        "a ratio is the median of the rounds' own ratios, so it need not equal the medians' quotient. CPU time per",
        "request, below, moves less with the machine's load than a rate does.",
        "",
    ]
    for via, reason in skipped.items():
        lines += [f"Ours over {via.upper()} was skipped: {reason.splitlines()[0][:300]}", ""]
    lines += [
        "| run | placement | ours over | rspamd-regcheck | policyd-spf | ratio | target | |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for temp, target in (("warm", 10.0), ("cold", 2.0)):
        for n, place in runs:
            peer = f"policyd-spf {temp} {n} pipe {place}"
            for via in ("tcp", "unix"):
                ours = f"ours {temp} {n} {via} {place}"
                cells = [f"{temp}, {conns(n)}", PLACE_LABEL[place], via.upper(), rng(ours), rng(peer)]
                if have(ours):
                    r = ratio(ours, peer)
                    cells += [f"{r:.1f}x", f">= {target:.0f}x", "PASS" if r >= target else "FALLS SHORT"]
                else:
                    cells += ["", f">= {target:.0f}x", "skipped"]
                lines.append(row(*cells))
    lines += [
        "",
        "CPU time per request, in microseconds (median of the rounds): the processes that answer (our worker",
        "processes, policyd-spf's, the floor's server; not knot's) and the driver (its own process time, on",
        "the ours-over-TCP and policyd-spf runs). CPU time moves less with the machine's load than a rate.",
        "",
        "| run | placement | ours TCP | ours UNIX | policyd-spf | policyd-spf / ours TCP | floor server TCP | floor server UNIX"
        " | driver: ours TCP | driver: policyd-spf |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for temp in ("warm", "cold"):
        for n, place in runs:
            ours, peer = f"ours {temp} {n} tcp {place}", f"policyd-spf {temp} {n} pipe {place}"
            floors = [us(f"floor {n} {via} {place} cpu") if temp == "warm" else "" for via in ("tcp", "unix")]
            lines.append(
                row(
                    f"{temp}, {conns(n)}",
                    PLACE_LABEL[place],
                    us(f"{ours} cpu"),
                    us(f"ours {temp} {n} unix {place} cpu"),
                    us(f"{peer} cpu"),
                    f"{ratio(f'{peer} cpu', f'{ours} cpu'):.1f}x",
                    *floors,
                    us(f"{ours} drv"),
                    us(f"{peer} drv"),
                )
            )
    lines += [
        "",
        "The floor: a bare uvloop server answering a fixed PREPEND without parsing or checking, same driver. In",
        "the same placement no server on this machine, with this driver, can go faster; its ratio to policyd-spf's",
        "warm rate is the most any server could show against it. Placed by the OS, a percentage below compares a round in which",
        "one pair may have stayed on one CPU with one in which the other crossed CPUs, so it can pass 100 %; the",
        "pinned row compares like with like.",
        "",
        "| connections | placement | floor TCP | floor UNIX | floor TCP / policyd-spf warm | ours warm TCP, % of floor TCP"
        " | ours warm UNIX, % of floor UNIX | driver CPU per request, floor TCP |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for n, place in runs:
        ft, fu = f"floor {n} tcp {place}", f"floor {n} unix {place}"
        ot, ou = f"ours warm {n} tcp {place}", f"ours warm {n} unix {place}"
        lines.append(
            row(
                conns(n),
                PLACE_LABEL[place],
                rng(ft),
                rng(fu),
                f"{ratio(ft, f'policyd-spf warm {n} pipe {place}'):.1f}x",
                f"{100 * ratio(ot, ft):.0f} %",
                f"{100 * ratio(ou, fu):.0f} %" if have(ou) else "skipped",
                f"{med(f'{ft} drv'):.1f} us",
            )
        )
    lines += [
        "",
        "Why two placements. Postfix asks lock-step: on one connection the client and the server never run at",
        "once; each request wakes the server and each answer wakes the client. When the OS puts the two on",
        "different CPUs, every wake-up crosses CPUs, and on this VM that costs tens of microseconds of CPU a",
        "hop (an earlier measurement on this VM: about 30 us), whoever answers: the same cost for every server,",
        "and most of a warm answer's. Where the OS puts them is the scheduler's choice, and it changes with",
        "what else runs (the scheduler tends to wake a task on an idle CPU, which on 2 CPUs is the other one).",
        f"In this run, round by round, the floor's server and the driver spent {floor_pair('os')} us of CPU per",
        f"request together placed by the OS, {floor_pair('pin')} us pinned. Pinned to one CPU, the wake-ups stay",
        "there and the rates show the servers' own work. Both rows are measured, each with its verdict. Placed by",
        "the OS, the floor itself (a server that does no work) reached"
        f" {ratio('floor one tcp os', 'policyd-spf warm one pipe os'):.1f}x policyd-spf's warm rate over TCP and"
        f" {ratio('floor one unix os', 'policyd-spf warm one pipe os'):.1f}x over UNIX: the most",
        "any server could show there. Postfix's smtpd is a cheap C client, and where its process and the policy",
        "server's run is the kernel's choice.",
        "",
        'Our worker runs with `log.level = "warning"` above: no line per check. With the default, "info", every',
        "check (a reused one too) writes its line (batched, to a file here): warm on 1 connection over TCP,",
        f"placed by the OS, that gives {rng('ours warm one logged')} requests/s at"
        f" {med('ours warm one logged cpu'):.1f} us of CPU per request"
        f" ({ratio('ours warm one logged', 'policyd-spf warm one pipe os'):.1f}x policyd-spf's warm rate).",
        "",
        "Warm does not mean the same work (shared peer-perf notes the same): ours reuses the check's result while",
        "every DNS answer it rests on is cached; policyd-spf's dnspython cache answers every lookup, but it",
        "evaluates SPF (HELO and MAIL FROM) on every request.",
        "",
        "rspamd asking after Postfix (the plugin's HTTP call, header block included, for 200 messages",
        f"whose policy request was just checked): {med('rspamd after policy, DNS questions'):.0f} DNS questions;"
        f" the second check takes {med('rspamd check ms (second)'):.2f} ms in the worker (median; the",
        f"first, Postfix's, cold: {med('policy check ms (first, cold)'):.2f} ms), as the check log line's ms= says.",
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small counts, one round, no file written")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    size = Sizes(args.quick)
    rounds = 1 if args.quick else args.rounds
    started = time.strftime("%Y-%m-%d %H:%M", time.gmtime())
    t0 = time.monotonic()
    peers.ensure_policyd_venv()  # before knot starts: a first install takes a while
    results = []
    skipped: dict[str, str] = {}
    for _ in range(rounds):
        with knot(zones(size.domains())) as (_, kport, work):
            results.append(measure(kport, work, size, skipped))
        print({k: round(v, 1) for k, v in results[-1].items()}, flush=True)
    text = report(results, skipped, started, time.monotonic() - t0)
    print(text)
    if not args.quick:
        (HERE / "RESULTS-postfix.md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
