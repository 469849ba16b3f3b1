#!/usr/bin/env bash
# The HTTP API with curl: embeddings (OpenAI's shape and the native one), reranking, tokenization.
#   bash examples/curl.sh                  # against EMBEDSERVER_URL, else http://127.0.0.1:8000
set -euo pipefail
url=${EMBEDSERVER_URL:-http://127.0.0.1:8000}
json=(-sf -H 'content-type: application/json')

echo "== /v1/embeddings (OpenAI's shape): two texts, the first 8 numbers of each vector"
curl "${json[@]}" "$url/v1/embeddings" -d '{"model": "default", "input": ["a cat sat on the mat", "stocks fell"]}' |
    python3 -c 'import json, sys; a = json.load(sys.stdin); [print(d["index"], len(d["embedding"]), [round(x, 3) for x in d["embedding"][:8]]) for d in a["data"]]; print("tokens", a["usage"]["prompt_tokens"])'

echo "== /embed (native): a query with the model's instruction"
curl "${json[@]}" "$url/v1/embeddings" -d '{"input": "what do cats eat", "input_type": "query", "dimensions": 32}' |
    python3 -c 'import json, sys; print("dimension", len(json.load(sys.stdin)["data"][0]["embedding"]))'

echo "== /v1/rerank: documents best first (needs a reranker: RERANK_MODEL)"
curl "${json[@]}" "$url/v1/rerank" -d '{"query": "what do cats eat", "documents": ["Cats eat meat.", "Stocks fell today."], "return_documents": true}' |
    python3 -c 'import json, sys; [print(round(r["relevance_score"], 4), r["document"]["text"]) for r in json.load(sys.stdin)["results"]]'

echo "== /tokenize: the ids the server would embed"
curl "${json[@]}" "$url/tokenize" -d '{"input": "hello world"}' |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["data"][0]["tokens"])'
