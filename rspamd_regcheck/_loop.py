"""The event loop every entry point runs on, shared by the command line and `serve`'s workers."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run_loop(coro: Coroutine[Any, Any, T]) -> T:
    """Run *coro* on uvloop (the DNS client is about twice as fast on it), else asyncio."""
    try:
        import uvloop
    except ImportError:  # uvloop is a dependency, but a platform may lack a wheel
        return asyncio.run(coro)
    return uvloop.run(coro)
