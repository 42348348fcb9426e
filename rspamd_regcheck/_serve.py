"""``rspamd-regcheck serve``: a supervisor and its worker processes.

The supervisor checks the configuration and the listen address, then forks
``server.workers`` workers.  Each worker listens on the same address with
SO_REUSEPORT (the kernel spreads connections among them) and runs the
asyncio server.  A policy listener on a UNIX socket is the exception: the
supervisor binds it once and every worker accepts on the socket it inherits
(`_unixsock`); the supervisor removes its file when it stops.  The supervisor:

- restarts a worker that dies (after a pause when workers die young, so a
  crash loop does not spin);
- on SIGTERM or SIGINT, tells the workers to stop: they stop accepting,
  let running checks answer (at most `DRAIN_SECONDS`), then exit;
- on SIGHUP, reads and judges the configuration again, as ``config check``
  does (`_validate.load_checked`): a bad one, whatever the file holds, is
  logged in one line and the old one kept; a good one is handed to the workers
  as it was judged (`Published`: they do not read the file again, so they run
  exactly what the supervisor accepted); each reloads in place, its
  connections untouched, and the number of workers follows ``server.workers``.
  A changed listen address (or a UNIX socket's mode or group) needs a restart, and says so.

With ``server.metrics_listen``, each worker also listens there for
Prometheus: ``GET /metrics`` only, no secret asked (the address must be
loopback).  On the main address ``/metrics`` takes the secret as ``Password``
or as ``Authorization: Bearer``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import ipaddress
import logging
import os
import pickle
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from ._check import Checker, make_resolver
from ._http import App, Limits, start_server
from ._loop import run_loop
from ._metrics import ENV as METRICS_ENV
from ._metrics import mark_dead
from ._policy_server import PolicyServer, start_policy_server
from ._unixsock import UnixAddress, UnixListener
from ._validate import Checked
from .config import Config, hostport
from .errors import ConfigError, ListenError, RegcheckError

log = logging.getLogger("rspamd_regcheck.serve")
DRAIN_SECONDS = 10.0  # checks still running at shutdown get this long to answer
YOUNG_SECONDS = 2.0  # a worker dying sooner than this after its start is restarted after a pause
MAX_RESTART_PAUSE = 10.0
SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD)

Loader = Callable[[], Checked]
PR_SET_PDEATHSIG = 1  # prctl(2): the signal a process gets when its parent dies


def limits_of(config: Config) -> Limits:
    return Limits(
        body=config.body_limit,
        headers=config.max_headers,
        header_bytes=config.max_header_bytes,
        request_timeout=config.request_timeout,
        idle_timeout=config.idle_timeout,
        connections=config.max_connections,
    )


def is_loopback(host: str) -> bool:
    return ipaddress.ip_address(host).is_loopback


def check_exposure(config: Config, host: str) -> None:
    """Refuse to listen beyond loopback without a shared secret (`_validate.check_config` says so
    for ``server.listen``; this is for a host given apart from the configuration).

    :raises ConfigError: naming ``server.secret``.
    """
    if not is_loopback(host) and not config.secret:
        raise ConfigError(
            "server.secret",
            f"not set, and {host} is beyond loopback: set server.secret or server.secret_file",
        )


def listening_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket with SO_REUSEPORT, so every worker can have its own."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


# -- the worker ------------------------------------------------------------------------------


GC_YOUNG = 10_000  # allocations between young collections (Python's default: 700)


def tune_gc() -> None:
    """Spare the cyclic collector work that finds nothing.

    What exists when the worker is ready (code, the public suffix list, the
    configuration) lives as long as the worker: frozen, collections no longer
    walk it.  Checks allocate many short-lived objects and make few cycles, so
    the young generation is collected every 10,000 allocations instead of 700.
    Measured on cold checks: 245 -> 233 us of CPU per check.
    """
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG, middle, old)


async def worker_main(
    load: Loader, config: Config, host: str, port: int, policy_sock: socket.socket | None = None
) -> None:
    """One worker: serve until SIGTERM/SIGINT; SIGHUP reloads the configuration in place.

    *policy_sock*: the policy listener's UNIX socket, bound by the supervisor (`_unixsock`);
    a TCP policy listener is made here, as the others are.
    """
    loop = asyncio.get_running_loop()
    checker = Checker(config)
    app = App(checker, limits_of(config), metrics=True, log_mask=config.log_mask_clients)
    server = await start_server(app, host, port, sock=listening_socket(host, port))
    servers = [server]
    if config.metrics_listen is not None:
        mhost, mport = config.metrics_listen
        servers.append(await start_server(app, mhost, mport, sock=listening_socket(mhost, mport), metrics_only=True))
    policy = PolicyServer(app)  # Postfix's policy protocol: a second listener, off by default
    policy_listen = config.policy_server.listen
    policy_server = None
    if isinstance(policy_listen, UnixAddress):
        assert policy_sock is not None, "the supervisor binds a UNIX socket"
        policy_server = await start_policy_server(policy, policy_sock)
    elif policy_listen is not None:
        policy_server = await start_policy_server(policy, listening_socket(*policy_listen))
    tune_gc()
    stop = asyncio.Event()

    def reload() -> None:
        try:
            new = load().config
            new_checker = Checker(new)
        except RegcheckError as exc:
            log.error("reload failed, keeping the running configuration: %s", exc)
            return
        except Exception:  # a bug: the worker keeps serving with what it has (STYLE item 9)
            log.exception("reload failed, keeping the running configuration")
            return
        old = app.checker
        app.checker, app.limits, app.log_mask = new_checker, limits_of(new), new.log_mask_clients
        # Checks already running finish with the old checker; close it once they must be done.
        loop.call_later(old.config.deadline + 1.0, old.close)
        log.info("configuration reloaded")

    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload)
    try:
        await stop.wait()
    finally:
        for each in servers:
            each.close()  # no new connections; open ones are answered, then close
        if policy_server is not None:
            policy_server.close()
        app.draining = True
        if app.active:
            log.info("draining %d check(s)", len(app.active))
            await asyncio.wait(set(app.active), timeout=DRAIN_SECONDS)
        app.close_idle()
        policy.close_idle()
        app.check_log.flush()
        app.metrics.flush()
        app.checker.close()


class Published:
    """The configuration the supervisor accepted, handed to its workers through a file in a
    directory only this user can read (the supervisor's own, removed when it stops)."""

    def __init__(self, directory: str):
        self.path = os.path.join(directory, "config.pickle")

    def publish(self, config: Config) -> None:
        """Write *config* for the workers; they read it on SIGHUP (written whole, then renamed)."""
        partial = self.path + ".new"
        with open(partial, "wb") as fh:
            pickle.dump(config, fh, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(partial, self.path)

    def __call__(self) -> Checked:
        """The worker's loader: the configuration last published."""
        with open(self.path, "rb") as fh:
            return Checked(pickle.load(fh))  # our own file, in our own 0700 directory: trusted


def _run_worker(load: Loader, config: Config, host: str, port: int, policy_sock: socket.socket | None) -> int:
    try:
        run_loop(worker_main(load, config, host, port, policy_sock))
    except Exception:
        log.exception("worker failed")
        return 1
    return 0


# -- the supervisor --------------------------------------------------------------------------


class Supervisor:
    def __init__(
        self,
        load: Loader,
        config: Config,
        host: str,
        port: int,
        published: Published,
        policy_sock: socket.socket | None = None,
    ):
        self.load = load
        self.policy_sock = policy_sock  # a UNIX policy listener's socket, which every worker inherits
        self.published = published
        self.config = config
        self.host, self.port = host, port
        self.children: dict[int, float] = {}  # pid -> start time
        self.pending: list[float] = []  # times at which to start replacement workers
        self.failures = 0
        self.stopping = False

    def spawn(self) -> None:
        supervisor = os.getpid()
        pid = os.fork()
        if pid == 0:  # the worker
            code = 1
            try:
                for sig in SIGNALS:
                    signal.signal(sig, signal.SIG_DFL)
                # A reload signal before the worker is ready must not kill it (it starts with
                # the newest configuration anyway); its event loop handles SIGHUP from then on.
                signal.signal(signal.SIGHUP, signal.SIG_IGN)
                signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)
                _die_with_parent(supervisor)
                code = _run_worker(self.published, self.config, self.host, self.port, self.policy_sock)
            finally:
                logging.shutdown()
                os._exit(code)
        self.children[pid] = time.monotonic()
        log.info("started worker %d", pid)

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            started = self.children.pop(pid, None)
            mark_dead(pid)
            if started is None or self.stopping:
                continue
            lived = time.monotonic() - started
            log.error("worker %d died (%s) after %.1f s; starting another", pid, _describe(status), lived)
            self.failures = self.failures + 1 if lived < YOUNG_SECONDS else 0
            pause = min(MAX_RESTART_PAUSE, 0.5 * 2 ** (self.failures - 1)) if self.failures else 0.0
            self.pending.append(time.monotonic() + pause)

    def start_due(self) -> None:
        now = time.monotonic()
        due = [t for t in self.pending if t <= now]
        self.pending = [t for t in self.pending if t > now]
        for _ in due:
            if len(self.children) < self.config.workers:
                self.spawn()

    def reload(self) -> None:
        try:
            checked = self.load()
            # the address in use until a restart, whatever the file now says
            check_exposure(checked.config, self.host)
        except RegcheckError as exc:
            log.error("reload refused, keeping the running configuration: %s", exc)
            return
        except Exception:  # a bug must not take the supervisor, and so every worker's keeper, down
            log.exception("reload refused, keeping the running configuration")
            return
        new = checked.config
        for warning in checked.warnings:
            log.warning("%s", warning)
        if new.listen != self.config.listen:
            log.warning(
                "server.listen changed: that takes a restart; still listening on %s", hostport(self.host, self.port)
            )
        if new.metrics_listen != self.config.metrics_listen:
            log.warning("server.metrics_listen changed: that takes a restart")
            new = replace(new, metrics_listen=self.config.metrics_listen)
        old_ps, new_ps = self.config.policy_server, new.policy_server
        for key in ("listen", "socket_mode", "socket_group"):  # what was bound at the start
            if getattr(new_ps, key) != getattr(old_ps, key):
                kept = old_ps.listen
                log.warning(
                    "policy_server.%s changed: that takes a restart; %s",
                    key,
                    f"still listening on {address_text(kept)}" if kept else "still not listening",
                )
        new = replace(
            new,
            policy_server=replace(
                new_ps, listen=old_ps.listen, socket_mode=old_ps.socket_mode, socket_group=old_ps.socket_group
            ),
        )
        self.config = new
        try:
            self.published.publish(new)
        except OSError as exc:  # e.g. /tmp full: the workers keep theirs, new ones start with the new one
            log.error("cannot hand the new configuration to the workers: %s", exc.strerror or exc)
        else:
            for pid in list(self.children):
                _signal(pid, signal.SIGHUP)
        while len(self.children) + len(self.pending) < new.workers:
            self.spawn()
        extra = len(self.children) - new.workers
        for pid in list(self.children)[: max(0, extra)]:
            self.children.pop(pid)
            _signal(pid, signal.SIGTERM)
        log.info("configuration reloaded: %d worker(s)", new.workers)

    def stop(self) -> None:
        self.stopping = True
        for pid in self.children:
            _signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + DRAIN_SECONDS + 5.0
        while self.children and time.monotonic() < deadline:
            try:
                pid, _ = os.waitpid(-1, 0)
            except ChildProcessError:
                break
            self.children.pop(pid, None)
            mark_dead(pid)
        for pid in self.children:
            _signal(pid, signal.SIGKILL)

    def run(self) -> int:
        signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
        for _ in range(self.config.workers):
            self.spawn()
        metrics = self.config.metrics_listen
        policy = self.config.policy_server.listen
        log.info(
            "rspamd-regcheck listening on %s with %d worker(s); registry zones: %s%s%s",
            hostport(self.host, self.port),
            self.config.workers,
            ", ".join(self.config.registry_zones),
            f"; metrics on {hostport(*metrics)}" if metrics else "",
            f"; Postfix policy service on {address_text(policy)}" if policy else "",
        )
        while True:
            received = signal.sigtimedwait(SIGNALS, 0.2)
            sig = received.si_signo if received is not None else None
            if sig in (signal.SIGTERM, signal.SIGINT):
                log.info("stopping")
                self.stop()
                return 0
            if sig == signal.SIGHUP:
                self.reload()
            self.reap()
            self.start_due()


def address_text(address: tuple[str, int] | UnixAddress) -> str:
    """``host:port``, or ``unix:/path``."""
    return str(address) if isinstance(address, UnixAddress) else hostport(*address)


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"signal {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit status {os.WEXITSTATUS(status)}"


def _die_with_parent(parent: int) -> None:
    """Ask Linux to send this worker SIGTERM if the supervisor dies, so no worker is left
    answering with nobody to restart or reload it (it drains and exits as on any SIGTERM)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the supervisor's stop() is all there is
        return
    if os.getppid() != parent:  # the supervisor died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)


def serve(load: Loader, config: Config) -> int:
    """Run the supervisor until it is told to stop.  Returns the exit status.

    *config* has passed `_validate.load_checked` (which *load* calls again on SIGHUP, in the
    supervisor only: the workers get what it accepted).

    :raises ConfigError: for a non-loopback address without a secret.
    :raises ListenError: when an address cannot be listened on.
    :raises InvalidZoneFile: when a zone file cannot be loaded.
    """
    host, port = config.listen
    check_exposure(config, host)
    make_resolver(config).close()  # fail now, not in every worker, on a bad zone file
    ps = config.policy_server
    for address in (config.listen, config.metrics_listen, ps.listen):
        if isinstance(address, tuple):
            try:  # fail now on an address in use or not ours
                listening_socket(*address).close()
            except OSError as exc:
                raise ListenError(address, exc.strerror or str(exc)) from exc
    metrics_dir = tempfile.mkdtemp(prefix="rspamd-regcheck-metrics-")
    run_dir = tempfile.mkdtemp(prefix="rspamd-regcheck-run-")  # 0700: the accepted configuration
    os.environ[METRICS_ENV] = metrics_dir
    unix = None
    try:
        if isinstance(ps.listen, UnixAddress):  # no SO_REUSEPORT for it: bound here, once, for every worker
            unix = UnixListener.bind(ps.listen, ps.socket_mode, ps.socket_group)
        published = Published(run_dir)
        published.publish(config)
        return Supervisor(load, config, host, port, published, None if unix is None else unix.sock).run()
    finally:
        if unix is not None:
            unix.close()  # the socket file goes, if it is still ours
        shutil.rmtree(metrics_dir, ignore_errors=True)
        shutil.rmtree(run_dir, ignore_errors=True)


__all__: list[Any] = ["check_exposure", "serve", "worker_main"]
