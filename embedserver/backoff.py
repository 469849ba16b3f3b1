"""Retry delays that double: model loads, batch-worker restarts and front-end restarts share the rule."""

from __future__ import annotations


def doubling(first_s: float, attempt: int, cap_s: float) -> float:
    """Seconds to wait before retry `attempt` (1, 2, ...): `first_s`, then twice as long each time, at most
    `cap_s`."""
    return min(cap_s, first_s * 2.0 ** (attempt - 1))
