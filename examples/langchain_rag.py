"""LangChain with embedserver: OpenAIEmbeddings as it comes (it sends tiktoken token ids, which the server reads
as OpenAI's and embeds as their text) and the Cohere-compatible reranker, pointed at the server.

    python examples/langchain_rag.py          # against EMBEDSERVER_URL, else http://127.0.0.1:8000
"""

from __future__ import annotations

import os

import numpy as np
from langchain_cohere import CohereRerank
from langchain_core.documents import Document
from langchain_openai import OpenAIEmbeddings

url = os.environ.get("EMBEDSERVER_URL", "http://127.0.0.1:8000")
key = os.environ.get("EMBEDSERVER_API_KEY", "unused")

texts = ["Cats are small carnivorous mammals.", "The stock market fell sharply today.", "Kittens drink milk."]
query = "what do cats eat"

embeddings = OpenAIEmbeddings(model="default", base_url=f"{url}/v1", api_key=key)  # type: ignore[call-arg]
vectors = np.array(embeddings.embed_documents(texts))
query_vector = np.array(embeddings.embed_query(query))
print("by embedding:")
for score, text in sorted(zip(vectors @ query_vector, texts, strict=True), reverse=True):
    print(f"  {score:.4f}  {text}")

# The reranker named by the server's RERANK_MODEL; name one with model="rerank-small" etc.
reranker = CohereRerank(model="default", base_url=url, cohere_api_key=key, top_n=2)  # type: ignore[call-arg]
print("reranked:")
for document in reranker.compress_documents([Document(page_content=t) for t in texts], query):
    print(f"  {document.metadata['relevance_score']:.4f}  {document.page_content}")
