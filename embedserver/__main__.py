"""`python -m embedserver` (and the `embedserver` command): validate settings, configure logging, serve."""

from __future__ import annotations

import sys

from pydantic import ValidationError

from embedserver.logs import configure_logging
from embedserver.settings import Settings

# Nothing here imports MLX: with HTTP_WORKERS, front-end processes are spawned and re-import this module, and
# they never load the model's libraries.


def main() -> None:
    try:
        settings = Settings()
    except ValidationError as exc:
        lines = [f"  {'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in exc.errors()]
        print("embedserver: invalid configuration\n" + "\n".join(lines), file=sys.stderr)
        raise SystemExit(2) from None
    configure_logging("DEBUG" if settings.dev_mode else settings.log_level)
    from embedserver.server.serve import serve

    serve(settings)


if __name__ == "__main__":
    main()
