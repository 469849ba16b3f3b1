"""The model alone's forward passes from two source trees, alternated: is a change to the model's code faster,
on a machine whose runs drift as much as the change? Each round runs `benchmarks.pass_phases` once from each
tree, each in a process of its own (its `embedserver` and `benchmarks` from that tree), the trees' order
flipped every round, so a drift over the run touches both alike; then a table gives each shape's pass time
(the median of pass_phases' 20 timed passes) in every round for each tree, and B's median over A's.

  python -m benchmarks.pass_ab MODEL_DIR TREE_A TREE_B [--rounds 2] [--compiled] [ROWSxLENGTH ...]

--compiled times the passes as `COMPILE` runs them (mx.compile'd) instead of plain. Shapes default to
pass_phases' own. On a GPU the first process of a run has read a lone pass up to 2 ms slow: with --rounds 2
or more each tree runs first once.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

from embedserver_testing.python_path import first_on_path

_TOTAL = re.compile(r"^(plain|compiled) +(\d+x\d+) .* total +([\d.]+) ms ", re.M)


def pass_times(model: str, tree: Path, shapes: list[str], compiled: bool) -> dict[str, float]:
    """Each shape's median pass in ms, from one `pass_phases` process run from `tree`."""
    env = dict(os.environ, PYTHONPATH=first_on_path(str(tree)))
    args = [
        sys.executable,
        "-m",
        "benchmarks.pass_phases",
        model,
        *shapes,
        *([] if compiled else ["--plain"]),
    ]
    done = subprocess.run(args, cwd=tree, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"pass_phases from {tree} failed:\n{done.stderr[-2000:]}")
    mode = "compiled" if compiled else "plain"
    return {shape: float(ms) for kind, shape, ms in _TOTAL.findall(done.stdout) if kind == mode}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model")
    parser.add_argument("tree_a", type=Path)
    parser.add_argument("tree_b", type=Path)
    parser.add_argument("shapes", nargs="*")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--compiled", action="store_true")
    args = parser.parse_intermixed_args()  # shapes before or after the options
    trees = {"A": args.tree_a.resolve(), "B": args.tree_b.resolve()}
    runs: dict[str, list[dict[str, float]]] = {"A": [], "B": []}
    for round_ in range(args.rounds):
        for name in ("A", "B") if round_ % 2 == 0 else ("B", "A"):
            runs[name].append(pass_times(args.model, trees[name], args.shapes, args.compiled))
    print(f"A: {trees['A']}\nB: {trees['B']}")
    print(f"{'shape':>9}  {'A, ms a pass each round':<28} {'B, ms a pass each round':<28} B / A")
    for shape in runs["A"][0]:
        a = [run[shape] for run in runs["A"]]
        b = [run[shape] for run in runs["B"]]
        ratio = statistics.median(b) / statistics.median(a)
        cells = [" ".join(f"{ms:.3f}" for ms in times) for times in (a, b)]
        print(f"{shape:>9}  {cells[0]:<28} {cells[1]:<28} {ratio:.3f}")


if __name__ == "__main__":
    main()
