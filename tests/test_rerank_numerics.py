"""Reranker scores that are right: equal to transformers' Qwen3ForCausalLM run as the model card says, batched
equal to alone, and the same from a quantized conversion's two expanded rows as from its full dequantization."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from embedserver.catalog import ModelSpec
from embedserver.runtime.loader import load_runner
from embedserver.runtime.runner import ModelRunner
from embedserver.service.reranking import RerankPrompt, relevance
from embedserver_testing.random_model import write_random_qwen3_reranker

FIXTURE = Path(__file__).parent / "fixtures" / "rerank_reference.json"


@pytest.fixture(scope="module")
def reference() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(FIXTURE.read_text())
    return data


def _runner(directory: Path) -> ModelRunner:
    return load_runner(
        ModelSpec(name="rr", source=str(directory), task="rerank", pooling="last", max_tokens=8192)
    )


@pytest.fixture(scope="module")
def reranker(tiny_reranker: Path) -> ModelRunner:
    return _runner(tiny_reranker)


def _scores(runner: ModelRunner, case: dict[str, Any], documents: list[str]) -> list[float]:
    prompt = RerankPrompt.for_tokenizer(runner.tokenizer)
    sequences = prompt.pairs(
        runner.tokenizer, case["instruction"], case["query"], documents, case["max_length"]
    )
    return relevance(runner.embed(sequences)[:, 0])


def test_scores_equal_transformers_and_the_model_cards_formula(
    reranker: ModelRunner, reference: dict[str, Any]
) -> None:
    for case in reference["cases"]:
        ours = _scores(reranker, case, reference["documents"])
        assert np.allclose(ours, case["scores"], atol=1e-4), (case["query"], ours, case["scores"])


def test_batched_equals_alone_and_the_order_is_stable(
    reranker: ModelRunner, reference: dict[str, Any]
) -> None:
    case = reference["cases"][0]
    documents = reference["documents"]
    batched = _scores(reranker, case, documents)
    alone = [_scores(reranker, case, [document])[0] for document in documents]
    assert np.allclose(batched, alone, atol=1e-5)
    assert list(np.argsort(batched)) == list(np.argsort(case["scores"]))


def test_the_limit_cuts_the_document_and_keeps_the_template(
    reranker: ModelRunner, reference: dict[str, Any]
) -> None:
    case = next(c for c in reference["cases"] if c["max_length"] < 8192)
    prompt = RerankPrompt.for_tokenizer(reranker.tokenizer)
    sequences = prompt.pairs(
        reranker.tokenizer, case["instruction"], case["query"], reference["documents"], case["max_length"]
    )
    long = sequences[-1]
    assert len(long) == case["max_length"]
    assert long[: len(prompt.prefix)] == prompt.prefix and long[-len(prompt.suffix) :] == prompt.suffix


def test_a_quantized_conversion_scores_from_its_two_rows(tmp_path: Path) -> None:
    """MLX conversions quantize lm_head too: the two rows are expanded alone, and score as the whole
    dequantized model does."""
    quantized = _runner(write_random_qwen3_reranker(tmp_path / "q", seed=0, quantize_bits=8))
    prompt = RerankPrompt.for_tokenizer(quantized.tokenizer)
    sequences = prompt.pairs(quantized.tokenizer, "instruct", "query", ["a document", "another one"], 8192)
    scores = relevance(quantized.embed(sequences)[:, 0])
    reference = _runner(write_random_qwen3_reranker(tmp_path / "f", seed=0))
    full = relevance(reference.embed(sequences)[:, 0])
    assert np.allclose(scores, full, atol=0.02)  # 8-bit weights: close, not equal
    assert all(0.0 < s < 1.0 for s in scores)
