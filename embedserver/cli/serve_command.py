"""`embedserver serve`: one flag per setting, generated from Settings, so the flags can never drift from it.

A flag given on the command line is put into this process's environment under the setting's name before
Settings reads it. That makes the order flags > environment > .env > defaults hold with one reader (pydantic
settings already ranks the environment over .env), and the processes the server starts (front-ends, the
reloader) see the same values, since they read the environment they inherit.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from pydantic import ValidationError

from embedserver.settings import Settings


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "serve",
        help="run the server (the default command)",
        description="Run the server. Every setting is a flag here, an environment variable (the same name in "
        "capitals) and a line in .env; a flag beats the environment, which beats .env. README.md's settings "
        "table says what each does.",
    )
    add_setting_flags(parser)


def add_setting_flags(parser: argparse.ArgumentParser) -> None:
    for name, field in Settings.model_fields.items():
        default = field.get_default(call_default_factory=True)
        shown = ",".join(map(str, default)) if isinstance(default, list) else default
        if name == "api_key":
            shown = "none; prefer the environment: a command line is visible to every user of the machine"
        parser.add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            metavar="VALUE",
            default=None,
            help=f"{name.upper()} (default: {shown})",
        )


def settings_from(args: argparse.Namespace) -> Settings:
    """Settings with the given flags applied, or exit 2 with every problem named (flag or variable)."""
    for name in Settings.model_fields:
        value = getattr(args, name, None)
        if value is not None:
            os.environ[name.upper()] = value
    try:
        return Settings()
    except ValidationError as exc:
        lines = [f"  {'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in exc.errors()]
        print("embedserver: invalid configuration\n" + "\n".join(lines), file=sys.stderr)
        raise SystemExit(2) from None


def run(args: argparse.Namespace) -> int:
    from embedserver.logs import configure_logging

    settings = settings_from(args)
    configure_logging("DEBUG" if settings.dev_mode else settings.log_level, settings.log_format)
    from embedserver.server.serve import serve

    serve(settings)
    return 0
