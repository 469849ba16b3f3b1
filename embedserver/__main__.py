"""`python -m embedserver`: validate settings, configure logging, serve with uvicorn."""

from __future__ import annotations

import logging
import sys
from types import FrameType

import uvicorn
from pydantic import ValidationError

from embedserver.service import EmbeddingService
from embedserver.settings import Settings


def main() -> None:
    try:
        settings = Settings()
    except ValidationError as exc:
        lines = [f"  {'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in exc.errors()]
        print("embedserver: invalid configuration\n" + "\n".join(lines), file=sys.stderr)
        raise SystemExit(2) from None
    level = "DEBUG" if settings.dev_mode else settings.log_level
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if settings.dev_mode:
        # Reload needs an import string; the factory re-reads the same environment.
        uvicorn.run(
            "embedserver.app:create_app",
            factory=True,
            reload=True,
            host=settings.host,
            port=settings.port,
            log_level="debug",
        )
        return
    from embedserver.api.protocol import with_deadlines
    from embedserver.app import create_app
    from embedserver.device import hard_exit

    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=level.lower(),
        access_log=settings.log_level == "DEBUG",
        timeout_graceful_shutdown=settings.shutdown_grace_s,
        http=with_deadlines(
            settings.header_timeout_s,
            settings.body_timeout_s,
            on_body_timeout=app.state.server.metrics.timeouts.inc,
        ),
    )
    _DrainingServer(config, app.state.server.service).run()
    hard_exit(0)


class _DrainingServer(uvicorn.Server):
    """On SIGTERM/SIGINT, first turn readiness off and refuse new embedding requests (503), then let uvicorn
    stop listening and finish the accepted requests within SHUTDOWN_GRACE_S."""

    def __init__(self, config: uvicorn.Config, service: EmbeddingService) -> None:
        super().__init__(config)
        self._service = service

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self._service.draining = True
        super().handle_exit(sig, frame)


if __name__ == "__main__":
    main()
