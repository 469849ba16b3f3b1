"""OpenBLAS's threads per CPU forward pass: every thread for a lone text or a matrix-bound pass, one fewer
for a batch of a small model, so the serving side keeps a core; the vectors do not depend on it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from embedserver.catalog import ModelSpec
from embedserver.runtime.loader import load_runner
from embedserver.tuning import blas
from embedserver.tuning.blas_threads import BlasThreadPolicy


class _Threads:
    def __init__(self, started: int) -> None:
        self.started = started
        self.history: list[int] = []

    def set(self, threads: int) -> None:
        self.history.append(threads)


def _policy_after_a_pass(started: int, ms_per_token: float) -> BlasThreadPolicy:
    policy = BlasThreadPolicy(_Threads(started))
    policy.after([100, 100], ms_per_token * 200 / 1000)
    return policy


def test_a_batch_of_a_small_model_leaves_a_core_to_the_serving_side() -> None:
    policy = _policy_after_a_pass(started=4, ms_per_token=0.01)  # ~1 ms a text: the tiny model
    assert policy.threads_for([100] * 32) == 3
    assert policy.threads_for([100]) == 4  # a lone text: nothing else to serve


def test_a_matrix_bound_pass_keeps_every_thread() -> None:
    policy = _policy_after_a_pass(started=2, ms_per_token=5.0)  # ~600 ms a text: the 0.6B model on 2 cores
    assert policy.threads_for([128] * 8) == 2
    assert policy.threads_for([4] * 8) == 2  # 20 ms a text
    assert policy.threads_for([3] * 8) == 1  # 15 ms a text: the serving side's share is no longer noise


def test_no_estimate_yet_or_one_thread_keeps_what_it_has() -> None:
    assert BlasThreadPolicy(_Threads(8)).threads_for([50] * 16) == 8
    assert _policy_after_a_pass(started=1, ms_per_token=0.01).threads_for([50] * 16) == 1


def test_the_engine_sets_the_count_before_each_pass() -> None:
    threads = _Threads(2)
    policy = BlasThreadPolicy(threads)
    policy.before([10, 10])
    policy.after([10, 10], 0.001)  # 0.05 ms a token: short
    policy.before([10, 10])
    policy.before([10])
    assert threads.history == [2, 1, 2]


@pytest.mark.skipif(blas._handle is None, reason="no OpenBLAS under MLX here")
def test_openblas_takes_no_more_threads_than_the_cores_the_process_may_use() -> None:
    """A CPU quota (a container's limit) that OpenBLAS does not see caps its threads, and nothing else does."""
    assert blas._handle is not None
    get = blas._handle.openblas_get_num_threads
    before = int(get())
    try:
        capped = blas.OpenBlasThreads(blas._handle, usable=1)
        assert (capped.started, capped.current, int(get())) == (1, 1, 1)
        blas._handle.openblas_set_num_threads(before)
        roomy = blas.OpenBlasThreads(blas._handle, usable=before + 8)
        assert (roomy.started, int(get())) == (before, before)
    finally:
        blas._handle.openblas_set_num_threads(before)


@pytest.mark.skipif(blas.openblas_threads() is None, reason="no OpenBLAS under MLX here")
def test_vectors_are_the_same_with_any_thread_count(tiny_qwen3: Path) -> None:
    threads = blas.openblas_threads()
    assert threads is not None
    runner = load_runner(ModelSpec(name="tiny", source=str(tiny_qwen3)))
    policy = runner.blas_threads
    assert policy is not None  # on CPU with OpenBLAS
    batch = [list(range(300, 300 + n)) for n in (5, 40, 17, 64)]
    try:
        runner.blas_threads = None  # the counts set here, not the policy's
        threads.set(1)
        one = runner.embed(batch).copy()
        threads.set(threads.started)
        every = runner.embed(batch)
        assert np.allclose(one, every, rtol=1e-5, atol=1e-6)
        runner.blas_threads = policy
        runner.embed(batch)  # through the policy: no time per token known yet, so every thread
        assert threads.current == threads.started
        # The pass's own timing depends on how busy the machine is; a short one is given here, as the tiny
        # model's passes are on an idle machine, and the real OpenBLAS must get the count the rule gives.
        lengths = [len(ids) for ids in batch]
        measured = BlasThreadPolicy(threads)
        measured.after(lengths, 0.002)
        measured.before(lengths)
        assert threads.current == (threads.started - 1 or 1)
    finally:
        threads.set(threads.started)
