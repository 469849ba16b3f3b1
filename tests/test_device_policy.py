"""How a loaded model is readied for its device: the padded tokens worth one more pass, from two timed shapes."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Literal, cast

import numpy as np
import pytest

from embedserver.catalog import ModelSpec
from embedserver.runtime.device_policy import (
    DevicePlan,
    ready_for_device,
    split_tokens_from,
    split_tokens_measured,
)
from embedserver.runtime.loader import load_runner
from embedserver.runtime.runner import ModelRunner
from embedserver.tokenization.token_ids import TokenIds


@pytest.mark.parametrize(
    ("fixed_ms", "per_token_us", "split"),
    [
        (4.0, 2.0, 2000),  # about the 0.6B model on an H200
        (10.0, 20.0, 500),  # a model ten times dearer a token splits sooner
        (4.0, 0.01, 16384),  # held within the bounds
        (0.01, 20.0, 128),
    ],
)
def test_split_tokens_are_a_passs_fixed_time_over_its_time_per_token(
    fixed_ms: float, per_token_us: float, split: int
) -> None:
    def seconds(tokens: int) -> float:
        return (fixed_ms + per_token_us * tokens / 1e3) / 1e3

    assert split_tokens_from(16, seconds(16), 16384, seconds(16384)) == split


def test_split_tokens_fall_back_where_the_long_pass_was_not_the_slower() -> None:
    assert split_tokens_from(16, 0.004, 16384, 0.003) == 2048
    assert split_tokens_from(16, 0.004, 16, 0.004) == 2048


@pytest.mark.parametrize(
    ("max_batch", "max_tokens", "long"),
    [(256, 32768, (128, 128)), (64, 32768, (64, 128)), (256, 1024, (8, 128)), (256, 64, (1, 128))],
)
def test_the_timed_shapes_are_one_short_text_and_the_most_rows_of_128_tokens_within_the_limits(
    max_batch: int, max_tokens: int, long: tuple[int, int]
) -> None:
    """Both shapes are ones the warm-up ran (bucketed rows, within the batch limits), each timed a few times."""
    shapes: list[tuple[int, int]] = []

    def embed(batch: Sequence[Sequence[int]]) -> np.ndarray:
        shapes.append((len(batch), len(batch[0])))
        return np.zeros((len(batch), 4), dtype=np.float32)

    runner: Any = SimpleNamespace(name="m", tokenizer=SimpleNamespace(pad_id=0), embed=embed)
    split = split_tokens_measured(cast(ModelRunner, runner), max_batch=max_batch, max_tokens=max_tokens)
    assert sorted(set(shapes)) == sorted({(1, 16), long})
    assert len(shapes) == 6
    assert 128 <= split <= 16384


def test_a_timed_pass_that_fails_leaves_the_fallback_and_the_load_goes_on() -> None:
    def embed(batch: Sequence[Sequence[int]]) -> np.ndarray:
        if len(batch) > 1:
            raise RuntimeError("out of memory")
        return np.zeros((1, 4), dtype=np.float32)

    runner: Any = SimpleNamespace(name="m", tokenizer=SimpleNamespace(pad_id=0), embed=embed)
    assert split_tokens_measured(cast(ModelRunner, runner), max_batch=256, max_tokens=32768) == 2048


def test_a_cpu_load_warms_one_short_shape(tiny_qwen3: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A new shape costs nothing extra on CPU: the load runs one pass of one short text, not every bucketed
    shape (4.2 s of the 0.6B model's start on a 2-core VM), and batches keep their exact sizes."""
    from embedserver.runtime import device

    monkeypatch.setattr(device, "backend", lambda: "cpu")
    runner = load_runner(ModelSpec(name="tiny", source=str(tiny_qwen3)))
    shapes: list[tuple[int, int]] = []
    embed = runner.embed

    def recorded(batch: Sequence[TokenIds]) -> np.ndarray:
        shapes.append((len(batch), len(batch[0])))
        return embed(batch)

    runner.embed = recorded  # type: ignore[method-assign]
    assert ready_for_device(runner, DevicePlan(max_batch=256, max_tokens=32768)) is runner
    assert shapes == [(1, 16)] and not runner.bucket_rows


@pytest.mark.parametrize(
    ("backend", "compile_forward", "built"),
    [
        ("cuda", "auto", [True]),  # the one text replays its graph; 2 x 512 builds eagerly
        ("cuda", False, [True, True]),
        ("cuda", True, []),
        ("metal", "auto", [True, True]),  # not measured there: eager
        ("metal", True, []),
    ],
)
def test_a_gpu_load_compiles_the_passes_the_compile_setting_names(
    tiny_qwen3: Path,
    monkeypatch: pytest.MonkeyPatch,
    backend: str,
    compile_forward: bool | Literal["auto"],
    built: list[bool],
) -> None:
    """On CUDA, COMPILE=auto runs passes of under 1,024 padded tokens as compiled graphs, traced during the
    load's warm-up, so no request pays a trace: a warmed shape under the bound replays its graph without
    calling the encoder's Python at all, and a pass at the bound builds its graph (asking to queue its first
    layers early, which only a built graph can)."""
    from embedserver.runtime import device

    runner = load_runner(ModelSpec(name="tiny", source=str(tiny_qwen3)))  # loaded as this machine's backend
    monkeypatch.setattr(device, "backend", lambda: backend)  # readied as the GPU's: the warm-up, the policy
    monkeypatch.setattr(device, "bound_gpu_memory", lambda workspace: None)
    plan = DevicePlan(max_batch=2, max_tokens=1024, compile_forward=compile_forward)
    assert ready_for_device(runner, plan) is runner

    asked: list[bool] = []
    states = runner.encoder.last_token_states  # type: ignore[attr-defined]

    def spy(ids: Any, lengths: Any, *, queue_early: bool = False) -> Any:
        asked.append(queue_early)
        return states(ids, lengths, queue_early=queue_early)

    monkeypatch.setattr(runner.encoder, "last_token_states", spy)
    one_text = [np.arange(1, 120, dtype=np.int32)]  # 1 x 128 padded
    two_long = [np.arange(1, 500, dtype=np.int32)] * 2  # 2 x 512: 1,024 padded tokens
    assert runner.embed(one_text).shape == (1, 64) and runner.embed(two_long).shape == (2, 64)
    assert asked == built
