"""Qwen3-Reranker's prompt, exactly as its model card's transformers example builds it.

A pair (query, document) becomes prefix + body + suffix, each tokenized on its own with nothing added; the
body is cut at its end (the document's end) so the whole fits the model's limit, the template intact. The
model's answer is read at the last position: P(yes) = sigmoid(logit(yes) - logit(no)), the two-way softmax
the card takes (embedserver/runtime/loader.py keeps just those two rows of the output projection).
"""

from __future__ import annotations

import asyncio
import math
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from embedserver.errors import InvalidRequest
from embedserver.service.calls import RerankCall, RerankOutcome
from embedserver.service.requests import check_unicode
from embedserver.tokenization.tokenizer import TextTokenizer

if TYPE_CHECKING:
    from embedserver.service.embeddings import EmbeddingService

DEFAULT_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"
PREFIX = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the Instruct "
    'provided. Note that the answer can only be "yes" or "no".<|im_end|>\n<|im_start|>user\n'
)
SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"


def body(instruction: str, query: str, document: str) -> str:
    return f"<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {document}"


@dataclass(frozen=True)
class RerankPrompt:
    """The prompt's fixed parts in a model's token ids."""

    prefix: list[int]
    suffix: list[int]

    @classmethod
    def for_tokenizer(cls, tokenizer: TextTokenizer) -> RerankPrompt:
        prefix, suffix = tokenizer.encode_plain([PREFIX, SUFFIX])
        return cls(prefix, suffix)

    def pairs(
        self, tokenizer: TextTokenizer, instruction: str, query: str, documents: list[str], max_length: int
    ) -> list[list[int]]:
        """One sequence per document, each at most `max_length` tokens."""
        room = max_length - len(self.prefix) - len(self.suffix)
        bodies = tokenizer.encode_plain([body(instruction, query, document) for document in documents])
        return [self.prefix + ids[:room] + self.suffix for ids in bodies]


def relevance(logit_gaps: np.ndarray) -> list[float]:
    """P(yes) from logit(yes) - logit(no), per pair."""
    return [1.0 / (1.0 + math.exp(-float(gap))) for gap in logit_gaps]


async def rerank(service: EmbeddingService, call: RerankCall, default_model: str) -> RerankOutcome:
    """Score each document against the query with a reranker, through its model's batch queue (one pair, one
    sequence: pairs of every request share batches as texts do)."""
    settings = service.settings
    if not call.documents:
        raise InvalidRequest("documents must hold at least one document", param="documents")
    if len(call.documents) > settings.max_request_inputs:
        raise InvalidRequest(
            f"at most {settings.max_request_inputs} documents per request (MAX_REQUEST_INPUTS), got "
            f"{len(call.documents)}",
            param="documents",
        )
    if not call.query.strip():
        raise InvalidRequest("query must not be empty", param="query")
    check_unicode(call.query, "query", "query")
    for index, document in enumerate(call.documents):
        check_unicode(document, f"documents[{index}]", "documents")
    # "default" on a rerank route is the default reranker, as it is the default embedding model on embeddings.
    name = default_model if call.model in (None, "default") else call.model
    async with service.registry.acquire(name) as model:
        runner = model.runner
        if runner.task != "rerank":
            raise InvalidRequest(
                f"model {runner.name} is an embedding model: POST /v1/embeddings serves it; name a reranker "
                f'(task = "rerank" in the catalog) here',
                param="model",
                code="wrong_model_type",
            )
        prompt = _prompts.get(runner.tokenizer)
        if prompt is None:
            prompt = _prompts[runner.tokenizer] = RerankPrompt.for_tokenizer(runner.tokenizer)
        max_length = min(runner.max_length, settings.max_text_length)
        instruction = call.instruction or DEFAULT_INSTRUCTION
        # Off the event loop: a request of 2,048 long documents takes a while to tokenize.
        sequences = await asyncio.to_thread(
            prompt.pairs, runner.tokenizer, instruction, call.query, call.documents, max_length
        )
        with model.worker.admit(len(sequences)):
            gaps = (await model.worker.compute(sequences))[:, 0]
    return RerankOutcome(
        model=runner.name,
        scores=relevance(gaps),
        logits=[float(g) for g in gaps],
        tokens=sum(map(len, sequences)),
    )


# One prompt per loaded tokenizer: its two fixed parts, tokenized once (and forgotten with the model).
_prompts: weakref.WeakKeyDictionary[TextTokenizer, RerankPrompt] = weakref.WeakKeyDictionary()
