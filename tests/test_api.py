"""Every endpoint through the real app, with the tiny real Qwen3 model as the default."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import httpx
import numpy as np
import pytest

from tests.conftest import QUERY_TASK, metric_sample, started


def _vectors(body: dict[str, Any]) -> np.ndarray:
    return np.array([item["embedding"] for item in body["data"]], dtype=np.float32)


def _assert_openai_error(response: httpx.Response, status: int, param: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"] and error["type"]
    if param is not None:
        assert error["param"] == param
    return dict(error)


async def test_openai_embeddings_shape_and_norm(client: httpx.AsyncClient) -> None:
    r = await client.post(
        "/v1/embeddings", json={"input": ["hello", "a longer second text"], "model": "tiny"}
    )
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "list" and body["model"] == "tiny"
    assert [item["index"] for item in body["data"]] == [0, 1]
    assert all(item["object"] == "embedding" for item in body["data"])
    vectors = _vectors(body)
    assert vectors.shape == (2, 64)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"] > 0


async def test_single_string_input_and_default_model(client: httpx.AsyncClient) -> None:
    one = (await client.post("/v1/embeddings", json={"input": "hello"})).json()
    listed = (await client.post("/v1/embeddings", json={"input": ["hello"], "model": "tiny-alias"})).json()
    assert one["model"] == "tiny" and len(one["data"]) == 1
    assert np.allclose(_vectors(one), _vectors(listed), atol=1e-6)


async def test_batch_equals_single_through_the_api(make_settings: Any) -> None:
    from embedserver.server.engine_app import create_app

    # Lengths within twice each other's padded length (16 and 32 tokens), so the batch is one pass that pads
    # the short texts to the long one (further apart, plan_batches would give each length its own pass).
    texts = ["short", "a considerably longer text " * 4, "中文文本", "mid length text here"]
    # Cache off, so every single request really runs alone through the model.
    async with started(create_app(make_settings(cache_max_entries=0))) as c:
        batch = _vectors((await c.post("/v1/embeddings", json={"input": texts})).json())
        singles = [np.array((await c.post("/embed", json={"text": t})).json()["embedding"]) for t in texts]
        await asyncio.sleep(0)  # a pass's metrics are recorded right after its callers are answered
        metrics = (await c.get("/metrics")).text
        assert metric_sample(metrics, 'embedserver_batches_total{model="tiny"}') == 1 + len(texts)
    assert ((batch * np.stack(singles)).sum(axis=1) >= 0.99999).all()


async def test_base64_decodes_to_the_float_vector(client: httpx.AsyncClient) -> None:
    payload = {"input": ["hello", "world"], "model": "tiny"}
    floats = _vectors((await client.post("/v1/embeddings", json=payload)).json())
    b64 = (await client.post("/v1/embeddings", json=payload | {"encoding_format": "base64"})).json()
    decoded = np.stack([np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in b64["data"]])
    assert decoded.shape == (2, 64)
    assert np.allclose(decoded, floats, atol=1e-6)


async def test_model_token_ids_equal_the_text(make_settings: Any) -> None:
    """OPENAI_TOKEN_IDS=model: ids of the model's own tokenizer, as /tokenize gives them (OpenAI's cl100k ids
    are the default: tests/test_openai_token_ids.py)."""
    from embedserver.server.engine_app import create_app

    async with started(create_app(make_settings(openai_token_ids="model"))) as client:
        ids = (await client.post("/tokenize", json={"input": "hello world"})).json()["data"][0]["tokens"]
        by_text = _vectors((await client.post("/v1/embeddings", json={"input": "hello world"})).json())
        by_ids = _vectors((await client.post("/v1/embeddings", json={"input": ids})).json())
        by_id_lists = _vectors((await client.post("/v1/embeddings", json={"input": [ids, ids]})).json())
        assert np.allclose(by_ids, by_text, atol=1e-6) and np.allclose(by_id_lists[1], by_text[0], atol=1e-6)
        r = await client.post("/v1/embeddings", json={"input": [ids[0], 10**7]})
        assert "outside the vocabulary" in _assert_openai_error(r, 400)["message"]
        _assert_openai_error(await client.post("/v1/embeddings", json={"input": [-1]}), 400)


async def test_dimensions_truncate_then_renormalize(client: httpx.AsyncClient) -> None:
    full = _vectors((await client.post("/v1/embeddings", json={"input": "matryoshka"})).json())[0]
    short = _vectors(
        (await client.post("/v1/embeddings", json={"input": "matryoshka", "dimensions": 32})).json()
    )[0]
    assert short.shape == (32,)
    assert np.linalg.norm(short) == pytest.approx(1.0, abs=1e-5)
    assert np.allclose(short, full[:32] / np.linalg.norm(full[:32]), atol=1e-5)


@pytest.mark.parametrize("dimensions", [0, -3, 65])
async def test_dimensions_out_of_range_is_400(client: httpx.AsyncClient, dimensions: int) -> None:
    r = await client.post("/v1/embeddings", json={"input": "x", "dimensions": dimensions})
    assert "between 1 and 64" in _assert_openai_error(r, 400, "dimensions")["message"]


async def test_normalize_false_returns_the_raw_pooled_vector(client: httpx.AsyncClient) -> None:
    raw = np.array(
        (await client.post("/embed", json={"text": "raw", "normalize": False})).json()["embedding"]
    )
    unit = np.array((await client.post("/embed", json={"text": "raw"})).json()["embedding"])
    assert abs(np.linalg.norm(raw) - 1.0) > 1e-3
    assert np.allclose(raw / np.linalg.norm(raw), unit, atol=1e-5)


async def test_query_instructions_follow_the_model_card(client: httpx.AsyncClient) -> None:
    async def embed(**fields: Any) -> np.ndarray:
        r = await client.post("/v1/embeddings", json={"input": "what is mlx", **fields})
        assert r.status_code == 200, r.text
        vector: np.ndarray = _vectors(r.json())[0]
        return vector

    query = await embed(input_type="query")
    manual = _vectors(
        (
            await client.post("/v1/embeddings", json={"input": f"Instruct: {QUERY_TASK}\nQuery:what is mlx"})
        ).json()
    )[0]
    assert np.allclose(query, manual, atol=1e-6)
    assert np.allclose(await embed(instruction=QUERY_TASK), query, atol=1e-6)
    document = await embed(input_type="document")
    assert np.allclose(document, await embed(), atol=1e-6) and not np.allclose(document, query, atol=1e-3)


async def test_instruction_on_a_model_without_one_is_400(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/embeddings", json={"input": "x", "model": "minilm", "instruction": "do it"})
    _assert_openai_error(r, 400, "instruction")


@pytest.mark.parametrize(
    "payload",
    [
        {"input": ""},
        {"input": "   \n\t"},
        {"input": []},
        {"input": ["ok", ""]},
        {"input": ["ok", 3]},
        {"input": [["a"]]},
        {"input": None},
        {"input": {"text": "x"}},
        {"input": [[]]},
        {"model": "tiny"},
        {"input": "x", "encoding_format": "int8"},
        {"input": "x", "dimensions": "many"},
        {"input": "x", "model": 5},
    ],
)
async def test_bad_openai_input_is_400_in_openai_shape(
    client: httpx.AsyncClient, payload: dict[str, Any]
) -> None:
    _assert_openai_error(await client.post("/v1/embeddings", json=payload), 400)


async def test_malformed_json_is_400(client: httpx.AsyncClient) -> None:
    r = await client.post(
        "/v1/embeddings", content=b'{"input": ', headers={"content-type": "application/json"}
    )
    assert "not valid JSON" in _assert_openai_error(r, 400)["message"]


async def test_unknown_model_is_404(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/embeddings", json={"input": "x", "model": "/etc/passwd"})
    assert _assert_openai_error(r, 404, "model")["code"] == "model_not_found"


async def test_too_many_inputs_is_400(make_settings: Any) -> None:
    from embedserver.server.engine_app import create_app

    async with started(create_app(make_settings(max_request_inputs=3))) as c:
        r = await c.post("/v1/embeddings", json={"input": ["a", "b", "c", "d"]})
        assert "limit of 3" in _assert_openai_error(r, 400, "input")["message"]
        assert (await c.post("/v1/embeddings", json={"input": ["a", "b", "c"]})).status_code == 200


async def test_large_request_is_split_across_batches(client: httpx.AsyncClient) -> None:
    texts = [f"text number {i}" for i in range(300)]  # MAX_BATCH_SIZE is 256: two batches
    r = await client.post("/v1/embeddings", json={"input": texts})
    assert r.status_code == 200 and len(r.json()["data"]) == 300
    await asyncio.sleep(0)  # a pass is recorded in the loop turn after its callers resume
    metrics = (await client.get("/metrics")).text
    assert metric_sample(metrics, 'embedserver_batches_total{model="tiny"}') >= 2


async def test_long_text_truncates_by_default_and_refuses_without(client: httpx.AsyncClient) -> None:
    long_text = "word " * 2000  # the tiny catalog entry allows 512 tokens
    r = await client.post("/v1/embeddings", json={"input": long_text})
    assert r.status_code == 200 and r.json()["usage"]["prompt_tokens"] == 512
    r = await client.post("/v1/embeddings", json={"input": ["ok", long_text], "truncate": False})
    error = _assert_openai_error(r, 400)
    assert "input[1] has 2002 tokens" in error["message"] and "512" in error["message"]
    assert error["code"] == "context_length_exceeded"


async def test_native_embed_and_batch(client: httpx.AsyncClient) -> None:
    r = await client.post("/embed", json={"text": "native api"})
    body = r.json()
    assert r.status_code == 200
    assert body["dim"] == 64 and len(body["embedding"]) == 64 and body["model"] == "tiny"
    assert body["normalized"] is True and body["processing_time_ms"] >= 0 and body["cached"] is False
    r = await client.post("/embed_batch", json={"texts": ["native api", "two"], "dimensions": 48})
    body = r.json()
    assert r.status_code == 200 and body["count"] == 2 and body["dim"] == 48
    assert np.array(body["embeddings"]).shape == (2, 48)
    assert body["cached"] == [True, False]


@pytest.mark.parametrize(
    ("path", "payload"),
    [
        ("/embed", {"text": ""}),
        ("/embed", {"text": 5}),
        ("/embed", {}),
        ("/embed_batch", {"texts": []}),
        ("/embed_batch", {"texts": ["a", None]}),
        ("/embed_batch", {"texts": "a"}),
    ],
)
async def test_native_validation_errors_are_422(
    client: httpx.AsyncClient, path: str, payload: dict[str, Any]
) -> None:
    _assert_openai_error(await client.post(path, json=payload), 422)


async def test_cache_serves_repeats_identically(client: httpx.AsyncClient) -> None:
    first = (await client.post("/embed", json={"text": "cache me"})).json()
    second = (await client.post("/embed", json={"text": "cache me", "dimensions": 16})).json()
    assert first["cached"] is False and second["cached"] is True
    expected = np.array(first["embedding"][:16]) / np.linalg.norm(first["embedding"][:16])
    assert np.allclose(second["embedding"], expected, atol=1e-5)
    metrics = (await client.get("/metrics")).text
    assert metric_sample(metrics, 'embedserver_cache_hits_total{model="tiny"}') >= 1


async def test_concurrent_requests_share_forward_passes(client: httpx.AsyncClient) -> None:
    # Counted from zero: labelled series appear with the first forward pass.
    before = metric_sample(
        (await client.get("/metrics")).text, 'embedserver_batches_total{model="tiny"}', 0.0
    )
    responses = await asyncio.gather(
        *(client.post("/v1/embeddings", json={"input": f"concurrent text {i}"}) for i in range(32))
    )
    assert all(r.status_code == 200 for r in responses)
    after = metric_sample((await client.get("/metrics")).text, 'embedserver_batches_total{model="tiny"}')
    assert 1 <= after - before < 32


async def test_health(client: httpx.AsyncClient) -> None:
    r = await client.get("/health")
    body = r.json()
    assert r.status_code == 200 and body["status"] == "ok"
    assert body["default_model"] == "tiny" and body["embedding_dim"] == 64
    assert body["models"]["tiny"]["status"] == "ready" and body["fallback"] is None
    assert body["device"]["backend"] in {"cpu", "cuda", "metal"}
    assert body["memory"]["rss_bytes"] > 0 and body["uptime_s"] >= 0
    # The seed project's fields, read by its tooling.
    assert body["model_status"] == "ready" and body["model_name"] == "tiny"
    assert body["memory_usage_mb"] == pytest.approx(body["memory"]["rss_bytes"] / 2**20, abs=0.1)
    assert body["uptime_seconds"] == body["uptime_s"]


async def test_models_listing(client: httpx.AsyncClient) -> None:
    body = (await client.get("/models")).json()
    cards = {card["id"]: card for card in body["data"]}
    assert body["default"] == "tiny"
    assert cards["tiny"]["loaded"] is True and cards["tiny"]["dimension"] == 64 and cards["tiny"]["default"]
    assert cards["minilm"]["loaded"] is False and cards["minilm"]["aliases"] == ["all-minilm-l6-v2"]
    openai = (await client.get("/v1/models")).json()
    assert openai["object"] == "list" and {m["id"] for m in openai["data"]} == set(cards)
    # The seed project's fields, read by its tooling.
    assert (
        body["default_model"] == "tiny"
        and body["models"] == list(cards)
        and body["loaded_models"] == ["tiny"]
    )


async def test_second_model_loads_on_first_use(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/embeddings", json={"input": ["dog", "puppy"], "model": "all-minilm-l6-v2"})
    assert r.status_code == 200 and r.json()["model"] == "minilm"
    dog, puppy = _vectors(r.json())
    assert dog.shape == (384,) and float(dog @ puppy) == pytest.approx(0.80, abs=0.01)
    assert (await client.get("/health")).json()["models"]["minilm"]["status"] == "ready"


async def test_metrics_expose_every_stage(client: httpx.AsyncClient) -> None:
    await client.post("/v1/embeddings", json={"input": "metrics"})
    r = await client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    for name in [
        "embedserver_requests_total",
        "embedserver_request_duration_seconds",
        "embedserver_queue_depth",
        "embedserver_queue_wait_seconds",
        "embedserver_tokenization_seconds",
        "embedserver_inference_seconds",
        "embedserver_batch_size",
        "embedserver_batch_tokens",
        "embedserver_pass_tokens_limit",
        "embedserver_padding_ratio",
        "embedserver_cache_hits_total",
        "embedserver_cache_misses_total",
        "embedserver_model_loads_total",
        "embedserver_model_evictions_total",
        "embedserver_tokens_total",
    ]:
        assert name in r.text, name
    assert metric_sample(r.text, 'embedserver_requests_total{endpoint="/v1/embeddings",status="200"}') >= 1


async def test_counters_exist_at_zero_and_durations_carry_the_status(client: httpx.AsyncClient) -> None:
    """Alerts and rate() see every counter from start-up; a fast 400 or 429 is timed apart from answers."""
    fresh = (await client.get("/metrics")).text
    for series in (
        'embedserver_requests_total{endpoint="/v1/embeddings",status="429"}',
        'embedserver_rejected_total{model="tiny"}',
        'embedserver_expired_total{model="tiny"}',
        'embedserver_worker_restarts_total{model="tiny"}',
        'embedserver_model_loads_total{model="tiny",outcome="error"}',
        'embedserver_client_disconnects_total{stage="body"}',
        'embedserver_connections_closed_total{reason="send_timeout"}',
    ):
        assert metric_sample(fresh, series) == 0, series
    assert "_created" not in fresh
    await client.post("/v1/embeddings", json={"input": "timed"})
    await client.post("/v1/embeddings", json={"input": ""})
    text = (await client.get("/metrics")).text
    for status in ("200", "400"):
        series = f'embedserver_request_duration_seconds_count{{endpoint="/v1/embeddings",status="{status}"}}'
        assert metric_sample(text, series) == 1, series


async def test_unknown_route_is_404_in_openai_shape(client: httpx.AsyncClient) -> None:
    _assert_openai_error(await client.get("/v1/nothing"), 404)
    _assert_openai_error(await client.get("/v1/embeddings"), 405)


async def test_a_body_that_is_not_json_is_told_so(client: httpx.AsyncClient) -> None:
    """curl -d sends a form content type: the answer names the content type to send, not a missing object."""
    form = {"content-type": "application/x-www-form-urlencoded"}
    r = await client.post("/v1/embeddings", content=b'{"input": "x"}', headers=form)
    message = _assert_openai_error(r, 400)["message"]
    assert message == (
        "the request body must be JSON (content-type: application/json), "
        "got 'application/x-www-form-urlencoded'"
    )
    r = await client.post("/embed", content=b'{"text": "x"}', headers=form)
    assert r.status_code == 422 and "must be JSON" in r.json()["error"]["message"]


async def test_an_unknown_model_name_is_not_echoed_whole(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/embeddings", json={"input": "x", "model": "m" * 100_000})
    assert r.status_code == 404 and len(r.content) < 1000
    assert "'" + "m" * 100 + "...'" in r.json()["error"]["message"]


async def test_health_ready_and_metrics_answer_head(client: httpx.AsyncClient) -> None:
    for path in ("/health", "/ready", "/metrics"):
        r = await client.head(path)
        assert r.status_code == 200, path


@pytest.mark.parametrize(
    "body", [b'{"text": "\xff\xfe"}', b'{"text": ' + b"[" * 5000 + b"]" * 5000 + b"}", b'{"text": "cut']
)
async def test_a_body_that_is_not_valid_json_is_an_input_error(
    client: httpx.AsyncClient, body: bytes
) -> None:
    """Invalid UTF-8, nesting past the parser's limit, a truncated body: 400 on the OpenAI API, 422 natively."""
    json_type = {"content-type": "application/json"}
    for path, status in (("/v1/embeddings", 400), ("/embed", 422)):
        r = await client.post(path, content=body, headers=json_type)
        assert r.status_code == status, path
        assert "body is not valid JSON" in r.json()["error"]["message"]


async def test_a_compressed_body_is_refused_not_misread(client: httpx.AsyncClient) -> None:
    headers = {"content-type": "application/json", "content-encoding": "gzip"}
    r = await client.post("/v1/embeddings", content=b'{"input": "x"}', headers=headers)
    assert r.status_code == 415 and r.json()["error"]["code"] == "unsupported_content_encoding"
    identity = {"content-type": "application/json", "content-encoding": "identity"}
    assert (await client.post("/v1/embeddings", json={"input": "x"}, headers=identity)).status_code == 200


async def test_metrics_carry_process_series_and_no_created_series(client: httpx.AsyncClient) -> None:
    await client.post("/v1/embeddings", json={"input": "counted"})
    text = (await client.get("/metrics")).text
    assert metric_sample(text, "process_resident_memory_bytes") > 0
    assert metric_sample(text, "process_cpu_seconds_total") > 0
    assert "_created" not in text


async def test_docs_work_offline(client: httpx.AsyncClient) -> None:
    """Swagger UI's page names only this server's files: nothing for a browser to fetch from the internet."""
    page = await client.get("/docs")
    assert page.status_code == 200 and "/docs/swagger-ui-bundle.js" in page.text
    assert "https://" not in page.text and "http://" not in page.text
    for asset, kind in (("swagger-ui-bundle.js", "javascript"), ("swagger-ui.css", "css")):
        r = await client.get(f"/docs/{asset}")
        assert r.status_code == 200 and kind in r.headers["content-type"] and len(r.content) > 100_000
    assert (await client.get("/openapi.json")).json()["info"]["title"] == "embedserver"
    assert (await client.get("/redoc")).status_code == 404
