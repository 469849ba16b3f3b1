"""What routes read from the app: the service and the server's own state."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request

from embedserver.metrics import Metrics
from embedserver.service import EmbeddingService


@dataclass
class ServerState:
    service: EmbeddingService
    metrics: Metrics
    started: float = field(default_factory=time.monotonic)
    # Set when the default model could not be had and the offline model serves instead.
    fallback: dict[str, Any] | None = None


def state_of(request: Request) -> ServerState:
    state: ServerState = request.app.state.server
    return state


def service_of(request: Request) -> EmbeddingService:
    return state_of(request).service
