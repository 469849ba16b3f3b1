"""Request bodies: what each field accepts, and what it refuses before any model is involved."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from embedserver.api.schemas import EmbedBatchRequest, EmbeddingRequest, EmbedRequest


@pytest.mark.parametrize(
    "value",
    ["one text", ["a", "b"], [1, 2, 3], [[1, 2], [3]]],
)
def test_openai_input_accepts_the_four_shapes(value: Any) -> None:
    assert EmbeddingRequest(input=value).input == value


@pytest.mark.parametrize(
    "value",
    [None, 5, 1.5, True, {"a": 1}, ["a", 1], [1, "a"], [["a"]], [[1, "a"]], [[]], [True, False], [[1.5]]],
)
def test_openai_input_refuses_everything_else(value: Any) -> None:
    with pytest.raises(ValidationError):
        EmbeddingRequest(input=value)


def test_openai_defaults_and_unknown_fields() -> None:
    body = EmbeddingRequest.model_validate({"input": "x", "some_future_field": 1})
    assert body.encoding_format == "float" and body.normalize is True and body.dimensions is None
    assert body.model is None and body.truncate is None and body.input_type is None


@pytest.mark.parametrize(
    "fields",
    [
        {"encoding_format": "int8"},
        {"dimensions": "64"},
        {"dimensions": 6.5},
        {"normalize": "yes"},
        {"input_type": "passage"},
        {"model": 3},
        {"user": 1},
        {"truncate": "false"},
    ],
)
def test_openai_options_are_strict(fields: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        EmbeddingRequest.model_validate({"input": "x", **fields})


def test_native_bodies() -> None:
    assert EmbedRequest(text="hi").normalize is True
    assert EmbedBatchRequest(texts=["a", "b"], normalize=False).texts == ["a", "b"]
    bad_texts: list[dict[str, object]] = [{"text": None}, {"text": 3}, {}]
    for bad in bad_texts:
        with pytest.raises(ValidationError):
            EmbedRequest.model_validate(bad)
    bad_batches: list[dict[str, object]] = [{"texts": "a"}, {"texts": [1]}, {"texts": None}]
    for bad in bad_batches:
        with pytest.raises(ValidationError):
            EmbedBatchRequest.model_validate(bad)
