"""An LRU cache of pooled embeddings, bounded in entries and in bytes.

Entries hold the raw pooled vector (before Matryoshka truncation and normalization), so one entry serves every
`dimensions` and `normalize` a client asks for. Keys hash everything else that changes the vector: the model
and its revision, pooling, instruction, truncation (on/off and length) and the text itself. Used from the event loop only.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import NamedTuple

import numpy as np

# A key's size: front-ends send keys as raw bytes (embedserver/server/ipc.py).
KEY_BYTES = 20


class CachedEmbedding(NamedTuple):  # a tuple: built once per text computed, on the engine's hot path
    vector: np.ndarray
    tokens: int


def cache_key(
    *,
    model: str,
    revision: str,
    pooling: str,
    instruction: str | None,
    max_length: int,
    truncate: bool,
    text: str,
) -> bytes:
    digest = hashlib.blake2b(digest_size=KEY_BYTES)
    for part in (model, revision, pooling, instruction or "", f"{max_length}:{truncate}", text):
        encoded = part.encode("utf-8", "surrogatepass")
        # Length-prefix each part so ("ab", "c") and ("a", "bc") never collide.
        digest.update(len(encoded).to_bytes(8, "little"))
        digest.update(encoded)
    return digest.digest()


class EmbeddingCache:
    def __init__(self, max_entries: int, max_bytes: int) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.bytes = 0
        self._entries: OrderedDict[bytes, CachedEmbedding] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def enabled(self) -> bool:
        return self.max_entries > 0 and self.max_bytes > 0

    def get(self, key: bytes) -> CachedEmbedding | None:
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
        return entry

    def put(self, key: bytes, vector: np.ndarray, tokens: int) -> None:
        if not self.enabled or vector.nbytes > self.max_bytes:
            return
        old = self._entries.pop(key, None)
        if old is not None:
            self.bytes -= old.vector.nbytes
        # A private read-only copy: callers may not alias or mutate what the cache hands out.
        stored = vector.astype(np.float32)  # a copy, always
        stored.setflags(write=False)  # (a third of the time of setting `flags.writeable`)
        self._entries[key] = CachedEmbedding(stored, tokens)
        self.bytes += stored.nbytes
        while len(self._entries) > self.max_entries or self.bytes > self.max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self.bytes -= evicted.vector.nbytes
