"""POST /tokenize and /detokenize: the model's own ids, with the special tokens the server adds, and back."""

from __future__ import annotations

import httpx
import pytest

from embedserver.runtime.runner import ModelRunner


def _runner(client: httpx.AsyncClient, name: str) -> ModelRunner:
    transport = client._transport
    assert isinstance(transport, httpx.ASGITransport)
    slot = transport.app.state.server.service.registry.slots()[name]  # type: ignore[attr-defined]
    runner: ModelRunner = slot.runner
    return runner


async def test_tokenize_gives_the_ids_the_server_embeds(client: httpx.AsyncClient) -> None:
    texts = ["hello world", "機器學習"]
    r = await client.post("/tokenize", json={"input": texts})
    assert r.status_code == 200, r.text
    body = r.json()
    expected = _runner(client, "tiny").tokenizer.encode_batch(texts)
    assert [item["tokens"] for item in body["data"]] == expected
    assert [item["count"] for item in body["data"]] == [len(ids) for ids in expected]
    assert body["model"] == "tiny" and body["max_tokens"] == 512
    assert expected[0][-1] == 151643  # <|endoftext|>, which the server appends and counts
    embedded = (await client.post("/v1/embeddings", json={"input": texts[0]})).json()
    assert embedded["usage"]["prompt_tokens"] == body["data"][0]["count"]
    plain = (
        await client.post("/tokenize", json={"input": "hello world", "add_special_tokens": False})
    ).json()
    assert plain["data"][0]["tokens"] == expected[0][:-1]


async def test_detokenize_reverses_tokenize(client: httpx.AsyncClient) -> None:
    ids = (await client.post("/tokenize", json={"input": "round trip, café"})).json()["data"][0]["tokens"]
    r = await client.post("/detokenize", json={"tokens": ids})
    assert r.json()["data"][0]["text"] == "round trip, café<|endoftext|>"
    both = (await client.post("/detokenize", json={"tokens": [ids[:2], ids[2:3]]})).json()["data"]
    assert [item["index"] for item in both] == [0, 1]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/tokenize", {"input": []}),
        ("/tokenize", {"input": 3}),
        ("/detokenize", {"tokens": [-1]}),
        ("/detokenize", {"tokens": [10**9]}),
        ("/detokenize", {"tokens": []}),
    ],
)
async def test_bad_tokenizer_requests_are_input_errors(
    client: httpx.AsyncClient, path: str, body: object
) -> None:
    r = await client.post(path, json=body)
    assert r.status_code == 422 and "error" in r.json()  # the native API's status for input errors


async def test_a_lone_surrogate_is_an_input_error(client: httpx.AsyncClient) -> None:
    body = '{"input": ["fine", "a\\ud800"]}'
    r = await client.post("/tokenize", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422 and "input[1]" in r.json()["error"]["message"]
