"""Tokenization for concurrent requests, gathered: one `encode_batch` call per round, on a thread.

A thread hop per request (anyio.to_thread) puts dozens of threads in contention for the GIL under load, and
that contention, not the GPU, capped the server's requests/s. Here texts that arrive while a round runs wait for the next one,
so under load each round covers many requests; the tokenizer releases the GIL and spreads a large batch
over the cores by itself. TOKENIZER_ROUNDS rounds may run at once per model.

A short request whose model is idle is encoded on the event loop instead, when no round is running: its
tokenization is then all that stands between it and the forward pass, and through the fast encoder
(fast_bpe.py) a short text takes less time than the hand-off to a thread and back. While the
model is busy a text waits for the running pass anyway, so rounds keep that work off the event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from functools import cache

from embedserver.tokenization.tokenizer import TextTokenizer
from embedserver.tuning.threads import named_executor


@cache
def tokenizer_executor() -> ThreadPoolExecutor:
    """Threads for every model's tokenization rounds (each batcher runs at most `rounds` of them at once),
    made on first use."""
    return named_executor("tokenize", 16)


# The most characters encoded on the event loop (~500 tokens), and then only while no round runs.
INLINE_CHARS = 2048


class TokenizeBatcher:
    def __init__(
        self, tokenizer: TextTokenizer, *, rounds: int = 1, executor: Executor | None = None
    ) -> None:
        self._tokenizer = tokenizer
        self._executor = executor or tokenizer_executor()
        self._rounds = rounds
        self._pending: list[tuple[Sequence[str], asyncio.Future[list[list[int]]]]] = []
        # Running drain loops, held so they are not garbage-collected; at most `rounds` of them.
        self._drainers: set[asyncio.Task[None]] = set()

    async def encode(self, texts: Sequence[str], *, idle: bool = False) -> list[list[int]]:
        """Token ids per text. `idle`: the model has nothing queued or running (see the module's docstring)."""
        if idle and not self._drainers and self._tokenizer.fast and sum(map(len, texts)) <= INLINE_CHARS:
            return self._tokenizer.encode_batch(texts)
        future: asyncio.Future[list[list[int]]] = asyncio.get_running_loop().create_future()
        self._pending.append((texts, future))
        if len(self._drainers) < self._rounds:
            task = asyncio.create_task(self._drain())
            self._drainers.add(task)
            task.add_done_callback(self._drainers.discard)  # also for a round cancelled before it started
        return await future

    async def _drain(self) -> None:
        """Take everything pending as one round, tokenize it on a thread, repeat until nothing is pending."""
        try:
            await self._drain_pending()
        finally:
            # Leave the books in the same step as the loop ends. A done-callback ran a step later: a caller
            # resumed by the last round and asking again in between found every round slot taken and waited
            # for a round that had ended, until some other request started one.
            self._drainers.discard(asyncio.current_task())  # type: ignore[arg-type]

    async def _drain_pending(self) -> None:
        loop = asyncio.get_running_loop()
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
