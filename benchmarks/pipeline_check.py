"""What launching the next batch before collecting the current one is worth (Engine.launch), on the engine
alone: the batch sizes a 256-client server runs (48-96 x 128 tokens), one after another, collected at once
(`embed`) or pipelined, alone, beside a thread that holds the GIL about half the time (the server's event
loop under load), and beside the tokenizer encoding texts without pause (the server's Rust tokenizer pool).

  python benchmarks/pipeline_check.py [MODEL_DIR] [--batches 90] [--workspace-gb 32] [--trace PREFIX]
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import embedserver  # noqa: F401  (BLAS preload before MLX)
from embedserver.catalog import ModelSpec
from embedserver.runtime.loader import load_engine
from embedserver.settings import DEFAULT_GPU_WORKSPACE_BYTES
from embedserver.tokenization.tokenizer import TextTokenizer


def busy_half(stop: threading.Event) -> None:
    """Python bytecode for ~1 ms, then asleep for ~1 ms: a loaded event loop's pattern."""
    while not stop.is_set():
        until = time.perf_counter() + 0.001
        x = 0
        while time.perf_counter() < until:
            x += 1
        time.sleep(0.001)


def tokenize_nonstop(stop: threading.Event, tokenizer: TextTokenizer, texts: list[str]) -> None:
    """Batches of 64 texts through the tokenizer's Rust pool, back to back (it releases the GIL)."""
    while not stop.is_set():
        for start in range(0, len(texts), 64):
            tokenizer.encode_batch(texts[start : start + 64])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model", nargs="?", default="/tmp/embedserver-bench/qwen3-0.6b")
    parser.add_argument("--batches", type=int, default=90)
    parser.add_argument("--workspace-gb", type=float, default=DEFAULT_GPU_WORKSPACE_BYTES / (1 << 30))
    parser.add_argument(
        "--trace", help="PREFIX-<condition>.csv: each forward pass's stages (forward_trace.py)"
    )
    args = parser.parse_args()

    from benchmarks.forward_trace import install
    from benchmarks.gpu_bench import make_texts
    from embedserver.runtime.device import bound_gpu_memory

    trace_to = install(Path(f"{args.trace}-load.csv")) if args.trace else None

    engine = load_engine(ModelSpec(name="bench", source=args.model))
    engine.bucket_rows = True
    bound_gpu_memory(int(args.workspace_gb * (1 << 30)))
    rng = np.random.default_rng(0)
    rows = rng.choice([48, 64, 64, 64, 96], size=args.batches).tolist()
    batches = [[rng.integers(300, 30000, size=128).tolist() for _ in range(n)] for n in rows]
    tokens = sum(rows) * 128
    for batch in {len(b): b for b in batches}.values():
        engine.embed(batch)

    def sequential() -> None:
        for batch in batches:
            engine.embed(batch)

    def pipelined() -> None:
        collect = engine.launch(batches[0])
        for batch in batches[1:]:
            following = engine.launch(batch)
            collect()
            collect = following
        collect()

    def timed(run: Callable[[], None]) -> float:
        run()
        best = 0.0
        for _ in range(3):
            started = time.perf_counter()
            run()
            best = max(best, tokens / (time.perf_counter() - started))
        return best

    print(f"{args.batches} batches of {min(rows)}-{max(rows)} x 128 tokens ({np.mean(rows):.0f} on average)")
    texts = make_texts(Path(args.model) / "tokenizer.json", 512, 128)
    besides: list[tuple[str, Callable[[threading.Event], None] | None]] = [
        ("alone", None),
        ("beside a half-busy Python thread", busy_half),
        ("beside the tokenizer, nonstop", lambda stop: tokenize_nonstop(stop, engine.tokenizer, texts)),
    ]
    for label, beside in besides:
        if trace_to is not None:
            trace_to(Path(f"{args.trace}-{label.split(',')[0].replace(' ', '-')}.csv"))
        stop = threading.Event()
        if beside is not None:
            threading.Thread(target=beside, args=(stop,), daemon=True).start()
        for name, run in (("collected at once", sequential), ("pipelined", pipelined)):
            print(f"  {label:<34} {name:<18} {timed(run):10,.0f} tokens/s", flush=True)
        stop.set()


if __name__ == "__main__":
    main()
