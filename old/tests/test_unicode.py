"""Unicode edge cases: each gets a 200 or a clear 4xx, never a 500."""

from __future__ import annotations

import httpx
import pytest

CASES = {
    "nul": "before\x00after",
    "bom": "\ufeffbyte order mark",
    "rtl": "مرحبا بالعالم שלום עולם",
    "combining_flood": "e" + "\u0301" * 5000,
    "emoji_megabyte": "😀" * 250_000,
    "cjk_megabyte": "漢" * 350_000,
    "control_chars": "\x01\x02\x1b[31mred\x1b[0m",
    "zero_width": "\u200b\u200c\u200d\u2060",
}


@pytest.mark.parametrize("name", sorted(CASES))
async def test_unicode_inputs_embed_or_fail_clearly(client: httpx.AsyncClient, name: str) -> None:
    r = await client.post("/v1/embeddings", json={"input": CASES[name]})
    assert r.status_code == 200, r.text
    assert len(r.json()["data"][0]["embedding"]) == 64


async def test_lone_surrogate_is_a_400(client: httpx.AsyncClient) -> None:
    # JSON can carry an unpaired surrogate escape; it is not valid Unicode text and cannot be tokenized.
    body = b'{"input": "broken \\ud800 text"}'
    r = await client.post("/v1/embeddings", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    assert "surrogate" in r.json()["error"]["message"]
