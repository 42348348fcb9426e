"""The two-generation LRU behind the caches: bounded, recent entries kept, whole generations dropped."""

from __future__ import annotations

from rspamd_regcheck._lru import TwoGenerationLRU, memo


def test_bounded_and_recent_kept():
    lru: TwoGenerationLRU[int, str] = TwoGenerationLRU(10)
    for i in range(100):
        lru.put(i, str(i))
        assert len(lru) <= 10
    assert lru.get(99) == "99" and lru.get(0) is None
    assert lru.evictions == 100 - len(lru)


def test_a_used_entry_survives_rotations():
    lru: TwoGenerationLRU[int, str] = TwoGenerationLRU(4)
    lru.put(-1, "kept")
    for i in range(20):
        lru.put(i, str(i))
        assert lru.get(-1) == "kept"  # used every time: moved to the young generation


def test_peek_and_discard():
    lru: TwoGenerationLRU[str, int] = TwoGenerationLRU(4)
    lru.put("a", 1)
    assert lru.peek("a") == 1
    lru.discard("a")
    assert lru.peek("a") is None and len(lru) == 0


def test_zero_size_keeps_nothing():
    lru: TwoGenerationLRU[str, int] = TwoGenerationLRU(0)
    lru.put("a", 1)
    assert len(lru) == 0 and lru.get("a") is None


def test_memo():
    calls = []

    @memo(2)
    def double(x: int) -> int:
        calls.append(x)
        return 2 * x

    assert [double(1), double(1), double(2)] == [2, 2, 4]
    assert calls == [1, 2]
