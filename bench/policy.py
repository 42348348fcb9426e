"""Postfix policy requests/s: our policy listener beside spf-engine's policyd-spf, same machine, same run.

    .venv/bin/python bench/policy.py            # about a minute on 2 cores; writes bench/RESULTS-postfix.md
    .venv/bin/python bench/policy.py --quick    # seconds, smaller counts (no file written)

Both servers get the same Postfix policy requests (protocol_state=RCPT, a
unique ``instance`` per request so neither reuses a per-message verdict),
from the same asyncio driver, lock-step per connection: send a request, read
the answer, send the next.

- **ours**: `rspamd-regcheck serve` with a worker process per core, ``[policy_server]``
  on a loopback port; the check is the whole seed check (registry record,
  ratings, SPF for the MAIL FROM), answered ``PREPEND X-Regcheck: ... SPF pass``.
- **policyd-spf** (spf-engine, its own venv under ``.cache/``, bench/peers.py):
  the way Postfix runs it, one process per connection (spawn(8)), over its
  stdin/stdout; packaged default config; dnspython pointed at the same knot,
  with an LRU cache for the warm runs (stock policyd-spf has none).

Data: bench/spf_driver.py's zone (the shapes of shared peer-perf: 2-4 counted
SPF lookups, 4-6 questions, pass via ``mx``) plus a registry record for the
senders' Registered ID.  Cold: every request names a domain never asked
before (in that process).  Warm: a pool of 100 domains asked once untimed,
then again and again.  "one" is one connection; "many" is C connections
(C processes for policyd-spf).  Start-up is never timed.

Beside each rate, the CPU time the answering processes spent per request
(from /proc/PID/task/*/schedstat: our worker processes, policyd-spf's
processes, the floor's server; not the driver's, not knot's): it moves
less with the load of a shared machine than a rate does.

It also measures the case docs/postfix.md describes: rspamd asking the
worker (over HTTP, as the plugin does) about a message Postfix's policy
request already checked: how many DNS questions that second check asks, and
its rate.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import re
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import peers  # noqa: E402
from _knot import free_port, knot  # noqa: E402
from spf_driver import ORIGIN, zone  # noqa: E402

REGISTRY = "registry.bench"
CLIENT = "192.0.2.10"
POOL = 100  # warm domains
MANY = 8  # connections (policyd-spf: processes) in the "many" runs
WORKERS = os.cpu_count() or 1  # our worker processes: server.workers as an admin sets it, one per core


# The floor: an asyncio policy server (uvloop, as the worker) that reads up to the empty line
# and answers a fixed PREPEND, with no parsing and no check: what the driver and the loopback
# round trip alone allow.
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
    server = await asyncio.get_running_loop().create_server(P, "127.0.0.1", int(sys.argv[1]))
    await server.serve_forever()
uvloop.run(main())
"""


def zones(n: int) -> dict[str, str]:
    soa = "$TTL 3600\n@ IN SOA ns1 hostmaster 1 3600 600 86400 3600\n@ IN NS ns1\nns1 IN A 127.0.0.1\n"
    # the senders dN.spf.bench.test all have the Registered ID bench.test
    registry = f'$ORIGIN {REGISTRY}.\n{soa}bench.test IN TXT "v=reg1 svc=S1:A,M2:A,H1:B meth=SPF:30"\n'
    return {REGISTRY: registry, ORIGIN: zone(n)}


def request(domain: str, instance: str) -> bytes:
    return (
        "request=smtpd_access_policy\nprotocol_state=RCPT\nprotocol_name=ESMTP\n"
        f"client_address={CLIENT}\nclient_name=mx.{domain}\nhelo_name=mx.{domain}\n"
        f"sender=user@{domain}\nrecipient=rcpt@example.net\ninstance={instance}\nqueue_id=\n\n"
    ).encode()


class Channel:
    """One lock-step policy conversation over a reader and a writer (a socket or a process's pipes)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter | asyncio.StreamWriter, expect: str):
        self.reader, self.writer, self.expect = reader, writer, expect
        self.sent = 0
        self.pids: list[int] = []  # the processes answering it (policyd-spf's), for its CPU time

    async def ask(self, domain: str) -> None:
        self.sent += 1
        self.writer.write(request(domain, f"b{os.getpid()}.{id(self)}.{self.sent}"))
        answer = await self.reader.readuntil(b"\n\n")
        if self.expect not in answer.decode(errors="replace"):
            raise RuntimeError(f"{domain}: unexpected answer {answer!r}")


async def ours_channel(port: int) -> tuple[Channel, Callable[[], Awaitable[None]]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    async def close() -> None:
        writer.close()

    return Channel(reader, writer, "SPF pass"), close


async def policyd_channel(
    python: Path, kport: int, cache: bool, stderr: int
) -> tuple[Channel, Callable[[], Awaitable[None]]]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    proc = await asyncio.create_subprocess_exec(
        str(python),
        "-c",
        peers._WRAPPER,
        str(kport),
        "1" if cache else "0",
        str(peers._policyd_config()),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=stderr,
        env=env,
        limit=1 << 20,
    )
    assert proc.stdin is not None and proc.stdout is not None
    channel = Channel(proc.stdout, proc.stdin, "Received-SPF: Pass")
    channel.pids = [proc.pid]

    async def close() -> None:
        assert proc.stdin is not None
        proc.stdin.close()
        await proc.wait()

    # 127.0.0.1 is in its default skip_addresses: an answer without DNS, so start-up is not timed
    proc.stdin.write(request("localhost.invalid", "warmup").replace(CLIENT.encode(), b"127.0.0.1"))
    await proc.stdout.readuntil(b"\n\n")
    return channel, close


async def drive(channels: list[Channel], work: list[list[str]]) -> float:
    """Each channel asks its list of domains in order; all channels at once.  Returns requests/s."""

    async def one(ch: Channel, domains: list[str]) -> None:
        for d in domains:
            await ch.ask(d)

    t0 = time.perf_counter()
    await asyncio.gather(*(one(ch, w) for ch, w in zip(channels, work, strict=True)))
    return sum(len(w) for w in work) / (time.perf_counter() - t0)


def cpu_ns(pids: list[int]) -> int:
    """CPU time the processes *pids* have run, all their threads, in nanoseconds."""
    total = 0
    for pid in pids:
        for stat in Path(f"/proc/{pid}/task").glob("*/schedstat"):
            try:
                total += int(stat.read_text().split()[0])
            except (OSError, ValueError, IndexError):  # a thread that just ended
                pass
    return total


def children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


async def timed(
    out: dict[str, float], name: str, channels: list[Channel], work: list[list[str]], pids: list[int]
) -> None:
    """Drive *work* and record its rate as *name*, and the CPU time *pids* spent per request as *name* cpu."""
    before = cpu_ns(pids)
    out[name] = await drive(channels, work)
    out[f"{name} cpu"] = (cpu_ns(pids) - before) / 1000 / sum(len(w) for w in work)


def names(lo: int, hi: int) -> list[str]:
    return [f"d{i:05d}.{ORIGIN}" for i in range(lo, hi)]


def split(domains: list[str], parts: int) -> list[list[str]]:
    return [domains[i::parts] for i in range(parts)]


class Worker:
    def __init__(self, work: Path, kport: int, level: str = "warning", workers: int = WORKERS):
        self.port, self.http_port = free_port(), free_port()
        conf = work / f"policy-{level}.toml"
        conf.write_text(
            f'[registry]\nzones = ["{REGISTRY}"]\n[dns]\nnameservers = ["127.0.0.1"]\nport = {kport}\n'
            f'[server]\nworkers = {workers}\n[policy]\nlocal_networks = []\n[log]\nlevel = "{level}"\n'
            f'[policy_server]\nlisten = "127.0.0.1:{self.port}"\nmode = "enforce"\n'
        )
        self.log_path = work / f"policy-{level}.log"
        self.log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        serve = [sys.executable, "-m", "rspamd_regcheck", "--config", str(conf), "serve"]
        listen = ["--listen", f"127.0.0.1:{self.http_port}"]
        self.proc = subprocess.Popen([*serve, *listen], stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"worker did not start: {self.log_path.read_text()}") from None
                time.sleep(0.1)

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


async def measure(
    kport: int, work: Path, n_ours: tuple[int, int], n_peer: tuple[int, int], reps: tuple[int, int]
) -> dict[str, float]:
    """Rates by name.  Domains are handed out so that no cold run repeats one."""
    out: dict[str, float] = {}
    cold_one, cold_many = n_ours
    peer_one, peer_many = n_peer
    warm_reps_ours, warm_reps_peer = reps
    pool = names(0, POOL)
    nxt = POOL

    def take(n: int) -> list[str]:
        nonlocal nxt
        nxt += n
        return names(nxt - n, nxt)

    port = free_port()
    bare = subprocess.Popen([sys.executable, "-c", BARE, str(port)])
    try:
        for _ in range(100):
            try:
                ch, close = await ours_channel(port)
                break
            except OSError:
                await asyncio.sleep(0.1)
        await timed(out, "floor one", [ch], [pool * warm_reps_ours], [bare.pid])
        await close()
        pairs = [await ours_channel(port) for _ in range(MANY)]
        await timed(out, "floor many", [c for c, _ in pairs], [pool * warm_reps_ours] * MANY, [bare.pid])
        for _, close in pairs:
            await close()
    finally:
        bare.terminate()
        bare.wait(10)

    worker = Worker(work, kport)
    try:
        ch, close = await ours_channel(worker.port)
        pids = children(worker.proc.pid)  # the worker processes
        await timed(out, "ours cold one", [ch], [take(cold_one)], pids)
        await drive([ch], [pool])  # fill the caches
        await timed(out, "ours warm one", [ch], [pool * warm_reps_ours], pids)
        await close()
        pairs = [await ours_channel(worker.port) for _ in range(MANY)]
        chans = [c for c, _ in pairs]
        await timed(out, "ours cold many", chans, split(take(cold_many), MANY), pids)
        await drive(chans, [pool] * MANY)  # every worker process's caches, untimed
        await timed(out, "ours warm many", chans, [pool * warm_reps_ours] * MANY, pids)
        for _, close in pairs:
            await close()
    finally:
        worker.stop()

    # rspamd after Postfix: the same envelopes over HTTP, as the plugin sends them, to a worker
    # logging each check (its time in the worker: the log line's ms=)
    # one worker process: the DNS cache is per process (docs/postfix.md)
    worker = Worker(work, kport, level="info", workers=1)
    try:
        fresh = take(200)
        ch, close = await ours_channel(worker.port)
        await drive([ch], [fresh])
        await close()
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
        ch, close = await ours_channel(worker.port)
        await drive([ch], [pool])
        await timed(out, "ours warm one logged", [ch], [pool * warm_reps_ours], children(worker.proc.pid))
        await close()
    finally:
        worker.stop()

    python = peers.ensure_policyd_venv()
    with tempfile.TemporaryFile() as err:
        fd = err.fileno()
        for cache in (False, True):
            label = "warm" if cache else "cold"
            ch, close = await policyd_channel(python, kport, cache, fd)
            if cache:
                await drive([ch], [pool])
                await timed(out, f"policyd-spf {label} one", [ch], [pool * warm_reps_peer], ch.pids)
            else:
                await timed(out, f"policyd-spf {label} one", [ch], [take(peer_one)], ch.pids)
            await close()
            pairs = [await policyd_channel(python, kport, cache, fd) for _ in range(MANY)]
            chans = [c for c, _ in pairs]
            pids = [pid for c in chans for pid in c.pids]
            if cache:
                await drive(chans, [pool] * MANY)
                await timed(out, f"policyd-spf {label} many", chans, [pool * warm_reps_peer] * MANY, pids)
            else:
                await timed(out, f"policyd-spf {label} many", chans, split(take(peer_many), MANY), pids)
            for _, close in pairs:
                await close()
    return out


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


def report(rounds: list[dict[str, float]], started: str, seconds: float) -> str:
    def med(key: str) -> float:
        values = sorted(r[key] for r in rounds)
        return values[len(values) // 2]

    def rng(key: str) -> str:
        values = [r[key] for r in rounds]
        return f"{med(key):,.0f} ({min(values):,.0f}-{max(values):,.0f})"

    def times(a: str, b: str, scale: float = 1.0) -> str:
        values = sorted(r[a] / r[b] * scale for r in rounds)
        return f"{values[len(values) // 2]:.1f}" if scale == 1.0 else f"{values[len(values) // 2]:.0f}"

    lines = [
        "# Postfix policy requests/s: rspamd-regcheck beside policyd-spf",
        "",
        f"Written by `bench/policy.py` at {started} UTC ({seconds:.0f} s, {len(rounds)} rounds; median, range in",
        f"brackets). Host: {platform.node()}, {os.cpu_count()} CPUs, Python {platform.python_version()}; the",
        "driver, the servers and knot share the machine. Method and data: the docstring of bench/policy.py.",
        "",
        f"| run | rspamd-regcheck ({WORKERS} worker processes) | policyd-spf (1 process per connection) | ratio | target | |",
        "|---|---|---|---|---|---|",
    ]
    for temp, target in (("warm", 10.0), ("cold", 2.0)):
        for conns in ("one", "many"):
            ours, peer = f"ours {temp} {conns}", f"policyd-spf {temp} {conns}"
            ratio = sorted(r[ours] / r[peer] for r in rounds)[len(rounds) // 2]
            verdict = "PASS" if ratio >= target else "FALLS SHORT"
            label = f"{temp}, {'1 connection' if conns == 'one' else f'{MANY} connections'}"
            lines.append(f"| {label} | {rng(ours)} | {rng(peer)} | {ratio:.1f}x | >= {target:.0f}x | {verdict} |")
    lines += [
        "",
        "CPU time per request, in microseconds, of the processes that answer (median of the rounds; not the",
        "driver's, not knot's): it moves less with the machine's load than the rates above.",
        "",
        "| run | rspamd-regcheck | policyd-spf | ratio | the floor's server |",
        "|---|---|---|---|---|",
    ]
    for temp in ("warm", "cold"):
        for conns in ("one", "many"):
            ours, peer = f"ours {temp} {conns} cpu", f"policyd-spf {temp} {conns} cpu"
            label = f"{temp}, {'1 connection' if conns == 'one' else f'{MANY} connections'}"
            floor = f"{med(f'floor {conns} cpu'):.1f}" if temp == "warm" else ""
            lines.append(f"| {label} | {med(ours):.1f} | {med(peer):.1f} | {times(peer, ours)}x | {floor} |")
    lines += [
        "",
        'Our worker runs with `log.level = "warning"` above: no line per check. With the default, "info", every',
        "check (a reused one too) writes its line (batched, to a file here): warm on 1 connection that gives"
        f" {rng('ours warm one logged')} requests/s at {med('ours warm one logged cpu'):.1f} us of CPU per request"
        f" ({times('ours warm one logged', 'policyd-spf warm one')}x policyd-spf's warm rate).",
        "",
        "Warm does not mean the same work (shared peer-perf notes the same): ours reuses the check's result while",
        "every DNS answer it rests on is cached; policyd-spf's dnspython cache answers every lookup, but it",
        "evaluates SPF (HELO and MAIL FROM) on every request.",
        "",
        "The floor (a bare asyncio server answering a fixed PREPEND without parsing or checking, same",
        f"driver): {rng('floor one')} requests/s on 1 connection, {rng('floor many')} on {MANY}. On one",
        "connection every request waits for two process wake-ups on shared cores, whoever answers.",
        f"That floor is {times('floor one', 'policyd-spf warm one')}x policyd-spf's warm rate on 1 connection and"
        f" {times('floor many', 'policyd-spf warm many')}x on {MANY}: a server that cost nothing at all would",
        "reach that, no more. Ours reaches"
        f" {times('ours warm one', 'floor one', 100)} % and {times('ours warm many', 'floor many', 100)} % of the floor.",
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
    if args.quick:
        n_ours, n_peer, reps, rounds = (300, 400), (60, 80), (5, 2), 1
    else:
        n_ours, n_peer, reps, rounds = (3000, 6000), (500, 800), (40, 10), args.rounds
    per_round = POOL + sum(n_ours) + 200 + sum(n_peer)
    started = time.strftime("%Y-%m-%d %H:%M", time.gmtime())
    t0 = time.monotonic()
    peers.ensure_policyd_venv()  # before knot starts: a first install takes a while
    results = []
    for _ in range(rounds):
        with knot(zones(per_round)) as (_, kport, work):
            results.append(asyncio.run(measure(kport, work, n_ours, n_peer, reps)))
        print({k: round(v) for k, v in results[-1].items()}, flush=True)
    text = report(results, started, time.monotonic() - t0)
    print(text)
    if not args.quick:
        (HERE / "RESULTS-postfix.md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
