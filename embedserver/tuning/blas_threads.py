"""How many OpenBLAS threads a forward pass on CPU gets.

OpenBLAS splits a matrix product over every core, and its idle threads spin for ~0.1 s after each product
before they sleep. On a small machine serving a small model that spin takes the core the event loop, the
tokenizer and HTTP need: serving the tiny test model to one client on 2 cores, OpenBLAS's worker thread took
~47% of the machine's CPU samples (perf), and a one-text pass that needs that thread took 15.9 ms instead of
3.0 while another process kept a core busy. So a batched pass that is short for its size leaves one core to
the serving side (1 thread of 2 here: 32 clients 692 vs 600 texts/s, mean of five runs, one client
unchanged; docs/PERFORMANCE.md), while a lone text (nothing else to serve) and a pass that is long for its
size (a real model, matrix-bound, where the serving side's ~1 ms a request is noise) keep every thread: the
0.6B model on 2 cores takes 1.5-1.7x longer on one.
"""

from __future__ import annotations

from typing import Protocol


class ThreadCount(Protocol):
    started: int  # the most threads

    def set(self, threads: int) -> None: ...


# Above this a pass's texts cost the device far more than their requests cost the serving side (~1 ms each on
# a 2-core machine): a pass of the tiny test model takes ~1 ms a text, of the 0.6B model ~470 ms.
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
