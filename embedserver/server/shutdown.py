"""The bound on a shutdown: once SIGTERM has arrived, the process is gone within DRAIN_DELAY_S +
SHUTDOWN_GRACE_S + a few seconds, whatever is still running (a batch on the MLX thread that outlives its
clients, a front-end that does not stop, a lifespan step that waits)."""

from __future__ import annotations

import logging
import os
import threading

log = logging.getLogger(__name__)

# Time past delay and grace for the steps after them (cancelling tasks, stopping workers, freeing memory).
MARGIN_S = 5.0
_armed = threading.Lock()


def arm_watchdog(delay_s: float, grace_s: float) -> None:
    """End the process (status 1) if it is still running delay_s + grace_s + MARGIN_S from now; once per
    process, later calls do nothing."""
    if not _armed.acquire(blocking=False):
        return
    bound = delay_s + grace_s + MARGIN_S

    def overran() -> None:
        log.error(
            "shutdown overran its bound of %.0f s (DRAIN_DELAY_S + SHUTDOWN_GRACE_S + %.0f s); exiting",
            bound,
            MARGIN_S,
        )
        logging.shutdown()
        os._exit(1)

    timer = threading.Timer(bound, overran)
    timer.daemon = True
    timer.name = "shutdown-watchdog"
    timer.start()
