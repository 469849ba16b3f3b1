"""How many padded tokens the next pass may hold, so that a pass takes about a set time at the model's recent
speed (the batch worker cuts batches to it, within MAX_BATCH_TOKENS).

A request that arrives while a pass runs waits for that pass, however few texts it brings. On a GPU a pass of
MAX_BATCH_TOKENS takes tens of milliseconds and this never binds. On a CPU the 0.6B model computes ~200 tokens
a second (2 cores), so a full batch would hold the model for minutes, and a query arriving behind someone's
documents would wait for all of them; past its MAX_QUEUE_WAIT_S it would fail with 429 queue_timeout before
its turn. A CPU pass gains little from size past a second or so (its fixed cost is streaming the weights, ~0.2
s there): cut to half the wait bound, passes cost some throughput there (one 256-token text a pass runs at
156 tokens/s against 179 for 8 x 256) and keep the bound one.
"""

from __future__ import annotations

# Padded tokens of a pass cut before any pass was timed: one GPU pass or about a second of the 0.6B model on
# a small CPU, after which the measured speed takes over.
FIRST_PASS_TOKENS = 256

# The speed is tokens over seconds of recent passes (each sum decayed by this much a pass): quick to follow the
# rise from small passes to the budget's size, and not dragged down by small passes in between (a lone query's
# pass on CPU is mostly the fixed cost: 62 tokens/s for one 16-token text against ~200 in a pass of 512), as an
# average of each pass's own speed would be.
_KEPT = 0.5


class PassBudget:
    """Padded tokens for the next pass: what the model computes in `seconds` at the speed of recent passes,
    at most `ceiling` (MAX_BATCH_TOKENS; a text always gets a pass of its own, however long). `seconds` 0:
    always `ceiling`."""

    def __init__(self, seconds: float, ceiling: int) -> None:
        self._seconds = seconds
        self._ceiling = ceiling
        # Recent passes' padded tokens and seconds, decayed sums; none until a pass is timed.
        self._tokens = 0.0
        self._spent = 0.0

    def observe(self, padded_tokens: int, seconds: float) -> None:
        """A pass of `padded_tokens` took `seconds` of the model's time."""
        if seconds <= 0:
            return
        self._tokens = _KEPT * self._tokens + padded_tokens
        self._spent = _KEPT * self._spent + seconds

    def tokens(self) -> int:
        if not self._seconds:
            return self._ceiling
        if not self._spent:
            return min(self._ceiling, FIRST_PASS_TOKENS)
        return max(1, min(self._ceiling, int(self._tokens / self._spent * self._seconds)))
