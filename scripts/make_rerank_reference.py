"""Produce tests/fixtures/rerank_reference.json: Qwen3-Reranker scores from transformers, for the tests.

The tiny seeded reranker (embedserver_testing.random_model.write_random_qwen3_reranker) run by transformers'
Qwen3ForCausalLM, each pair alone, scored as the model card's transformers example does: prefix + body + suffix
tokenized on their own without added tokens (the body cut at its end to fit the limit), the last position's
logits of `yes` and `no`, a log-softmax over the two, P(yes). Run once, commit the JSON; the tests need no torch:

    pip install torch==2.13.0 transformers   # CPU build
    python scripts/make_rerank_reference.py
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch
from tokenizers import Tokenizer
from transformers import Qwen3ForCausalLM

from embedserver.service.reranking import DEFAULT_INSTRUCTION, PREFIX, SUFFIX, body
from embedserver_testing.random_model import write_random_qwen3_reranker

FIXTURE = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "rerank_reference.json"
QUERIES = ["What is the capital of China?", "how do embedding servers batch requests"]
DOCUMENTS = [
    "The capital of China is Beijing.",
    "Gravity is a force that attracts two bodies towards each other.",
    "A micro-batching server cuts padded batches from a queue every few milliseconds.",
    "機器學習是人工智慧的一個分支。",
    "A long document that the limit cuts at its end. " * 30,
]
CUSTOM_INSTRUCTION = "Judge whether the passage mentions a city"
CUT_LENGTH = 96  # the limit of the truncation case: the long document's end is cut


@torch.no_grad()
def scores(directory: Path, instruction: str, query: str, max_length: int) -> list[float]:
    model = Qwen3ForCausalLM.from_pretrained(directory, torch_dtype=torch.float32).eval()
    tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.no_truncation()

    def ids(text: str) -> list[int]:
        return tokenizer.encode(text, add_special_tokens=False).ids

    yes, no = tokenizer.token_to_id("yes"), tokenizer.token_to_id("no")
    prefix, suffix = ids(PREFIX), ids(SUFFIX)
    out = []
    for document in DOCUMENTS:
        sequence = (
            prefix
            + ids(body(instruction, query, document))[: max_length - len(prefix) - len(suffix)]
            + suffix
        )
        logits = model(input_ids=torch.tensor([sequence])).logits[0, -1]
        pair = torch.log_softmax(torch.stack([logits[no], logits[yes]]), dim=0)
        out.append(round(float(pair[1].exp()), 7))
    return out


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        directory = write_random_qwen3_reranker(Path(tmp) / "tiny-reranker", seed=0)
        cases = [
            {
                "instruction": DEFAULT_INSTRUCTION,
                "query": q,
                "max_length": 8192,
                "scores": scores(directory, DEFAULT_INSTRUCTION, q, 8192),
            }
            for q in QUERIES
        ]
        cases.append(
            {
                "instruction": CUSTOM_INSTRUCTION,
                "query": QUERIES[0],
                "max_length": CUT_LENGTH,
                "scores": scores(directory, CUSTOM_INSTRUCTION, QUERIES[0], CUT_LENGTH),
            }
        )
    data = {
        "generated_by": "scripts/make_rerank_reference.py",
        "versions": {"torch": torch.__version__, "transformers": __import__("transformers").__version__},
        "documents": DOCUMENTS,
        "cases": cases,
    }
    FIXTURE.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {FIXTURE}")


if __name__ == "__main__":
    main()
