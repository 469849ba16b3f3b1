"""LlamaIndex with embedserver: an OpenAI-compatible embedding model and the Cohere-compatible reranker, both
pointed at the server, ranking a few documents for a query.

    python examples/llamaindex_rag.py         # against EMBEDSERVER_URL, else http://127.0.0.1:8000
"""

from __future__ import annotations

import os

import numpy as np
from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode
from llama_index.embeddings.openai_like import OpenAILikeEmbedding
from llama_index.postprocessor.cohere_rerank import CohereRerank

url = os.environ.get("EMBEDSERVER_URL", "http://127.0.0.1:8000")
key = os.environ.get("EMBEDSERVER_API_KEY", "unused")

texts = ["Cats are small carnivorous mammals.", "The stock market fell sharply today.", "Kittens drink milk."]
query = "what do cats eat"

embedding = OpenAILikeEmbedding(model_name="default", api_base=f"{url}/v1", api_key=key)
vectors = np.array(embedding.get_text_embedding_batch(texts))
query_vector = np.array(embedding.get_query_embedding(query))
print("by embedding:")
for score, text in sorted(zip(vectors @ query_vector, texts, strict=True), reverse=True):
    print(f"  {score:.4f}  {text}")

# The reranker named by the server's RERANK_MODEL ("default"); name one with model="rerank-small" etc.
reranker = CohereRerank(model="default", base_url=url, api_key=key, top_n=2)
nodes = [NodeWithScore(node=TextNode(text=t), score=0.0) for t in texts]
print("reranked:")
for node in reranker.postprocess_nodes(nodes, QueryBundle(query)):
    print(f"  {node.score:.4f}  {node.node.get_content()}")
