"""`embedserver embed | rerank | models | health`: the server's API from a shell, with exit codes from
embedserver/cli/client.py (0 done, 1 the server refused, 2 usage, 3 no server)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from embedserver.cli import client


def add_parsers(commands: Any) -> None:
    embed = commands.add_parser(
        "embed",
        help="embed texts (arguments, or one per line of a file) against a server or in this process",
        description="Print one JSON line per text ({index, embedding}) or write an .npy matrix.",
    )
    embed.add_argument("texts", nargs="*", help="texts to embed")
    embed.add_argument("--file", type=Path, help="one text per line ('-': standard input)")
    embed.add_argument("--model", help="catalog name, alias or directory (default: the server's default)")
    embed.add_argument("--input-type", choices=["query", "document"])
    embed.add_argument("--dimensions", type=int, help="Matryoshka: keep the first N dimensions")
    embed.add_argument("--output", type=Path, help="a .npy file for the matrix, else JSON lines to this file")
    embed.add_argument(
        "--batch", type=int, default=256, help="texts per request (at most the server's MAX_REQUEST_INPUTS)"
    )
    where = embed.add_mutually_exclusive_group()
    where.add_argument("--url", help="a running server (default: EMBEDSERVER_URL, else HOST and PORT)")
    where.add_argument(
        "--in-process",
        action="store_true",
        help="load the model here (MODEL_NAME, ...) instead of asking a server",
    )
    embed.set_defaults(run=run_embed)

    rerank = commands.add_parser(
        "rerank",
        help="order documents by relevance to a query",
        description="Print one JSON line per result.",
    )
    rerank.add_argument("query")
    rerank.add_argument("documents", nargs="*")
    rerank.add_argument("--file", type=Path, help="one document per line ('-': standard input)")
    rerank.add_argument("--model", help="a reranker (default: the server's RERANK_MODEL)")
    rerank.add_argument("--top-n", type=int)
    rerank.add_argument("--url")
    rerank.set_defaults(run=run_rerank)

    models = commands.add_parser("models", help="list the models a server can serve")
    models.add_argument("--json", action="store_true", help="the whole /v1/models answer")
    models.add_argument("--url")
    models.set_defaults(run=run_models)

    health = commands.add_parser(
        "health", help="print a server's /health; exit 0 when it is ready to serve, 1 when not, 3 when down"
    )
    health.add_argument("--url")
    health.set_defaults(run=run_health)


def _lines(texts: list[str], file: Path | None) -> list[str]:
    if file is not None:
        source = sys.stdin.read() if str(file) == "-" else file.read_text(encoding="utf-8")
        texts = texts + [line for line in source.splitlines() if line.strip()]
    if not texts:
        raise client.CommandError(client.USAGE, "no texts: give them as arguments or with --file")
    return texts


def run_embed(args: argparse.Namespace) -> int:
    texts = _lines(args.texts, args.file)
    if args.batch < 1:
        raise client.CommandError(client.USAGE, "--batch must be at least 1")
    vectors = _embed_in_process(args, texts) if args.in_process else _embed_remote(args, texts)
    if args.output is not None and args.output.suffix == ".npy":
        import numpy as np

        np.save(args.output, np.asarray(vectors, dtype=np.float32))
        return client.OK
    out = args.output.open("w") if args.output is not None else sys.stdout
    try:
        for index, vector in enumerate(vectors):
            out.write(json.dumps({"index": index, "embedding": [float(x) for x in vector]}) + "\n")
    finally:
        if out is not sys.stdout:
            out.close()
    return client.OK


def _embed_remote(args: argparse.Namespace, texts: list[str]) -> list[list[float]]:
    url = args.url or client.default_url()
    options = {
        key: value
        for key, value in {
            "model": args.model,
            "input_type": args.input_type,
            "dimensions": args.dimensions,
        }.items()
        if value is not None
    }
    vectors: list[list[float]] = []
    for start in range(0, len(texts), args.batch):
        answer = client.call(url, "/v1/embeddings", {"input": texts[start : start + args.batch], **options})
        vectors += [item["embedding"] for item in sorted(answer["data"], key=lambda item: item["index"])]
    return vectors


def _embed_in_process(args: argparse.Namespace, texts: list[str]) -> list[list[float]]:
    """The same service the server runs, without HTTP: loads MODEL_NAME (or the default) in this process."""
    import asyncio

    from embedserver.errors import APIError
    from embedserver.server.engine_app import create_app
    from embedserver.service.calls import EmbedCall
    from embedserver.settings import Settings

    async def embed() -> list[list[float]]:
        app = create_app(Settings(), http=False)
        async with app.router.lifespan_context(app):
            await app.state.startup
            service = app.state.server.service
            vectors: list[list[float]] = []
            for start in range(0, len(texts), args.batch):
                call = EmbedCall(
                    inputs=texts[start : start + args.batch],
                    model=args.model,
                    input_type=args.input_type,
                    dimensions=args.dimensions,
                )
                vectors += [list(map(float, v)) for v in (await service.embed(call)).vectors]
            return vectors

    try:
        return asyncio.run(embed())
    except APIError as exc:
        raise client.CommandError(client.SERVER_ERROR, f"{exc.status}: {exc.message}") from None


def run_rerank(args: argparse.Namespace) -> int:
    documents = _lines(args.documents, args.file)
    body: dict[str, Any] = {"query": args.query, "documents": documents, "return_documents": True}
    if args.model is not None:
        body["model"] = args.model
    if args.top_n is not None:
        body["top_n"] = args.top_n
    answer = client.call(args.url or client.default_url(), "/v1/rerank", body)
    for result in answer["results"]:
        line = {"index": result["index"], "relevance_score": result["relevance_score"]}
        print(json.dumps(line | {"document": result["document"]["text"]}))
    return client.OK


def run_models(args: argparse.Namespace) -> int:
    answer = client.call(args.url or client.default_url(), "/v1/models")
    if args.json:
        print(json.dumps(answer, indent=2))
    else:
        for model in answer["data"]:
            print(model["id"])
    return client.OK


def run_health(args: argparse.Namespace) -> int:
    try:
        answer = client.call(args.url or client.default_url(), "/health", timeout=10.0)
    except client.CommandError as exc:
        if exc.body is None:
            raise
        print(json.dumps(exc.body, indent=2))  # 503 while loading or draining: the answer says why
        return client.SERVER_ERROR
    print(json.dumps(answer, indent=2))
    return client.OK
