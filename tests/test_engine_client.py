"""A front-end's RemoteService prepares requests itself: the engine gets token ids and cache keys, never
texts, and the answers are finished (Matryoshka, normalization, repeated texts) as one process would. Driven
against a stand-in for the engine's link that answers as the engine does."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from embedserver.errors import InvalidRequest, ModelNotFound
from embedserver.server import ipc
from embedserver.server.engine_client import RemoteService
from embedserver.service.calls import EmbedCall
from embedserver.service.requests import PreparedRequest
from embedserver.settings import Settings
from embedserver.tokenization.tokenizer import TextTokenizer

DIM = 8


class Engine:
    """Answers DESCRIBE with the tiny model's description and EMBED with one known vector per sequence
    (its length and first id), remembering what it was sent."""

    def __init__(self, tokenizer_path: Path) -> None:
        self.info = {
            "name": "tiny",
            "source": "/models/tiny",
            "revision": "r1",
            "pooling": "last",
            "dimension": DIM,
            "max_length": 512,
            "query_task": "Find passages",
            "tokenizer_path": str(tokenizer_path),
            "end_token": "<|endoftext|>",
        }
        self.sent: list[tuple[int, Any, bytes]] = []
        self.cached: set[bytes] = set()

    async def call(self, kind: int, meta: Any, payload: bytes = b"") -> tuple[int, Any, bytes]:
        self.sent.append((kind, meta, payload))
        if kind == ipc.DESCRIBE:
            if meta["model"] not in (None, "tiny"):
                raise ModelNotFound(f"model {meta['model']} does not exist")
            return ipc.INFO, self.info, b""
        request = ipc.unpack_request(meta, payload)
        vectors = np.array([[len(s), s[0], *range(DIM - 2)] for s in request.sequences], dtype=np.float32)
        keys = request.keys or [b""] * len(request.sequences)
        cached = [key in self.cached for key in keys]
        self.cached.update(k for k in keys if k)
        return ipc.RESULT, {"cached": cached, "shape": vectors.shape}, vectors.tobytes()


@pytest.fixture
def engine(tiny_qwen3: Path) -> Engine:
    return Engine(tiny_qwen3 / "tokenizer.json")


@pytest.fixture
def service(engine: Engine) -> RemoteService:
    return RemoteService(engine, Settings(_env_file=None))  # type: ignore[arg-type,call-arg]


def sent_ids(request: PreparedRequest) -> list[list[int]]:
    """The engine's ids (int32 views of the frame) as lists."""
    return [np.asarray(ids).tolist() for ids in request.sequences]


async def test_the_engine_gets_token_ids_and_keys_never_texts(
    engine: Engine, service: RemoteService, tiny_qwen3: Path
) -> None:
    texts = ["first text", "second, longer text", "first text"]
    outcome = await service.embed(EmbedCall(inputs=texts, normalize=False))
    (embed_kind, meta, payload) = engine.sent[-1]
    assert embed_kind == ipc.EMBED and meta["model"] == "tiny" and meta["keyed"]
    assert not any(text.encode() in payload for text in texts) and "first" not in str(meta)
    tokenizer = TextTokenizer(tiny_qwen3 / "tokenizer.json", end_token="<|endoftext|>")
    expected = tokenizer.encode_batch(texts[:2])  # the repeated text is sent once
    assert sent_ids(ipc.unpack_request(meta, payload)) == expected
    assert outcome.tokens == sum(len(ids) for ids in expected) + len(expected[0])
    assert outcome.vectors.shape == (3, DIM) and outcome.cached == [False, False, False]
    assert outcome.vectors[:, 0].tolist() == [len(expected[0]), len(expected[1]), len(expected[0])]
    again = await service.embed(EmbedCall(inputs=["first text"]))
    assert again.cached == [True]  # the key is the same, so the engine's cache answers


async def test_queries_matryoshka_and_token_inputs_are_prepared_here(
    engine: Engine, service: RemoteService, tiny_qwen3: Path
) -> None:
    tokenizer = TextTokenizer(tiny_qwen3 / "tokenizer.json", end_token="<|endoftext|>")
    await service.embed(EmbedCall(inputs=["what is mlx"], input_type="query"))
    sent = ipc.unpack_request(engine.sent[-1][1], engine.sent[-1][2])
    assert sent_ids(sent) == tokenizer.encode_batch(["Instruct: Find passages\nQuery:what is mlx"])
    short = await service.embed(EmbedCall(inputs=["x"], dimensions=4))
    assert short.vectors.shape == (1, 4) and np.allclose(np.linalg.norm(short.vectors, axis=1), 1.0)
    ids = await service.embed(EmbedCall(inputs=[[5, 6, 7]]))
    sent = ipc.unpack_request(engine.sent[-1][1], engine.sent[-1][2])
    assert sent.keys is None and sent_ids(sent) == [tokenizer.wrap_ids([5, 6, 7])]
    assert ids.cached == [False]


async def test_bad_requests_are_refused_here_with_the_engines_errors(
    engine: Engine, service: RemoteService
) -> None:
    with pytest.raises(InvalidRequest, match="dimensions must be between 1 and 8 for model tiny, got 9"):
        await service.embed(EmbedCall(inputs=["x"], dimensions=9))
    with pytest.raises(
        InvalidRequest, match=r"input\[0\] has 602 tokens, more than this model.s maximum of 512"
    ):
        await service.embed(EmbedCall(inputs=["word " * 600], truncate=False))
    with pytest.raises(ModelNotFound):
        await service.embed(EmbedCall(inputs=["x"], model="other"))
    assert all(kind == ipc.DESCRIBE for kind, _, _ in engine.sent)  # nothing reached the model
    assert [meta["model"] for _, meta, _ in engine.sent] == [
        None,
        "other",
    ]  # described once, failures not kept
