"""How many OpenBLAS threads a forward pass on CPU gets.

OpenBLAS splits a matrix product over every core, and its idle threads spin for ~0.1 s after each product
before they sleep. On a small machine serving a small model that spin takes the core the event loop, the
tokenizer and HTTP need, and a pass that needs a spinning thread waits for it. So a batched pass that is
short for its size leaves one core to the serving side, while a lone text (nothing else to serve) and a pass
that is long for its size (a real model, matrix-bound, where the serving side's cost per request is noise)
keep every thread, since such a model slows down markedly on fewer threads (docs/perf/log.md has the figures).
"""

from __future__ import annotations

from typing import Protocol


class ThreadCount(Protocol):
    started: int  # the most threads

    def set(self, threads: int) -> None: ...


# Above this a pass's texts cost the device far more than their requests cost the serving side (about a
# millisecond each on a small machine); the tiny test model stays well below it, the real models far above.
_LONG_MS_PER_TEXT = 20.0


class BlasThreadPolicy:
    """Sets OpenBLAS's threads before each pass of one runner, from the time per token its passes took."""

    def __init__(self, threads: ThreadCount) -> None:
        self._threads = threads
        self._seconds_per_token: float | None = None

    def before(self, lengths: list[int]) -> None:
        self._threads.set(self.threads_for(lengths))

    def after(self, lengths: list[int], seconds: float) -> None:
        sample = seconds / max(sum(lengths), 1)
        known = self._seconds_per_token
        self._seconds_per_token = sample if known is None else 0.8 * known + 0.2 * sample

    def threads_for(self, lengths: list[int]) -> int:
        most = self._threads.started
        if len(lengths) < 2 or self._seconds_per_token is None:
            return most
        ms_per_text = self._seconds_per_token * 1000 * sum(lengths) / len(lengths)
        return most if ms_per_text >= _LONG_MS_PER_TEXT else max(1, most - 1)
