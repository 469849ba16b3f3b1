"""`python -m embedserver` and the `embedserver` command (embedserver/cli): without a command, serve."""

from __future__ import annotations

import sys

from embedserver.cli import main

if __name__ == "__main__":
    sys.exit(main())
