"""Where a request's time went inside the server, from a `/metrics` scrape: the mean of each stage's
histogram (tokenization round, queue wait, forward pass per batch, whole request) and the batch sizes.

    python -m embedserver_testing.stage_times METRICS.txt [METRICS.txt ...]

Means over everything the server did since it started (server_matrix.sh scrapes after its last load level),
so compare scrapes of servers that ran the same load.
"""

from __future__ import annotations

import sys
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

_STAGES = {
    "embedserver_request_duration_seconds": "request (server side)",
    "embedserver_engine_call_seconds": "in the engine process (front-ends)",
    "embedserver_tokenization_seconds": "tokenization wait",
    "embedserver_queue_wait_seconds": "queue wait",
    "embedserver_inference_seconds": "forward pass (per batch)",
    "embedserver_batch_size": "texts per batch",
    "embedserver_padding_ratio": "padding ratio",
}


def stage_means(text: str, since: str = "") -> dict[str, tuple[float, float]]:
    """Histogram name -> (count, mean), summed over its labels; with `since` (an earlier scrape of the same
    server), over what was observed between the two scrapes only."""
    counts, sums = _totals(text)
    before_counts, before_sums = _totals(since) if since else ({}, {})
    out = {}
    for name, count in counts.items():
        count -= before_counts.get(name, 0.0)
        if count:
            out[name] = (count, (sums[name] - before_sums.get(name, 0.0)) / count)
    return out


# Result keys for `level_means`: times in ms.
_KEYS = {
    "embedserver_request_duration_seconds": "server_mean_ms",
    "embedserver_engine_call_seconds": "engine_mean_ms",
    "embedserver_tokenization_seconds": "tokenization_mean_ms",
    "embedserver_queue_wait_seconds": "queue_wait_mean_ms",
    "embedserver_inference_seconds": "forward_mean_ms",
    "embedserver_batch_size": "texts_per_pass",
    "embedserver_padding_ratio": "padding_ratio",
}


def level_means(text: str, since: str) -> dict[str, float]:
    """Each stage's mean between two scrapes of one server (one load level), keyed for a results file."""
    out = {}
    for name, (_, mean) in stage_means(text, since=since).items():
        out[_KEYS[name]] = round(mean * 1000, 3) if name.endswith("_seconds") else round(mean, 2)
    return out


def _totals(text: str) -> tuple[dict[str, float], dict[str, float]]:
    """Each stage histogram's (count, sum), summed over its labels."""
    sums: dict[str, float] = {}
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name not in _STAGES:
            continue
        for sample in family.samples:
            if sample.name.endswith("_sum"):
                sums[family.name] = sums.get(family.name, 0.0) + sample.value
            elif sample.name.endswith("_count"):
                counts[family.name] = counts.get(family.name, 0.0) + sample.value
    return counts, sums


def main() -> None:
    for path in sys.argv[1:]:
        print(path)
        for name, (count, mean) in stage_means(Path(path).read_text()).items():
            scale, unit = (1000.0, "ms") if name.endswith("_seconds") else (1.0, "")
            print(f"  {_STAGES[name]:<26} mean {mean * scale:9.2f} {unit:<2}  over {count:9.0f}")


if __name__ == "__main__":
    main()
