"""``rspamd-regcheck serve``: run the HTTP worker until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import logging
import signal

from ._check import Checker
from ._http import App, Limits, start_server
from .config import Config

log = logging.getLogger("rspamd_regcheck.serve")
DRAIN_SECONDS = 5.0  # checks still running at shutdown get this long to answer


async def serve(config: Config, host: str, port: int, ready: asyncio.Event | None = None) -> None:
    """Serve until a termination signal; then stop listening and let running checks finish."""
    checker = Checker(config)
    limits = Limits(
        body=config.body_limit,
        headers=config.max_headers,
        request_timeout=config.request_timeout,
        idle_timeout=config.idle_timeout,
    )
    app = App(checker, limits)
    server = await start_server(app, host, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    bound = ", ".join(str(s.getsockname()[:2]) for s in server.sockets)
    log.warning("rspamd-regcheck listening on %s; registry zones: %s", bound, ", ".join(config.registry_zones))
    if ready is not None:
        ready.set()
    try:
        await stop.wait()
    finally:
        log.warning("stopping: %d check(s) in flight", len(app.active))
        server.close()
        if app.active:
            await asyncio.wait(set(app.active), timeout=DRAIN_SECONDS)
        checker.close()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
