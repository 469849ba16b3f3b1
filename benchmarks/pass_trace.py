"""How the MLX thread spends a load level on CUDA, pass by pass: launching passes (building the graph and
queueing its kernels), or waiting between them (for the event loop to cut the next batch and hand it over);
then how long the device takes after a launch, and how soon the event loop answers a pass it has finished;
and, from the front-ends, each embedding call's round trip to the engine, and how late each process's event
loop gets to what is due. Is the server bound by launching passes, or by what happens around them?

  python -m benchmarks.pass_trace FILE          # FILE: what a server wrote with PASS_TRACE=FILE

A server records a trace when started with PASS_TRACE=FILE and benchmarks/pass_trace_hook first on
PYTHONPATH (`gpu_bench --trace` does both for each of its servers and adds each level's summary to its
results). The hook wraps the batch worker's methods as they are imported, so the server under test runs its
own code. Passes are recorded where they overlap (CUDA); elsewhere only the batch cuts are, and the
front-ends' round trips and the loops' lag everywhere.
"""

from __future__ import annotations

import bisect
import itertools
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

HOOK_DIR = Path(__file__).resolve().parent / "pass_trace_hook"

Event = list[Any]


def read(path: Path) -> list[Event]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# Where each event's time is: the hook writes (kind, time, ...) for these and (kind, number or role, time, ...)
# for the rest.
_TIME_FIRST = {"cut", "engine_trip", "dispatch"}


def _when(event: Event) -> float:
    return float(event[1] if event[0] in _TIME_FIRST else event[2])


class Timeline:
    """The events in time order, so that each level's summary reads only the events near it: a long run's
    trace holds millions, and summarizing every level over all of them took minutes."""

    def __init__(self, events: list[Event]) -> None:
        self.events = sorted(events, key=_when)
        self.times = [_when(e) for e in self.events]

    def near(self, start: float, end: float, margin_s: float = 1.0) -> list[Event]:
        """The events from `margin_s` before `start` to `margin_s` after `end` (a pass launched in the window
        is collected and answered after it)."""
        low = bisect.bisect_left(self.times, start - margin_s)
        return self.events[low : bisect.bisect_right(self.times, end + margin_s)]


def levels(events: list[Event], pause_s: float = 0.25) -> list[tuple[float, float]]:
    """The stretches of passes with no pause longer than `pause_s` between them: a benchmark's load levels."""
    launches = sorted((e[2], e[3]) for e in events if e[0] == "launch")
    out: list[tuple[float, float]] = []
    for start, end in launches:
        if out and start - out[-1][1] <= pause_s:
            out[-1] = (out[-1][0], end)
        else:
            out.append((start, end))
    return out


def summarize(events: list[Event], start: float, end: float) -> dict[str, Any]:
    """The passes launched between `start` and `end` (perf_counter seconds): their rate and size, the MLX
    thread's share of the time spent launching them, the mean gap between one launch and the next (split at
    the cut: the event loop getting to it, then the hand-over to the MLX thread), the device's time after a
    launch returned, and the event loop's delay in answering (with fewer than two passes, as on CPU, none of
    these); then the front-ends' round trip to the engine and the event loops' lag."""
    around = _around_the_engine(events, start, end)
    launches = sorted((e for e in events if e[0] == "launch" and start <= e[2] <= end), key=lambda e: e[2])
    if len(launches) < 2:
        return around
    cut_starts = sorted(e[1] for e in events if e[0] == "cut" and start <= e[1] <= end)
    cut_ends = {e[1]: e[2] for e in events if e[0] == "cut"}
    collected = {e[1]: e[2] for e in events if e[0] == "collect"}
    answered = {e[1]: e[2] for e in events if e[0] == "answer"}
    wall = launches[-1][3] - launches[0][2]
    launch_s = np.array([e[3] - e[2] for e in launches])
    to_cut, to_launch = [], []
    for before, after in itertools.pairwise(launches):
        i = int(np.searchsorted(cut_starts, after[2])) - 1  # the cut of the batch `after` launched
        if i >= 0 and cut_starts[i] >= before[3]:
            to_cut.append(cut_starts[i] - before[3])
            to_launch.append(after[2] - cut_ends[cut_starts[i]])
    overlapped = [e for e in launches if not e[7] and e[1] in collected]
    device = [collected[e[1]] - e[3] for e in overlapped]
    answer = [answered[e[1]] - collected[e[1]] for e in overlapped if e[1] in answered]
    gaps = [after[2] - before[3] for before, after in itertools.pairwise(launches)]

    return {
        "passes": len(launches),
        "passes_per_s": round(len(launches) / wall, 1),
        "texts_per_pass": round(float(np.mean([e[4] for e in launches])), 1),
        "whole_passes": sum(1 for e in launches if e[7]),  # run whole on the MLX thread (alone, or failed)
        "launch_mean_ms": _ms(launch_s),
        "mlx_busy_percent": round(100 * float(launch_s.sum()) / wall, 1),
        "gap_mean_ms": _ms(gaps),
        "gap_to_cut_ms": _ms(to_cut),
        "gap_cut_to_launch_ms": _ms(to_launch),
        "device_after_launch_ms": _ms(device),
        "answer_delay_ms": _ms(answer),
    } | around


def _around_the_engine(events: list[Event], start: float, end: float) -> dict[str, Any]:
    trips = [e[2] for e in events if e[0] == "engine_trip" and start <= e[1] <= end]
    return (
        {
            # An embedding call's round trip from its front-end to the engine and back (the engine's own share,
            # from the frame's arrival to its answer leaving, is the metrics' engine_mean_ms): the rest is the link.
            "engine_trip_ms": _ms(trips),
            # How long a call waits in its front-end for the frame that carries it (calls of one loop turn leave
            # together at its end, so a burst of requests holds its first back): the mean, and the longest.
            **dispatch_waits(events, start, end),
            # How late a timer fires on the engine's event loop and on the front-ends' (means): how long a frame
            # that has arrived waits for its loop to get to it.
            "engine_loop_lag_ms": loop_lag(events, "engine", start, end),
            "frontend_loop_lag_ms": loop_lag(events, "frontend", start, end),
            # The longest a timer waited, per 0.1 s window: the 90th percentile of the windows (long stalls).
            "engine_loop_stall_p90_ms": loop_stall(events, "engine", start, end),
            "frontend_loop_stall_p90_ms": loop_stall(events, "frontend", start, end),
        }
        | gc_pauses(events, "engine", start, end)
        | gc_pauses(events, "frontend", start, end)
        | {"engine_slow_callbacks": slow_callbacks(events, "engine", start, end)}
    )


def dispatch_waits(events: list[Event], start: float, end: float) -> dict[str, float]:
    frames = [e for e in events if e[0] == "dispatch" and start <= e[1] <= end]
    calls = sum(e[2] for e in frames)
    return {
        "frontend_dispatch_ms": round(1e3 * sum(e[3] for e in frames) / calls, 3) if calls else float("nan"),
        "frontend_dispatch_longest_ms": round(1e3 * max(e[4] for e in frames), 3) if frames else float("nan"),
        "frontend_calls_per_frame": round(calls / len(frames), 2) if frames else float("nan"),
    }


def slow_callbacks(events: list[Event], role: str, start: float, end: float, top: int = 4) -> str:
    """The loop's callbacks that ran 4 ms or longer (recorded on asyncio loops: the engine's), the `top` by
    their summed time: "what: count x mean ms", most first; empty for none."""
    took: dict[str, list[float]] = {}
    for e in _of_role(events, "slow", role, start, end):
        took.setdefault(e[4], []).append(e[3])
    ranked = sorted(took.items(), key=lambda kv: -sum(kv[1]))[:top]
    return "; ".join(f"{what}: {len(t)} x {_ms(t)} ms" for what, t in ranked)


def _of_role(events: list[Event], kind: str, role: str, start: float, end: float) -> list[Event]:
    """The `kind` events of `role`'s processes ("engine" or "frontend") between `start` and `end`."""
    return [e for e in events if e[0] == kind and e[1] == role and start <= e[2] <= end]


def _ms(values: list[float] | np.ndarray) -> float:
    """The mean of `values` (seconds) in milliseconds; NaN for none."""
    return round(1e3 * float(np.mean(values)), 3) if len(values) else float("nan")


def loop_lag(events: list[Event], role: str, start: float, end: float) -> float:
    """The mean lateness (ms) of the loop probes of `role`'s processes between `start` and `end`."""
    windows = _of_role(events, "loop_lag", role, start, end)
    ticks = sum(e[3] for e in windows)
    return round(1e3 * sum(e[4] for e in windows) / ticks, 3) if ticks else float("nan")


def loop_stall(events: list[Event], role: str, start: float, end: float) -> float:
    """The 90th percentile over `role`'s 0.1 s windows of the longest lateness in each (ms)."""
    longest = [e[5] for e in _of_role(events, "loop_lag", role, start, end)]
    return round(1e3 * float(np.percentile(longest, 90)), 3) if longest else float("nan")


def gc_pauses(events: list[Event], role: str, start: float, end: float) -> dict[str, float]:
    """The cyclic garbage collector in `role`'s processes: ms paused per second of a process, the longest
    pause, and full (generation 2) collections per second of a process."""
    windows = _of_role(events, "gc", role, start, end)
    if not windows:
        return {}
    process_s = sum(e[3] for e in windows)
    return {
        f"{role}_gc_ms_per_s": round(1e3 * sum(sum(e[5]) for e in windows) / process_s, 3),
        f"{role}_gc_longest_ms": round(1e3 * max(e[6] for e in windows), 3),
        f"{role}_gc_full_per_s": round(sum(e[4][2] for e in windows) / process_s, 2),
    }


def main() -> None:
    events = read(Path(sys.argv[1]))
    for start, end in levels(events):
        summary = summarize(events, start, end)
        if summary:
            print(f"{end - start:6.2f} s  " + "  ".join(f"{k} {v}" for k, v in summary.items()))


if __name__ == "__main__":
    main()
