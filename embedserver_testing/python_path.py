"""Running the project's code from another source tree: that tree first on PYTHONPATH, this environment's
entries kept after it (for the packages they point at)."""

from __future__ import annotations

import os


def first_on_path(*entries: str) -> str:
    """PYTHONPATH with `entries` first (empty ones skipped) and the current PYTHONPATH after them."""
    return os.pathsep.join(filter(None, (*entries, os.environ.get("PYTHONPATH", ""))))
