"""A bounded map that forgets the least recently used entries, in two generations.

New and recently used entries live in the young generation; when it is full
it becomes the old one and the previous old generation is dropped whole.  A
hit in the old generation moves the entry to the young one.  So at most
*max_entries* are kept, an entry unused for a whole generation goes, and no
dict ever has entries deleted one by one at a high rate: CPython's dicts
keep deleted slots until they grow their table, so an OrderedDict under
constant churn steps up its memory once; dropping a generation frees it.
Lookups are plain dict lookups (no reordering).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class TwoGenerationLRU(Generic[K, V]):
    def __init__(self, max_entries: int):
        self.max_entries = max_entries
        self._generation = max(1, (max_entries + 1) // 2)
        self._young: dict[K, V] = {}
        self._old: dict[K, V] = {}
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._young) + len(self._old)

    def get(self, key: K) -> V | None:
        value = self._young.get(key)
        if value is not None:
            return value
        value = self._old.pop(key, None)
        if value is not None:
            self._add(key, value)
        return value

    def peek(self, key: K) -> V | None:
        """The value without counting it as a use."""
        value = self._young.get(key)
        return value if value is not None else self._old.get(key)

    def put(self, key: K, value: V) -> None:
        if self.max_entries <= 0:
            return
        self._old.pop(key, None)
        self._add(key, value)

    def discard(self, key: K) -> None:
        self._young.pop(key, None)
        self._old.pop(key, None)

    def _add(self, key: K, value: V) -> None:
        self._young[key] = value
        if len(self._young) >= self._generation:
            self.evictions += len(self._old)
            self._old, self._young = self._young, {}


def memo(max_entries: int) -> Callable[[Callable[[K], V]], Callable[[K], V]]:
    """Cache a one-argument function's results in a `TwoGenerationLRU` (None results are not kept)."""

    def wrap(fn: Callable[[K], V]) -> Callable[[K], V]:
        cache: TwoGenerationLRU[K, V] = TwoGenerationLRU(max_entries)

        @functools.wraps(fn)
        def cached(arg: K) -> V:
            value = cache.get(arg)
            if value is None:
                value = fn(arg)
                if value is not None:
                    cache.put(arg, value)
            return value

        cached.cache = cache  # type: ignore[attr-defined]
        return cached

    return wrap
