from __future__ import annotations

import numpy as np
import pytest

from embedserver.service.cache import EmbeddingCache, cache_key

BASE = {
    "model": "m",
    "revision": "r1",
    "pooling": "last",
    "instruction": None,
    "max_length": 512,
    "truncate": True,
    "text": "hi",
}


def _vec(n: int = 4) -> np.ndarray:
    return np.arange(n, dtype=np.float32)


def test_lru_bounded_in_entries() -> None:
    cache = EmbeddingCache(max_entries=2, max_bytes=10**6)
    cache.put(b"a", _vec(), 1)
    cache.put(b"b", _vec(), 1)
    assert cache.get(b"a") is not None  # a is now most recent
    cache.put(b"c", _vec(), 1)
    assert cache.get(b"b") is None and cache.get(b"a") is not None and cache.get(b"c") is not None
    assert len(cache) == 2


def test_bounded_in_bytes() -> None:
    cache = EmbeddingCache(max_entries=100, max_bytes=3 * 16)
    for i in range(5):
        cache.put(bytes([i]), _vec(4), 1)  # 16 bytes each
    assert len(cache) == 3 and cache.bytes == 48
    assert cache.get(bytes([0])) is None and cache.get(bytes([4])) is not None


def test_replacing_an_entry_keeps_the_byte_count_right() -> None:
    cache = EmbeddingCache(max_entries=10, max_bytes=10**6)
    cache.put(b"a", _vec(4), 1)
    cache.put(b"a", _vec(8), 2)
    assert cache.bytes == 32 and len(cache) == 1
    hit = cache.get(b"a")
    assert hit is not None and hit.tokens == 2


def test_cached_vectors_are_private_copies() -> None:
    cache = EmbeddingCache(max_entries=10, max_bytes=10**6)
    vector = _vec()
    cache.put(b"a", vector, 1)
    vector[0] = 99
    hit = cache.get(b"a")
    assert hit is not None and hit.vector[0] == 0
    with pytest.raises(ValueError):
        hit.vector[0] = 1


def test_disabled_cache_stores_nothing() -> None:
    cache = EmbeddingCache(max_entries=0, max_bytes=10**6)
    cache.put(b"a", _vec(), 1)
    assert cache.get(b"a") is None


@pytest.mark.parametrize(
    "change",
    [
        {"model": "other"},
        {"revision": "r2"},
        {"pooling": "mean"},
        {"instruction": "task"},
        {"max_length": 256},
        {"truncate": False},
        {"text": "hi "},
    ],
)
def test_key_depends_on_everything_that_changes_the_vector(change: dict[str, object]) -> None:
    assert cache_key(**BASE) != cache_key(**{**BASE, **change})  # type: ignore[arg-type]


def test_key_parts_cannot_run_into_each_other() -> None:
    a = cache_key(**{**BASE, "instruction": "ab", "text": "c"})  # type: ignore[arg-type]
    b = cache_key(**{**BASE, "instruction": "a", "text": "bc"})  # type: ignore[arg-type]
    assert a != b and cache_key(**BASE) == cache_key(**BASE)  # type: ignore[arg-type]
