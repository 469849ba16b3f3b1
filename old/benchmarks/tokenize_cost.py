"""What tokenization costs: one text vs a batch, `encode` vs `encode_batch`, random-token texts (the
benchmark's) vs plain English, on the benchmark model's tokenizer."""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tokenizers import Tokenizer

from benchmarks.gpu_bench import make_texts

path = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/embedserver-bench/qwen3-0.6b") / "tokenizer.json"
tok = Tokenizer.from_file(str(path))
random_texts = make_texts(path, 256, 128)
english = [
    f"Request {i}: the quick brown fox jumps over the lazy dog while embedding servers batch texts "
    "together so that the accelerator stays busy and every client gets its vector back quickly. " * 3
    for i in range(256)
]


def ms(fn, repeat: int = 20) -> float:  # type: ignore[no-untyped-def]
    fn()
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - start) / repeat * 1000


for name, texts in [("random-token", random_texts), ("english", english)]:
    tokens = sum(len(e.ids) for e in tok.encode_batch(texts))
    print(
        f"{name:13s} ({tokens / len(texts):.0f} tokens/text): encode 1 = {ms(lambda t=texts: tok.encode(t[0])):.3f} ms, "
        f"encode_batch 1 = {ms(lambda t=texts: tok.encode_batch(t[:1])):.3f} ms, "
        f"encode_batch 16 = {ms(lambda t=texts: tok.encode_batch(t[:16])):.2f} ms, "
        f"encode_batch 256 = {ms(lambda t=texts: tok.encode_batch(t), 5):.1f} ms",
        flush=True,
    )
