"""Threads named for the operating system too, so `top -H`, py-spy and CPU censuses tell the MLX thread and
the tokenizer threads from the event loop (Python before 3.14 leaves them all named after the process)."""

from __future__ import annotations

import ctypes
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

_PR_SET_NAME = 15


def _name_this_thread(prefix: str) -> None:
    if sys.platform != "linux":
        return
    libc = ctypes.CDLL(None)  # the process's own symbols, libc's prctl among them (no library search)
    # Linux keeps 15 bytes; the Python name ends in the worker's number, which is what tells them apart.
    name = threading.current_thread().name.replace(f"{prefix}_", prefix)[-15:]
    libc.prctl(_PR_SET_NAME, name.encode(), 0, 0, 0)


def named_executor(prefix: str, workers: int) -> ThreadPoolExecutor:
    initializer: Callable[[], None] = lambda: _name_this_thread(prefix)  # noqa: E731
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix=prefix, initializer=initializer)
