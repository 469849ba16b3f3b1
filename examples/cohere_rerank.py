"""Reranking through the official `cohere` client, pointed at embedserver (both of its API versions).

python examples/cohere_rerank.py          # against EMBEDSERVER_URL, else http://127.0.0.1:8000
"""

from __future__ import annotations

import os

import cohere

url = os.environ.get("EMBEDSERVER_URL", "http://127.0.0.1:8000")
client = cohere.ClientV2(api_key=os.environ.get("EMBEDSERVER_API_KEY", "unused"), base_url=url)

documents = ["Cats eat meat and fish.", "The stock market fell sharply today.", "Kittens drink milk."]
# No model named: the server's RERANK_MODEL scores the pairs (Qwen3-Reranker's P(yes)).
response = client.rerank(model="default", query="what do cats eat", documents=documents, top_n=3)
for result in response.results:
    print(f"{result.relevance_score:.4f}  {documents[result.index]}")
