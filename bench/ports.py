"""What the pool of source ports costs: cold QR1 checks/s with the pool beside one port, same run.

    .venv/bin/python bench/ports.py [--seconds S] [--rounds N] [--out DIR]

knot serves the benchmark's registry (bench/run.py's zones); two workers run
side by side, one with the default pool (``dns.sockets = 64``, a new port
every ``dns.rotate_every = 4`` tries), one with ``dns.sockets = 1`` that
never rotates (one port for the worker's life, the client as it was).  Each
round drives both with wrk, cold QR1 checks (a new ID and client address
each time: two DNS questions, registry and DNSBL), in turns; the order
alternates between rounds.  Each worker sees each ID once.  Reported: the
median rate of each and their ratio (target >= 0.90), and the worker's CPU
time per check read from /proc.  The section "Source-port pool" of
bench/RESULTS.md is written (bench/run.py keeps it when it rewrites the file).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import run as bench  # noqa: E402
from _knot import knot  # noqa: E402

TARGET = 0.90
FIRST = 100  # the cold IDs start here (as in run.py)
SECTION = "## Source-port pool"
MODES = {
    "pool": ("dns.sockets = 64, rotate_every = 4 (default)", ""),
    "one": ("dns.sockets = 1, never rotated", "sockets = 1\nrotate_every = 10000"),
}


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=4.0, help="seconds per wrk run")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", type=Path, default=HERE, help="where RESULTS.md is")
    args = p.parse_args()
    sizes = bench.SIZES["default"]
    per_round = int(min(20_000, (sizes.ids // 2 - FIRST) // args.rounds))
    work = Path(tempfile.mkdtemp(prefix="regcheck-ports-"))
    rates: dict[str, list[float]] = {m: [] for m in MODES}
    cpu: dict[str, list[float]] = {m: [] for m in MODES}
    started = time.monotonic()
    with knot(bench.zones(sizes)) as (_, kport, _):
        workers = {m: bench.Worker(work, m, kport, dns_extra=extra) for m, (_, extra) in MODES.items()}
        try:
            for w in workers.values():  # warm up code paths and sockets, on IDs the rounds do not use
                bench.wrk(w.port, work, "qr1", 0, 100, 1, sizes.connections)
            for r in range(args.rounds):
                first = FIRST + r * per_round
                order = list(MODES) if r % 2 == 0 else list(reversed(MODES))
                for mode in order:
                    w = workers[mode]
                    pid = w.worker_pid()
                    before = cpu_seconds(pid)
                    rate, _ = bench.wrk(w.port, work, "qr1", first, per_round, args.seconds, sizes.connections)
                    if rate * args.seconds > per_round:
                        raise RuntimeError("a run asked for more IDs than it has: lower --seconds")
                    rates[mode].append(rate)
                    cpu[mode].append((cpu_seconds(pid) - before) / (rate * args.seconds) * 1e6)
                    print(f"round {r + 1} {mode}: {rate:.0f} checks/s, {cpu[mode][-1]:.0f} us CPU/check", flush=True)
        finally:
            for w in workers.values():
                w.stop()
    pool, one = statistics.median(rates["pool"]), statistics.median(rates["one"])
    ratio = pool / one
    verdict = "PASS" if ratio >= TARGET else "FALLS SHORT"
    lines = [
        "",
        SECTION,
        "",
        f"- Date: {time.strftime('%Y-%m-%d %H:%M %Z')}; command: `bench/ports.py --seconds {args.seconds:g}"
        f" --rounds {args.rounds}` ({time.monotonic() - started:.0f} s)",
        "- Cold QR1 checks (new ID and client address each time; registry and DNSBL questions),",
        f"  wrk with {sizes.connections} connections, the two workers in turns, {args.rounds} rounds; medians.",
        f"- Machine: {os.cpu_count()} cores shared with the load generator and knot; load average"
        f" {os.getloadavg()[0]:.1f} at the end (rates move with it; CPU per check moves less).",
        "",
        "| worker | cold QR1 checks/s | CPU per check | each round |",
        "|---|---|---|---|",
    ]
    for mode, (label, _) in MODES.items():
        rounds = ", ".join(f"{x:.0f}" for x in rates[mode])
        lines.append(f"| {label} | {statistics.median(rates[mode]):.0f}/s | {statistics.median(cpu[mode]):.0f} us"
                     f" | {rounds} |")
    lines += ["", f"Pool / one port: **{ratio:.2f}** (target >= {TARGET:.2f}): {verdict}", ""]
    text = "\n".join(lines)
    print(text)
    results = args.out / "RESULTS.md"
    old = results.read_text() if results.exists() else ""
    head, found, rest = old.partition("\n" + SECTION)
    tail = rest[rest.find("\n## "):] if found and "\n## " in rest else ""
    results.write_text(head.rstrip("\n") + "\n" + text + tail)
    return 0 if ratio >= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
