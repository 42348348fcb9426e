"""Coverage-guided fuzzing (atheris, libFuzzer) of the parsers that read strangers' input.

    .venv/bin/python fuzz/fuzz_parsers.py record  -max_total_time=60
    .venv/bin/python fuzz/fuzz_parsers.py request -max_total_time=60
    .venv/bin/python fuzz/fuzz_parsers.py dns     -max_total_time=60

Outside the test suite (pip install atheris).  Each target raises only on a
bug: anything but the parser's declared error, or a rejection without a
reason.  libFuzzer prints how many inputs it tried ("#N DONE").
"""

from __future__ import annotations

import asyncio
import re
import sys

import atheris

with atheris.instrument_imports():
    from rspamd_regcheck import InvalidRecord, parse_record
    from rspamd_regcheck._headers import header_block
    from rspamd_regcheck._http import App, HttpError, HttpProtocol, Limits, envelope_from_headers
    from rspamd_regcheck._record import select_record
    from rspamd_regcheck._sid import pra
    from rspamd_regcheck._wire import MalformedReply, parse_reply
    from rspamd_regcheck.config import Config

REASON = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*: .+")


def record(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    texts = [fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 300)) for _ in range(fdp.ConsumeIntInRange(1, 3))]
    try:
        parse_record(select_record(texts))
    except InvalidRecord as exc:
        if not exc.reasons or not all(REASON.match(r) for r in exc.reasons):
            raise AssertionError(f"a rejection without a clear reason: {exc.reasons!r}") from None


class _Transport:
    def __init__(self) -> None:
        self.closed = False

    def write(self, data: bytes) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: object = None) -> object:
        return default


class _Checker:
    config = Config()

    async def check(self, env: object) -> object:
        raise asyncio.CancelledError  # the check itself is not what is fuzzed here


_loop = asyncio.new_event_loop()
asyncio.set_event_loop(_loop)


def request(data: bytes) -> None:
    # raw bytes through the HTTP protocol, and header pairs through the envelope builder
    async def feed() -> None:
        proto = HttpProtocol(App(_Checker(), Limits(headers=20, header_bytes=4096, body=2048)))  # type: ignore[arg-type]
        proto.connection_made(_Transport())  # type: ignore[arg-type]
        proto.data_received(data)
        proto.connection_lost(None)

    _loop.run_until_complete(feed())
    fdp = atheris.FuzzedDataProvider(data)
    pairs = [(fdp.ConsumeUnicodeNoSurrogates(12), fdp.ConsumeUnicodeNoSurrogates(40)) for _ in range(4)]
    try:
        env = envelope_from_headers(pairs, fdp.ConsumeBytes(200))
    except HttpError:
        return
    pra(env.headers)
    header_block(data)


def dns(data: bytes) -> None:
    try:
        parse_reply(data)
    except MalformedReply:
        pass


TARGETS = {"record": record, "request": request, "dns": dns}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in TARGETS:
        sys.exit(f"usage: {sys.argv[0]} {{{'|'.join(TARGETS)}}} [libFuzzer options]")
    target = TARGETS[sys.argv.pop(1)]
    atheris.Setup(sys.argv, target)
    atheris.Fuzz()
