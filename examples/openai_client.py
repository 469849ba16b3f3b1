"""Embeddings through the official `openai` client, pointed at embedserver.

python examples/openai_client.py          # against EMBEDSERVER_URL, else http://127.0.0.1:8000
"""

from __future__ import annotations

import os

import numpy as np
from openai import OpenAI

url = os.environ.get("EMBEDSERVER_URL", "http://127.0.0.1:8000")
# The key is only checked when the server has API_KEY set; the client insists on one.
client = OpenAI(base_url=f"{url}/v1", api_key=os.environ.get("EMBEDSERVER_API_KEY", "unused"))

documents = [
    "Cats are small carnivorous mammals.",
    "The stock market fell sharply today.",
    "Kittens drink milk.",
]
query = "what do cats eat"
result = client.embeddings.create(model="default", input=documents)
vectors = np.array([item.embedding for item in result.data])
# A query gets the model's instruction (Qwen3-Embedding's way of asking); the server adds it with input_type.
query_vector = np.array(
    client.embeddings.create(model="default", input=query, extra_body={"input_type": "query"})
    .data[0]
    .embedding
)
print(f"model {result.model}, dimension {vectors.shape[1]}, {result.usage.prompt_tokens} tokens")
for score, text in sorted(zip(vectors @ query_vector, documents, strict=True), reverse=True):
    print(f"{score:.4f}  {text}")
