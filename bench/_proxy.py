"""A small DNS delaying proxy (UDP and TCP) for the critical-path measurement.

Every reply from the upstream server is held *delay* seconds before it is
passed back, so one DNS round trip costs at least that long.  Runs in its
own thread with its own event loop; stop() ends it.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from typing import cast


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, upstream: tuple[str, int], delay: float):
        self.upstream = upstream
        self.delay = delay
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)  # a datagram endpoint's transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        asyncio.get_running_loop().create_task(self._relay(data, addr))

    async def _relay(self, data: bytes, addr: tuple[str, int]) -> None:
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, self.upstream)
            await loop.sock_sendall(sock, data)
            reply = await asyncio.wait_for(loop.sock_recv(sock, 65535), 5)
            await asyncio.sleep(self.delay)
            assert self.transport is not None
            self.transport.sendto(reply, addr)
        except (OSError, TimeoutError):
            pass
        finally:
            sock.close()


async def _tcp(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, upstream: tuple[str, int], delay: float
) -> None:
    try:
        up_r, up_w = await asyncio.open_connection(*upstream)
        while True:
            head = await reader.readexactly(2)
            body = await reader.readexactly(int.from_bytes(head, "big"))
            up_w.write(head + body)
            rhead = await up_r.readexactly(2)
            rbody = await up_r.readexactly(int.from_bytes(rhead, "big"))
            await asyncio.sleep(delay)
            writer.write(rhead + rbody)
            await writer.drain()
    except (OSError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


class DelayProxy:
    """Listens on 127.0.0.1:port (UDP and TCP) in front of *upstream*."""

    def __init__(self, upstream: tuple[str, int], delay: float):
        self.upstream = upstream
        self.delay = delay
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def start() -> None:
            for _ in range(20):  # a port free for UDP may be taken for TCP: try another
                udp, _ = await self._loop.create_datagram_endpoint(
                    lambda: _Udp(self.upstream, self.delay), local_addr=("127.0.0.1", 0)
                )
                port = udp.get_extra_info("sockname")[1]
                try:
                    await asyncio.start_server(lambda r, w: _tcp(r, w, self.upstream, self.delay), "127.0.0.1", port)
                except OSError:
                    udp.close()
                    continue
                self.port = port
                self._ready.set()
                return

        self._loop.run_until_complete(start())
        self._loop.run_forever()

    def __enter__(self) -> DelayProxy:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
