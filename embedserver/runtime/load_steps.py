"""A model's load as steps, so loading one model does not stall the others' traffic.

Every forward pass runs on the one thread that owns MLX, and so does a load: read as one call, a load holds
that thread for all of it (seconds for the 0.6B model, its warm-up passes included; longer for 8B), and the
passes of the models already serving wait behind it. A load written as a generator instead yields between
steps: whoever drives it (the registry) submits each step to the MLX thread on its own, so passes queued
meanwhile run between two steps, and the longest wait is one step (one warm-up pass, one chunk of weights).

What a generator yields says where its next step runs: `MLX_THREAD`, or `ANY_THREAD` for work that touches
no MLX state (waiting for the tokenizer, which builds on a thread of its own), which then runs off the MLX
thread altogether. Its return value is
the loaded runner. `run_steps` runs every step on the calling thread, for callers that have no other
traffic (benchmarks, a model's own process, tests).
"""

from __future__ import annotations

from collections.abc import Generator
from enum import Enum
from typing import TypeVar, cast

T = TypeVar("T")


class Where(Enum):
    MLX_THREAD = "mlx"
    ANY_THREAD = "any"


MLX_THREAD, ANY_THREAD = Where.MLX_THREAD, Where.ANY_THREAD

LoadSteps = Generator[Where, None, T]


def run_steps(steps: LoadSteps[T]) -> T:
    """Every step on this thread, one after another; the generator's result."""
    done, value = advance(steps)
    while not done:
        done, value = advance(steps)
    return cast(T, value)


def advance(steps: LoadSteps[T]) -> tuple[bool, Where | T]:
    """Run the next step: (False, where the step after runs) or (True, the result). A future cannot carry
    StopIteration, so the end is a value here."""
    try:
        return False, next(steps)
    except StopIteration as done:
        return True, done.value
