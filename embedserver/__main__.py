"""`python -m embedserver`: validate settings, configure logging, serve with uvicorn."""

from __future__ import annotations

import logging
import os
import sys

import uvicorn
from pydantic import ValidationError

from embedserver.settings import Settings

# Imports of MLX stay inside main(): with HTTP_WORKERS, front-end processes are spawned and re-import this
# module, and they never load the model's libraries.


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
            "embedserver.server.engine_app:create_app",
            factory=True,
            reload=True,
            host=settings.host,
            port=settings.port,
            log_level="debug",
        )
        return
    from embedserver.runtime.device import backend, hard_exit
    from embedserver.server.supervisor import frontend_count, serve

    workers = frontend_count(settings.http_workers, backend(), os.cpu_count() or 1)
    if workers:
        serve(settings, workers)
        hard_exit(0)

    from embedserver.server.draining import DrainingServer
    from embedserver.server.engine_app import create_app
    from embedserver.server.http_protocol import with_deadlines

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
            on_body_timeout=app.state.server.metrics.body_timeout,
        ),
    )
    DrainingServer(config, app.state.server.service).run()
    hard_exit(0)


if __name__ == "__main__":
    main()
