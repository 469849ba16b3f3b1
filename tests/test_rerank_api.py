"""Reranking over HTTP: the shapes Cohere, Jina and text-embeddings-inference clients send, scores equal to the
reranker's own, limits and wrong-endpoint errors; the official cohere client against the real server process,
in one process and with front-ends."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from embedserver.server.engine_app import create_app
from embedserver.settings import Settings
from tests.conftest import started

REFERENCE = json.loads((Path(__file__).parent / "fixtures" / "rerank_reference.json").read_text())
CASE = REFERENCE["cases"][0]  # the default instruction, the full limit
DOCUMENTS = REFERENCE["documents"]


@pytest.fixture
async def rerank_client(make_settings: Callable[..., Settings]) -> AsyncIterator[httpx.AsyncClient]:
    async with started(create_app(make_settings(rerank_model="tiny-rerank"))) as client:
        yield client


def _error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    return error


async def test_cohere_shape_is_sorted_by_the_reference_scores(rerank_client: httpx.AsyncClient) -> None:
    documents = [DOCUMENTS[0], {"text": DOCUMENTS[1]}, *DOCUMENTS[2:]]  # strings and {text} objects
    body = {"model": "tiny-rerank", "query": CASE["query"], "documents": documents, "return_documents": True}
    r = await rerank_client.post("/v1/rerank", json=body)
    assert r.status_code == 200, r.text
    answer = r.json()
    results = answer["results"]
    assert [item["index"] for item in results] == list(np.argsort(CASE["scores"])[::-1])
    for item in results:
        assert item["relevance_score"] == pytest.approx(CASE["scores"][item["index"]], abs=1e-4)
        assert item["document"] == {"text": DOCUMENTS[item["index"]]}
    assert answer["model"] == "tiny-rerank" and answer["usage"]["total_tokens"] > 0


async def test_top_n_and_the_default_reranker(rerank_client: httpx.AsyncClient) -> None:
    r = await rerank_client.post(
        "/v1/rerank", json={"query": CASE["query"], "documents": DOCUMENTS, "top_n": 2}
    )
    results = r.json()["results"]
    assert len(results) == 2 and "document" not in results[0]
    assert results[0]["relevance_score"] == pytest.approx(max(CASE["scores"]), abs=1e-4)


async def test_tei_shape_on_rerank(rerank_client: httpx.AsyncClient) -> None:
    body = {"query": CASE["query"], "texts": DOCUMENTS, "return_text": True}
    answer = (await rerank_client.post("/rerank", json=body)).json()
    assert isinstance(answer, list) and len(answer) == len(DOCUMENTS)
    assert [item["index"] for item in answer] == list(np.argsort(CASE["scores"])[::-1])
    assert answer[0]["score"] == pytest.approx(max(CASE["scores"]), abs=1e-4)
    assert answer[0]["text"] == DOCUMENTS[answer[0]["index"]]
    raw = (await rerank_client.post("/rerank", json={**body, "raw_scores": True})).json()
    p = 1 / (1 + np.exp(-np.array([item["score"] for item in raw])))
    assert np.allclose(sorted(p), sorted(CASE["scores"]), atol=1e-4)  # raw: logit(yes) - logit(no)
    cohere_shape = (await rerank_client.post("/rerank", json={"query": "q", "documents": ["d"]})).json()
    assert "results" in cohere_shape


async def test_instruction_changes_the_prompt_as_the_reference_did(rerank_client: httpx.AsyncClient) -> None:
    case = next(c for c in REFERENCE["cases"] if c["instruction"] != CASE["instruction"])
    body = {"query": case["query"], "documents": DOCUMENTS[:4], "instruction": case["instruction"]}
    results = (await rerank_client.post("/v1/rerank", json=body)).json()["results"]
    for item in results:
        assert item["relevance_score"] == pytest.approx(case["scores"][item["index"]], abs=1e-4)


async def test_rerank_errors_say_what_to_do(rerank_client: httpx.AsyncClient) -> None:
    embedding = await rerank_client.post(
        "/v1/rerank", json={"model": "tiny", "query": "q", "documents": ["d"]}
    )
    error = _error(embedding, 400)
    assert error["code"] == "wrong_model_type" and "/v1/embeddings" in error["message"]
    reranker = await rerank_client.post("/v1/embeddings", json={"model": "tiny-rerank", "input": "x"})
    error = _error(reranker, 400)
    assert error["code"] == "wrong_model_type" and "/v1/rerank" in error["message"]
    assert _error(await rerank_client.post("/v1/rerank", json={"query": "q", "documents": []}), 400)
    assert _error(await rerank_client.post("/v1/rerank", json={"query": " ", "documents": ["d"]}), 400)
    for body in ('{"query": "q", "documents": ["a\\ud800b"]}', '{"query": "\\udfff", "documents": ["d"]}'):
        lone = await rerank_client.post(
            "/v1/rerank", content=body, headers={"content-type": "application/json"}
        )
        assert "surrogate" in _error(lone, 400)["message"]  # refused, not a tokenizer error and a 500
    assert _error(
        await rerank_client.post("/rerank", json={"query": 1, "texts": ["d"]}), 422
    )  # as TEI answers
    too_many = {"query": "q", "documents": ["d"] * 3000}
    assert (
        "MAX_REQUEST_INPUTS" in _error(await rerank_client.post("/v1/rerank", json=too_many), 400)["message"]
    )
    unknown = await rerank_client.post("/v1/rerank", json={"model": "nope", "query": "q", "documents": ["d"]})
    assert _error(unknown, 404)["code"] == "model_not_found"


async def test_models_and_health_cover_rerankers(rerank_client: httpx.AsyncClient) -> None:
    await rerank_client.post("/v1/rerank", json={"query": "q", "documents": ["d"]})
    cards = {card["id"]: card for card in (await rerank_client.get("/v1/models")).json()["data"]}
    assert cards["tiny-rerank"]["task"] == "rerank" and cards["tiny"]["task"] == "embed"
    assert cards["tiny-rerank"]["loaded"] is True
    health = (await rerank_client.get("/health")).json()
    assert health["models"]["tiny-rerank"]["status"] == "ready"


@pytest.mark.slow
def test_the_cohere_client_reranks_against_the_server(pair_server: str) -> None:
    import cohere

    client = cohere.Client(api_key="unused", base_url=pair_server)
    response = client.rerank(
        model="tiny-rerank", query=CASE["query"], documents=DOCUMENTS, top_n=3, return_documents=True
    )
    assert [r.index for r in response.results] == list(np.argsort(CASE["scores"])[::-1][:3])
    for r in response.results:
        assert r.relevance_score == pytest.approx(CASE["scores"][r.index], abs=1e-4)
        assert r.document is not None and r.document.text == DOCUMENTS[r.index]
    v2 = cohere.ClientV2(api_key="unused", base_url=pair_server).rerank(
        model="tiny-rerank", query=CASE["query"], documents=DOCUMENTS
    )
    assert [r.index for r in v2.results] == list(np.argsort(CASE["scores"])[::-1])


@pytest.mark.slow
def test_tei_shape_and_errors_cross_the_link(pair_server: str) -> None:
    answer = httpx.post(f"{pair_server}/rerank", json={"query": CASE["query"], "texts": DOCUMENTS}).json()
    assert answer[0]["score"] == pytest.approx(max(CASE["scores"]), abs=1e-4)
    wrong = httpx.post(f"{pair_server}/v1/rerank", json={"model": "tiny", "query": "q", "documents": ["d"]})
    assert wrong.status_code == 400 and wrong.json()["error"]["code"] == "wrong_model_type"
    embed = httpx.post(f"{pair_server}/v1/embeddings", json={"model": "tiny-rerank", "input": "x"})
    assert embed.status_code == 400 and embed.json()["error"]["code"] == "wrong_model_type"
    metrics = httpx.get(f"{pair_server}/metrics").text
    assert 'embedserver_texts_total{model="tiny-rerank"}' in metrics
    tokens = httpx.post(f"{pair_server}/tokenize", json={"input": "x"}).json()["data"][0]["tokens"]
    text = httpx.post(f"{pair_server}/detokenize", json={"tokens": tokens}).json()["data"][0]["text"]
    assert text == "x<|endoftext|>"
