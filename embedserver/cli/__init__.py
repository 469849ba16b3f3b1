"""The `embedserver` command: `serve` (the default), `embed`, `rerank`, `models`, `health`, `bench`.

Nothing here imports MLX at module level: with HTTP_WORKERS, front-end processes are spawned and re-import the
main module, and they never load the model's libraries.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from embedserver.cli import client, client_commands, serve_command

_COMMANDS = {"serve", "embed", "rerank", "models", "health", "bench", "-h", "--help", "--version"}


def parser() -> argparse.ArgumentParser:
    from embedserver import __version__

    top = argparse.ArgumentParser(
        prog="embedserver",
        description="Qwen3 embedding and reranking server on MLX. Without a command: serve. "
        "Exit codes: 0 done, 1 the server refused (its message is printed), 2 usage or configuration, "
        "3 no server answered.",
    )
    top.add_argument("--version", action="version", version=f"embedserver {__version__}")
    commands = top.add_subparsers(dest="command", metavar="COMMAND")
    serve_command.add_parser(commands)
    client_commands.add_parsers(commands)
    bench = commands.add_parser(
        "bench",
        help="the HTTP benchmark (from a source checkout with the load extra)",
        add_help=False,
        description="Runs benchmarks.http_bench with the arguments that follow; `embedserver bench --help` "
        "lists them.",
    )
    bench.set_defaults(run=None)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args_in = list(sys.argv[1:] if argv is None else argv)
    if args_in[:1] == ["bench"]:
        return _bench(args_in[1:])
    if not args_in or args_in[0] not in _COMMANDS:
        # `embedserver --port 9000` serves, as `python -m embedserver` always did.
        args_in = ["serve", *args_in]
    args = parser().parse_args(args_in)
    if args.command == "serve":
        return serve_command.run(args)
    try:
        code: int = args.run(args)
    except client.CommandError as exc:
        print(f"embedserver {args.command}: {exc}", file=sys.stderr)
        code = exc.code
    if getattr(args, "in_process", False):
        from embedserver.runtime.device import hard_exit

        hard_exit(code)  # MLX ran on a thread of this process: skip the C++ destructors that can abort
    return code


def _bench(argv: list[str]) -> int:
    try:
        from benchmarks import http_bench
    except ImportError as exc:
        print(
            f"embedserver bench: needs a source checkout with the load extra (`make install` then `make "
            f"benchmark`, or `pip install -e '.[load]'`): {exc}",
            file=sys.stderr,
        )
        return client.USAGE
    sys.argv = ["embedserver bench", *argv]
    http_bench.main()
    return client.OK
