"""A batch worker's limits: how large a batch may be, how long the next one may fill, and what the worker
admits (the engine builds one from the server's settings)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BatchLimits:
    max_size: int
    max_tokens: int
    wait_s: float
    max_queue: int
    # Refuse new work when the backlog would take longer than this to clear at the recent rate (0: off).
    max_wait_s: float = 0.0
    # How many batches' worth of queued items one planning round takes; bounded so a flood of short texts
    # cannot keep a long one waiting for more than a round.
    window_batches: int = 8
    # Tokens: one request may bring at most max_request_tokens to compute (413 past it), and a model takes
    # new requests while fewer than max_queue_tokens wait or run (429 past it; a request alone always).
    max_request_tokens: int = 300_000
    max_queue_tokens: int = 2_000_000
