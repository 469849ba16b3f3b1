"""Threads named for the operating system too, so `top -H`, py-spy and CPU censuses tell the MLX thread and
the tokenizer threads from the event loop (Python before 3.14 leaves them all named after the process)."""

from __future__ import annotations

import ctypes
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from functools import partial

_PR_SET_NAME = 15


def _set_os_name(name: str) -> None:
    """This thread's name for the operating system (Linux keeps 15 bytes); elsewhere nothing."""
    if sys.platform != "linux":
        return
    libc = ctypes.CDLL(None)  # the process's own symbols, libc's prctl among them (no library search)
    libc.prctl(_PR_SET_NAME, name[:15].encode(), 0, 0, 0)


def _name_this_thread(prefix: str) -> None:
    # The Python name ends in the worker's number, which is what tells them apart: keep the end.
    _set_os_name(threading.current_thread().name.replace(f"{prefix}_", prefix)[-15:])


def name_this_process(name: str) -> None:
    """The name `ps`, `top` and psutil show for this process: its main thread's, set from that thread."""
    _set_os_name(name)


def named_executor(prefix: str, workers: int) -> ThreadPoolExecutor:
    """Threads named `prefix` and their number."""
    return ThreadPoolExecutor(
        max_workers=workers, thread_name_prefix=prefix, initializer=partial(_name_this_thread, prefix)
    )
