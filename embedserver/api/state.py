"""What routes read from the app: the service (or, in a front-end process, its stand-in) and the server's own
state."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from fastapi import Request

from embedserver.service.calls import EmbedCall, EmbedOutcome

if TYPE_CHECKING:
    from embedserver.metrics import Metrics
    from embedserver.service.embeddings import EmbeddingService


class Embedder(Protocol):
    """What the embedding routes need: EmbeddingService in the engine process, a remote one in a front-end."""

    draining: bool

    async def embed(self, call: EmbedCall) -> EmbedOutcome: ...


@dataclass
class ServerState:
    """What the operations routes of the engine process read. The device's description and memory come as
    functions, so this layer never imports the runtime (or MLX)."""

    service: EmbeddingService
    metrics: Metrics
    device: Callable[[], dict[str, Any]]
    memory: Callable[[], dict[str, int]]
    started: float = field(default_factory=time.monotonic)
    # Set when the default model could not be had and the offline model serves instead.
    fallback: dict[str, Any] | None = None
    # Front-end processes started that have not yet loaded the default model's tokenizer: the server is not
    # ready until each has (their first requests would wait for it).
    cold_frontends: int = 0
    # Set on SIGTERM: /ready is 503 while requests are still served for DRAIN_DELAY_S.
    leaving: bool = False

    def readiness(self) -> str:
        """What /ready says (and the embedserver_ready gauge): "ready" only when the default model can serve
        right now; else why not (loading, failed, warming, draining, ...)."""
        registry = self.service.registry
        slot = registry.slots().get(registry.default)
        status: str = slot.describe()["status"] if slot is not None else "unloaded"
        if status == "ready" and self.cold_frontends > 0:
            status = "warming"  # front-ends still loading the tokenizer
        if self.service.draining or self.leaving:
            status = "draining"
        return status


def state_of(request: Request) -> ServerState:
    state: ServerState = request.app.state.server
    return state


def embedder_of(request: Request) -> Embedder:
    embedder: Embedder = request.app.state.embedder
    return embedder
