"""One client's latency from two source trees, side by side: is a change faster or slower for a lone client, on a
machine too noisy to tell from runs one after the other?

  python -m benchmarks.paired_latency MODEL_DIR TREE_A TREE_B [--requests 2000] [--tokens 16] [--texts 1[,8,...]]
      [SETTING=VALUE ...]

Starts a server from each tree (`python -m embedserver` from the tree, with the settings given), then sends one
request at a time to each in turn (`--texts` texts in each: a client embedding documents sends batches; a list
runs each size in turn on the same two servers), the order flipped every round, every text new: both servers see
the same machine at the same moments, so drift between runs (this project's 2-core VM moves +-25%) touches both
alike. Prints each tree's p50 and p90 at the client and the median of the paired differences (B - A), leaving
out the first tenth of the rounds (warm-up).
"""

from __future__ import annotations

import argparse
import os
import time
from contextlib import ExitStack
from pathlib import Path

import httpx
import numpy as np

from benchmarks.gpu_bench import make_texts
from embedserver_testing.python_path import first_on_path
from embedserver_testing.server_process import server_process


def paired(urls: list[str], inputs: list[str | list[str]]) -> np.ndarray:
    """Latencies in ms, one row a round, one column a server; each round sends inputs[2k] and inputs[2k + 1]."""
    rounds = len(inputs) // 2
    out = np.zeros((rounds, 2))
    with httpx.Client(timeout=30) as client:
        for k in range(rounds):
            for column in (0, 1) if k % 2 == 0 else (1, 0):
                started = time.perf_counter()
                answer = client.post(
                    f"{urls[column]}/v1/embeddings",
                    json={"input": inputs[2 * k + column], "encoding_format": "base64"},
                )
                out[k, column] = (time.perf_counter() - started) * 1000
                answer.raise_for_status()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model", type=Path)
    parser.add_argument("trees", type=Path, nargs=2)
    parser.add_argument("--requests", type=int, default=2000, help="to each server")
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--texts", default="1", help="texts a request, or a comma list of such sizes")
    parser.add_argument("settings", nargs="*", help="SETTING=VALUE for both servers")
    args = parser.parse_intermixed_args()
    env = {"MODEL_NAME": str(args.model), "LOG_LEVEL": "WARNING"}
    env |= dict(setting.split("=", 1) for setting in args.settings)
    with ExitStack() as stack:
        urls = [
            # Each from its own tree, put first on the path (the rest of PYTHONPATH kept for its packages).
            stack.enter_context(
                server_process(
                    {**env, "PYTHONPATH": first_on_path(str(tree.resolve()))},
                    cwd=tree.resolve(),
                )
            )[0]
            for tree in args.trees
        ]
        sizes = [int(n) for n in args.texts.split(",")]
        # One draw for every size: no text is sent twice, so no answer comes from a cache.
        texts = make_texts(
            args.model / "tokenizer.json",
            2 * args.requests * sum(sizes),
            args.tokens,
            seed=int(time.time()) % 1000,
        )
        for size in sizes:
            drawn, texts = texts[: 2 * args.requests * size], texts[2 * args.requests * size :]
            ms = paired(urls, _inputs(drawn, size))
            _report(args.trees, size, ms[args.requests // 10 :])


def _inputs(texts: list[str], size: int) -> list[str | list[str]]:
    """Request inputs of `size` texts each (a bare string when `size` is 1)."""
    if size == 1:
        return list(texts)
    return [texts[i : i + size] for i in range(0, len(texts), size)]


def _report(trees: list[Path], size: int, ms: np.ndarray) -> None:
    print(f"{size} text(s) a request:")
    for column, tree in enumerate(trees):
        p50, p90 = np.percentile(ms[:, column], [50, 90])
        print(f"{tree!s:>30}: p50 {p50:.3f} ms, p90 {p90:.3f} ms")
    print(f"{'B - A, paired':>30}: median {np.median(ms[:, 1] - ms[:, 0]):+.3f} ms over {len(ms)} rounds")


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
