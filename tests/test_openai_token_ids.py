"""Token-id inputs on /v1/embeddings are OpenAI's ids (cl100k_base) unless OPENAI_TOKEN_IDS=model: decoded to
their text and embedded as that text. Checked against tiktoken's own encoder, through the API, and with
LangChain's OpenAIEmbeddings (which sends tiktoken ids by default) and its Cohere reranker against the real
server process, offline."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest

from embedserver.errors import InvalidRequest
from embedserver.server.engine_app import create_app
from embedserver.settings import Settings
from embedserver.tokenization import openai_ids
from tests.conftest import started

TEXTS = [
    "hello world",
    "Qwen3 embeddings, served: naïve café ß — 東京の天気 🌧️ and ñandú",
    "  leading spaces, tabs\tand\nnewlines  ",
    "code: `x = {'a': [1, 2]}  # and 'quotes'`",
    "Ελληνικά, русский, עברית, العربية, हिन्दी, 한국어",
]


@pytest.fixture
def cl100k(tiktoken_cache: Path, monkeypatch: pytest.MonkeyPatch) -> object:
    import tiktoken

    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tiktoken_cache))
    return tiktoken.get_encoding("cl100k_base")  # checks the file against the same pinned hash


def test_decoding_gives_back_what_tiktoken_encoded(cl100k: object) -> None:
    encode = cl100k.encode  # type: ignore[attr-defined]
    for text in TEXTS:
        assert openai_ids.decode(encode(text), 0) == text
    special = "<|endoftext|> is one special token when a client allows it, <|fim_prefix|> another"
    assert openai_ids.decode(encode(special, allowed_special="all"), 0) == special
    assert openai_ids.decode(encode(special, disallowed_special=()), 0) == special  # as plain text
    assert encode("hello world") == [15339, 1917]


@pytest.mark.parametrize("bad", [100256, 100261, 100277, 10**9, -1])
def test_ids_outside_cl100k_are_the_callers_error(bad: int) -> None:
    with pytest.raises(InvalidRequest) as raised:
        openai_ids.decode([15339, bad], 3)
    assert raised.value.code == "invalid_token_id" and f"input[3] holds {bad}" in raised.value.message


def test_a_file_that_is_not_openais_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    openai_ids._table.cache_clear()
    monkeypatch.setattr(openai_ids, "CL100K_SHA256", "0" * 64)
    try:
        with pytest.raises(InvalidRequest) as raised:
            openai_ids.decode([15339], 0)
        assert raised.value.code == "token_ids_unsupported" and "hash differs" in raised.value.message
    finally:
        openai_ids._table.cache_clear()


@pytest.mark.parametrize("layout", ["fast-lane", "fastapi"])
async def test_openai_ids_embed_as_their_text(
    make_settings: Callable[..., Settings], cl100k: object, layout: str
) -> None:
    encode = cl100k.encode  # type: ignore[attr-defined]
    async with started(create_app(make_settings(fast_lane=layout == "fast-lane"))) as client:
        by_text = (await client.post("/v1/embeddings", json={"input": TEXTS})).json()
        by_ids = (await client.post("/v1/embeddings", json={"input": [encode(t) for t in TEXTS]})).json()
        one = (await client.post("/v1/embeddings", json={"input": encode(TEXTS[1])})).json()
        bad = await client.post("/v1/embeddings", json={"input": [[15339, 100256]]})
        blank = await client.post("/v1/embeddings", json={"input": [encode("   ")]})
    a = np.array([d["embedding"] for d in by_text["data"]])
    b = np.array([d["embedding"] for d in by_ids["data"]])
    assert np.allclose(a, b, atol=1e-5)
    assert np.allclose(one["data"][0]["embedding"], a[1], atol=1e-5)
    assert by_ids["usage"] == by_text["usage"]  # the model's tokens, not cl100k's
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_token_id"
    assert blank.status_code == 400 and "whitespace" in blank.json()["error"]["message"]


@pytest.mark.slow
def test_langchain_openai_embeddings_with_their_defaults(
    pair_server: str, tiktoken_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from langchain_openai import OpenAIEmbeddings

    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tiktoken_cache))
    # base_url and api_key are pydantic aliases, which mypy does not see.
    embeddings = OpenAIEmbeddings(
        model="default", base_url=f"{pair_server}/v1", api_key="unused", max_retries=0
    )  # type: ignore[call-arg]
    assert embeddings.check_embedding_ctx_length  # the default: LangChain sends tiktoken ids
    got = np.array(embeddings.embed_documents(TEXTS))
    query = np.array(embeddings.embed_query(TEXTS[0]))
    want = np.array(
        [
            d["embedding"]
            for d in httpx.post(f"{pair_server}/v1/embeddings", json={"input": TEXTS}).json()["data"]
        ]
    )
    assert got.shape == want.shape and np.allclose(got, want, atol=1e-5)
    assert np.allclose(query, want[0], atol=1e-5)


@pytest.mark.slow
def test_langchain_cohere_rerank_against_the_server(pair_server: str) -> None:
    from langchain_cohere import CohereRerank
    from langchain_core.documents import Document

    reference = json.loads((Path(__file__).parent / "fixtures" / "rerank_reference.json").read_text())
    case, texts = reference["cases"][0], reference["documents"]
    reranker = CohereRerank(model="tiny-rerank", base_url=pair_server, cohere_api_key="unused", top_n=3)
    kept = reranker.compress_documents([Document(page_content=t) for t in texts], case["query"])
    best = list(np.argsort(case["scores"])[::-1][:3])
    assert [texts.index(d.page_content) for d in kept] == best
    for doc in kept:
        score = case["scores"][texts.index(doc.page_content)]
        assert doc.metadata["relevance_score"] == pytest.approx(score, abs=1e-4)
