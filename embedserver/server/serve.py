"""The one place a server is started: one process (HTTP_WORKERS=0), an engine with its front-end processes,
or, with DEV_MODE, uvicorn's reloader over the single-process app."""

from __future__ import annotations

import os

import uvicorn

from embedserver.settings import Settings


def serve(settings: Settings) -> None:
    if settings.dev_mode:
        # Reload needs an import string; the factory re-reads the same environment.
        uvicorn.run(
            "embedserver.server.engine_app:create_app",
            factory=True,
            reload=True,
            host=settings.host,
            port=settings.port,
            log_level="debug",
        )
        return
    from embedserver.runtime.device import backend, hard_exit
    from embedserver.server.supervisor import frontend_count, serve_with_frontends

    workers = frontend_count(settings.http_workers, backend(), os.cpu_count() or 1)
    if workers:
        serve_with_frontends(settings, workers)
        hard_exit(0)

    from embedserver.server.engine_app import create_app
    from embedserver.server.http_server import serve_http

    app = create_app(settings)
    state = app.state.server
    serve_http(app, settings, metrics=state.metrics, leaving=lambda: setattr(state, "leaving", True))
    hard_exit(0)
