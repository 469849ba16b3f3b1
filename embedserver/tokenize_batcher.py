"""Tokenization for concurrent requests, gathered: one `encode_batch` call per round on one thread.

A thread hop per request (anyio.to_thread) put dozens of threads in contention for the GIL under load and
capped an H100 server at ~1,000 requests/s. Here texts that arrive while a round runs wait for the next one,
so under load each round covers many requests; the Rust tokenizer releases the GIL and spreads a batch
over the cores by itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from concurrent.futures import Executor, ThreadPoolExecutor

from embedserver.tokenization import TextTokenizer

# One thread for every model's tokenization: rounds run one at a time, each parallel inside.
tokenizer_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tokenize")


class TokenizeBatcher:
    def __init__(self, tokenizer: TextTokenizer, executor: Executor = tokenizer_executor) -> None:
        self._tokenizer = tokenizer
        self._executor = executor
        self._pending: list[tuple[Sequence[str], asyncio.Future[list[list[int]]]]] = []
        self._draining = False
        self._task: asyncio.Task[None] | None = None  # held so the running round is not garbage-collected

    async def encode(self, texts: Sequence[str]) -> list[list[int]]:
        future: asyncio.Future[list[list[int]]] = asyncio.get_running_loop().create_future()
        self._pending.append((texts, future))
        if not self._draining:
            self._draining = True
            self._task = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._pending:
                round_, self._pending = self._pending, []
                round_ = [(texts, f) for texts, f in round_ if not f.done()]  # callers gone: skip
                flat = [text for texts, _ in round_ for text in texts]
                if not flat:
                    continue
                try:
                    ids = await loop.run_in_executor(self._executor, self._tokenizer.encode_batch, flat)
                except Exception as exc:
                    for _, future in round_:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                start = 0
                for texts, future in round_:
                    if not future.done():
                        future.set_result(ids[start : start + len(texts)])
                    start += len(texts)
        finally:
            self._draining = False
