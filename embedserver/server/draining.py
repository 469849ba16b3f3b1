"""uvicorn's server with a draining step on SIGTERM/SIGINT."""

from __future__ import annotations

from types import FrameType

import uvicorn

from embedserver.api.state import Embedder


class DrainingServer(uvicorn.Server):
    """On SIGTERM/SIGINT, first turn readiness off and refuse new embedding requests (503), then let uvicorn
    stop listening and finish the accepted requests within SHUTDOWN_GRACE_S."""

    def __init__(self, config: uvicorn.Config, embedder: Embedder) -> None:
        super().__init__(config)
        self._embedder = embedder

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self._embedder.draining = True
        super().handle_exit(sig, frame)
