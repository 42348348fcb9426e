"""Where the plugin's rspamd CPU goes on a cold scan: variants of it side by side, the way rspamd_cost.py measures.

    .venv/bin/python bench/lua_side.py [--rounds N] [--scans N] [--plugin NAME=PATH ...]
    .venv/bin/python bench/lua_side.py --rounds 4 --timed t=shipped \
        --variant "cold, cache on|t||worker" --variant "floor|t|cache_size = 0;|none:0"

Each variant is an rspamd 3.4 instance (one normal worker) loading a plugin
(the shipped one, or a copy given with --plugin) with some settings, against
a server: the real worker (knot with the bench's registry behind it), or
bench/_bare.py's fixed slim reply (with a max-age, or with a cold QR1
check's two DNS questions asked first).  Every block sends cold QR1 scans
(an ID never seen before each) at 500/s; the table gives each variant's
rspamd CPU per scan minus a bare rspamd's in the same round (median of the
rounds), and the server's CPU per scan.  A copy made with --timed also logs
the CPU time of the plugin's own synchronous parts (timed()), printed after
the table: the plugin's share of what rspamd spends, without the noise a
shared machine puts in a process's total.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import rspamd_cost as cost  # noqa: E402
import run as bench  # noqa: E402
from _knot import knot  # noqa: E402

SHIPPED = ROOT / "lua_shim" / "regcheck.lua"

# name: (plugin, settings, server); servers: "worker", or a bare server "MODE:MAX_AGE"
VARIANTS = {
    "shipped, cache on, worker": ("shipped", "", "worker"),
    "shipped, cache off, worker": ("shipped", "cache_size = 0;", "worker"),
    "shipped, cache off, bare max-age 0": ("shipped", "cache_size = 0;", "none:0"),
    "shipped, cache on, bare max-age 0": ("shipped", "", "none:0"),
    "shipped, cache on, bare max-age 3599": ("shipped", "", "none:3599"),
    "shipped, cache off, bare + DNS (pool)": ("shipped", "cache_size = 0;", "pool:0"),
}


# Timers for timed(): the helpers go after the plugin's requires; (anchor, replacement) pairs.
TIMED_HELPERS = """local T = { n = 0 }
local function tick() return os.clock() end
local function acc(name, dt)
  local a = T[name]
  if not a then a = {}; T[name] = a end
  a[#a + 1] = dt
end
local function report()
  T.n = T.n + 1
  if T.n % 2000 ~= 0 then return end
  local parts = {}
  for name, a in pairs(T) do
    if type(a) == 'table' then
      table.sort(a)
      local s = 0
      for _, x in ipairs(a) do s = s + x end
      parts[#parts + 1] = string.format('%s p50=%.1fus mean=%.1fus', name, a[math.floor(#a / 2) + 1] * 1e6, s / #a * 1e6)
      T[name] = {}
    end
  end
  table.sort(parts)
  rspamd_logger.warnx(rspamd_config, 'TIMING heapKB=%s %s', math.floor(collectgarbage('count')), table.concat(parts, '; '))
end
"""
TIMED_EDITS = [
("local function regcheck_cb(task)\n", "local function regcheck_cb_inner(task)\n"),
("""local function config_fail_cb(task)""", """local function regcheck_cb(task)
  local t0 = tick()
  regcheck_cb_inner(task)
  acc('cb', tick() - t0)
end

local function config_fail_cb(task)"""),
("""    local function on_reply(err, code, reply_body, reply_headers)
""", """    local function on_reply(err, code, reply_body, reply_headers)
      local r0 = tick()
"""),
("""      local ok, obj = lib.decode(reply_body, (reply_headers or {})['content-type'])
      if not ok then
        fail(task, obj)
        return
      end
      local entry = apply(task, obj)
      if entry then
        remember(task, env, key, entry)
      end
    end
""", """      local d0 = tick()
      local ok, obj = lib.decode(reply_body, (reply_headers or {})['content-type'])
      acc('reply.decode', tick() - d0)
      if not ok then
        fail(task, obj)
        return
      end
      d0 = tick()
      local entry = apply(task, obj)
      acc('reply.apply', tick() - d0)
      d0 = tick()
      if entry then
        remember(task, env, key, entry)
      end
      acc('reply.remember', tick() - d0)
      acc('reply', tick() - r0)
      report()
    end
    local h0 = tick()
"""),
("""    if not queued then
      fail(task, 'cannot send the request to ' .. where)
    end""", """    acc('cb.http_request', tick() - h0)
    if not queued then
      fail(task, 'cannot send the request to ' .. where)
    end"""),
("""local function ask_worker(task, env, key)
""", """local function ask_worker(task, env, key)
  local a0 = tick()
"""),
("""  ask(settings.upstreams:get_upstream_round_robin(), settings.retransmits)
end""", """  ask(settings.upstreams:get_upstream_round_robin(), settings.retransmits)
  acc('cb.ask_worker', tick() - a0)
end"""),
]


def timed(src: str) -> str:
    """A copy of plugin source *src* that logs (warning level, "TIMING") the median and mean CPU time
    (os.clock) of its synchronous parts every 2,000 replies: the callback (cb), its request
    (cb.ask_worker, cb.http_request), the reply (reply: decode, apply, remember) and the Lua heap."""
    anchor = 'local ts = require("tableshape").types\n'
    for a, b in [(anchor, anchor + TIMED_HELPERS), *TIMED_EDITS]:
        if src.count(a) != 1:
            raise ValueError(f"the plugin has changed: cannot place a timer at {a[:60]!r}")
        src = src.replace(a, b)
    return src


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--scans", type=int, default=1000)
    p.add_argument("--rate", type=float, default=500.0)
    p.add_argument("--plugin", action="append", default=[], help="NAME=PATH: a plugin copy variants can name")
    p.add_argument("--timed", action="append", default=[],
                   help="NAME=PATH: a copy of PATH with timers (timed()); 'shipped' for the shipped plugin")
    p.add_argument("--variant", action="append", default=[],
                   help="LABEL|PLUGIN|SETTINGS|SERVER: a variant of your own (replaces the default set)")
    p.add_argument("--also", action="store_true", help="--variant adds to the default set instead")
    args = p.parse_args()
    plugins = {"shipped": SHIPPED, **{k: Path(v).resolve() for k, v in (x.split("=", 1) for x in args.plugin)}}
    copies = Path(tempfile.mkdtemp(prefix="regcheck-timed-"))
    for name, path in (x.split("=", 1) for x in args.timed):
        (copies / name).mkdir()  # rspamd names a module after its file: each copy is regcheck.lua
        plugins[name] = copies / name / "regcheck.lua"
        plugins[name].write_text(timed((SHIPPED if path == "shipped" else Path(path)).read_text()))
    variants = {} if args.variant and not args.also else dict(VARIANTS)
    for text in args.variant:
        label, plugin, settings, server = text.split("|")
        variants[label] = (plugin, settings, server)

    work = Path(tempfile.mkdtemp(prefix="regcheck-luaside-"))
    procs: list[subprocess.Popen[bytes]] = []
    insts: dict[str, cost.Rspamd] = {}
    print(f"generating zones ({bench.SIZES['default'].ids} IDs) ...", flush=True)
    with knot(bench.zones(bench.SIZES["default"])) as (_, kport, _):
        worker = bench.Worker(work, "worker", kport)
        try:
            servers: dict[str, tuple[int, list[int]]] = {"worker": (worker.port, bench.descendants(worker.proc.pid))}
            for _, _, server in variants.values():
                if server not in servers:
                    mode, _, max_age = server.partition(":")
                    port = bench.free_port()
                    proc = subprocess.Popen([sys.executable, str(HERE / "_bare.py"), str(port), mode, str(kport),
                                             max_age or "0"])
                    procs.append(proc)
                    bench.wait_port(port, proc, 30)
                    servers[server] = (port, [proc.pid])
            insts["base"] = cost.Rspamd(work, "base", kport, "")
            for n, (label, (plugin, settings, server)) in enumerate(variants.items()):
                insts[label] = cost.Rspamd(
                    work, f"v{n}", kport,
                    f'modules {{ path = "{plugins[plugin]}"; }}\n.include "{ROOT}/rules/regcheck_group.conf"\n'
                    f'regcheck {{ servers = "127.0.0.1:{servers[server][0]}"; timeout = 4s; {settings} }}\n')
            ids = cost.Ids()
            blocks: dict[str, list[tuple[float, float]]] = {}
            for r in range(args.rounds):
                base = cost.run_block(insts["base"], [], "cold-qr1", ids, args.rate, args.scans, lambda: 0)
                for label, (_, _, server) in variants.items():
                    b = cost.run_block(insts[label], servers[server][1], "cold-qr1", ids, args.rate, args.scans,
                                       lambda: 0)
                    blocks.setdefault(label, []).append((b.rspamd_us - base.rspamd_us, b.worker_us))
                    print(f"round {r + 1} {label}: rspamd added {b.rspamd_us - base.rspamd_us:.0f} us, "
                          f"server {b.worker_us:.0f} us", flush=True)
            for label, inst in insts.items():  # what an instrumented copy logged (lines with TIMING)
                timing = [x for x in (inst.dir / "rspamd.log").read_text().splitlines() if "TIMING" in x]
                for line in timing[-2:]:
                    print(f"{label}: {line[line.find('TIMING'):]}")
        finally:
            for inst in insts.values():
                inst.stop()
            worker.stop()
            for proc in procs:
                proc.send_signal(signal.SIGTERM)
                proc.wait(10)
    shutil.rmtree(work, ignore_errors=True)
    shutil.rmtree(copies, ignore_errors=True)
    print(f"\n| variant ({args.rounds} rounds of {args.scans} cold scans at {args.rate:.0f}/s) "
          "| rspamd CPU added (median) | spread | server CPU |")
    print("|---|---|---|---|")
    for label, got in blocks.items():
        added = sorted(x for x, _ in got)
        print(f"| {label} | {statistics.median(added):.0f} us | {added[0]:.0f}-{added[-1]:.0f} | "
              f"{statistics.median(y for _, y in got):.0f} us |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
