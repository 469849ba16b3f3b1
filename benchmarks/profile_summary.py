"""Summarize a py-spy `--format raw --threads` profile (benchmarks/profile_server.sh): per thread, the share of
samples, then the functions that thread spends the most samples in (inclusive) and the leaves it sits in.

    python -m benchmarks.profile_summary profile.raw [TOP]
"""

from __future__ import annotations

import sys
from collections import Counter, defaultdict
from pathlib import Path


def summarize(lines: list[str], top: int) -> str:
    per_thread: dict[str, Counter[str]] = defaultdict(Counter)
    leaves: dict[str, Counter[str]] = defaultdict(Counter)
    samples: Counter[str] = Counter()
    for line in lines:
        stack, _, count = line.rstrip().rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        thread, frames = frames[0], frames[1:]
        n = int(count)
        samples[thread] += n
        for frame in set(frames):
            per_thread[thread][frame] += n
        if frames:
            leaves[thread][frames[-1]] += n
    total = sum(samples.values()) or 1
    out = []
    for thread, n in samples.most_common():
        out.append(f"== {thread}: {n} samples ({100 * n / total:.1f}%)")
        out.append("   inclusive:")
        out += [f"   {100 * c / n:5.1f}%  {frame}" for frame, c in per_thread[thread].most_common(top)]
        out.append("   leaves:")
        out += [f"   {100 * c / n:5.1f}%  {frame}" for frame, c in leaves[thread].most_common(top // 2)]
    return "\n".join(out)


def main() -> None:
    top = int(sys.argv[2]) if len(sys.argv) > 2 else 30
    print(summarize(Path(sys.argv[1]).read_text().splitlines(), top))


if __name__ == "__main__":
    main()
