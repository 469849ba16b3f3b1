"""Throughput and p99 latency against concurrency, as a PNG: for `benchmarks/http_bench.py --plot` and for the GPU
benchmark's results.

    python -m benchmarks.plots gpu_results.json OUT.png [LENGTH]   # gpu_bench's server levels at LENGTH tokens
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def load_plot(
    levels: list[dict[str, Any]], title: str, path: Path, lines: dict[str, float] | None = None
) -> None:
    """`levels`: one dict per load level with concurrency, tokens_per_s and p99_ms; `lines`: tokens/s levels
    to draw across (the engine alone, another server)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    clients = [level["concurrency"] for level in levels]
    fig, left = plt.subplots(figsize=(7, 4))
    left.plot(clients, [level["tokens_per_s"] for level in levels], "o-", label="server tokens/s")
    for color, (label, value) in zip(
        ("tab:green", "tab:purple", "tab:gray"), (lines or {}).items(), strict=False
    ):
        left.axhline(value, color=color, linestyle=":", label=label)
    left.set_xscale("log", base=2)
    left.set_xticks(clients, [str(c) for c in clients])
    left.set_xlabel("concurrent clients (one text per request)")
    left.set_ylabel("tokens/s")
    left.set_ylim(bottom=0)
    right = left.twinx()
    right.plot(clients, [level["p99_ms"] for level in levels], "s--", color="tab:red", label="p99 ms")
    right.set_ylabel("p99 latency (ms)")
    right.set_ylim(bottom=0)
    handles = left.get_legend_handles_labels()[0] + right.get_legend_handles_labels()[0]
    left.legend(handles=handles, loc="upper left", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    """The first server's levels at the given length (default 128 tokens) of a gpu_bench result, with the
    model alone and sentence-transformers on the same texts as lines."""
    results = json.loads(Path(sys.argv[1]).read_text())
    length = sys.argv[3] if len(sys.argv) > 3 else "128"
    name, server = next(iter(results["server"].items()))
    lines: dict[str, float] = {}
    if length in results.get("model", {}).get("lengths", {}):
        alone = results["model"]["lengths"][length]
        lines[f"model alone, batch {alone['batch']}"] = alone["tokens_per_s"]
    if length in results.get("sentence_transformers", {}).get("lengths", {}) and length != "mixed":
        texts_per_s = results["sentence_transformers"]["lengths"][length]["texts_per_s"]
        lines["sentence-transformers, batch 256"] = texts_per_s * int(length)
    load_plot(
        server["lengths"][length],
        f"embedserver ({name}), {results['shape']} shape bf16, {length}-token texts, {results['gpu']} "
        f"({results['date']})",
        Path(sys.argv[2]),
        lines,
    )


if __name__ == "__main__":
    main()
