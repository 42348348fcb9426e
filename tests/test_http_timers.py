"""The HTTP shell's timeouts on a kept-alive connection: no timer per request, and still on time."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

from rspamd_regcheck import Checker, Config
from rspamd_regcheck._http import App, HttpProtocol, Limits, start_server

REQUEST = b"POST /checkv2 HTTP/1.1\r\nHost: x\r\nIP: 192.0.2.1\r\nHelo: JUPITER\r\nContent-Length: 0\r\n\r\n"


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(REQUEST)
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length: ", 1)[1].split(b"\r\n", 1)[0])
    await reader.readexactly(length)


def test_requests_on_one_connection_arm_no_timer_each_and_the_idle_timeout_still_closes_it():
    async def go() -> tuple[int, float]:
        loop = asyncio.get_running_loop()
        armed = 0
        call_at, call_later = loop.call_at, loop.call_later

        def counting_at(when, callback, *args, **kw):  # type: ignore[no-untyped-def]
            nonlocal armed
            armed += getattr(callback, "__func__", None) is HttpProtocol._timeout
            return call_at(when, callback, *args, **kw)

        def counting_later(delay, callback, *args, **kw):  # type: ignore[no-untyped-def]
            nonlocal armed
            armed += getattr(callback, "__func__", None) is HttpProtocol._timeout
            return call_later(delay, callback, *args, **kw)

        loop.call_at, loop.call_later = counting_at, counting_later  # type: ignore[method-assign]
        checker = Checker(replace(Config(), registry_zones=("id.regcheck.test",), nameservers=("127.0.0.1",)))
        server = await start_server(App(checker, Limits(idle_timeout=0.3)), "127.0.0.1", 0)
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.sockets[0].getsockname()[1])
            for _ in range(50):  # a bad HELO: answered without DNS
                await _exchange(reader, writer)
            after = armed
            started = time.monotonic()
            assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the idle timeout
            writer.close()
            return after, time.monotonic() - started
        finally:
            server.close()
            await server.wait_closed()
            checker.close()

    armed, idle = asyncio.run(go())
    assert armed <= 3  # at the connection's start and when the request deadline first comes near
    assert 0.25 <= idle < 2.0
