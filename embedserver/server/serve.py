"""The one place a server is started: one process (HTTP_WORKERS=0), an engine with its front-end processes,
or, with DEV_MODE, uvicorn's reloader over the single-process app."""

from __future__ import annotations

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
    from embedserver.tuning.cores import usable_cores

    _check_operator_model(settings)

    workers = frontend_count(settings.http_workers, backend(), usable_cores())
    if workers:
        serve_with_frontends(settings, workers)
        hard_exit(0)

    from embedserver.server.engine_app import create_app
    from embedserver.server.http_server import serve_http

    app = create_app(settings)
    state = app.state.server
    serve_http(app, settings, metrics=state.metrics, leaving=lambda: setattr(state, "leaving", True))
    hard_exit(0)


def _check_operator_model(settings: Settings) -> None:
    """MODEL_NAME naming what cannot be had here (a directory that does not exist, a package not installed, a
    hub model not in the cache with the hub out of reach) stops the start with the reason and status 2: no
    retry will find it, and a process that stayed up answering 503 would hide the mistake. Failures that may
    pass (a download, a corrupt file being replaced) keep the server up, retrying, as for any model."""
    if not settings.model_name:
        return
    import logging

    from embedserver.catalog import load_catalog, operator_model
    from embedserver.runtime.model_files import ModelLoadError, ModelNotDownloaded, resolve_source

    _, spec = operator_model(load_catalog(settings.catalog_file, settings.model_sources), settings.model_name)
    try:
        resolve_source(spec.source, download=False)
    except ModelNotDownloaded as exc:
        if exc.reachable:
            return  # downloaded at start-up
        reason = str(exc)
    except ModelLoadError as exc:
        reason = str(exc)
    else:
        return
    logging.getLogger(__name__).error("MODEL_NAME=%s cannot be served: %s", settings.model_name, reason)
    raise SystemExit(2)
