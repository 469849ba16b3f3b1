"""Does waiting for MLX's device release the GIL? Counts how far the main thread gets while another thread
waits for a long GPU computation in different ways (a thread holding the GIL stalls the event loop)."""

from __future__ import annotations

import threading
import time

import mlx.core as mx
import numpy as np

import embedserver  # noqa: F401

a = mx.random.normal((4096, 4096)).astype(mx.bfloat16)
mx.eval(a)


def chain() -> mx.array:
    b = a
    for _ in range(40):
        b = (b @ a) * 0.01
    return b


def via_eval() -> None:
    mx.eval(chain())


def via_numpy() -> None:
    np.array(chain().astype(mx.float32))


def via_async_then_eval() -> None:
    out = chain()
    mx.async_eval(out)
    mx.eval(out)


def via_synchronize() -> None:
    out = chain()
    mx.async_eval(out)
    mx.synchronize()


for name, fn in [
    ("eval", via_eval),
    ("numpy", via_numpy),
    ("async+eval", via_async_then_eval),
    ("async+synchronize", via_synchronize),
]:
    fn()
    counts = []
    for _ in range(3):
        thread = threading.Thread(target=fn)
        n = 0
        start = time.perf_counter()
        thread.start()
        while thread.is_alive():
            n += 1
            time.sleep(0)
        counts.append((n, time.perf_counter() - start))
    print(
        f"{name:18s} main-thread iterations per second while waiting: "
        f"{np.mean([n / dt for n, dt in counts]):>12,.0f}  (wait {np.mean([dt for _, dt in counts]) * 1000:.0f} ms)"
    )
start = time.perf_counter()
n = 0
while time.perf_counter() - start < 0.5:
    n += 1
    time.sleep(0)
print(f"{'idle':18s} main-thread iterations per second: {n / 0.5:>12,.0f}")
