"""`mlitb` entry point: one sub-command group per module, registered in COMMANDS."""

from __future__ import annotations

import argparse
import os
import sys

from mlitb import __version__

from . import (
    closure_cmd,
    data_cmd,
    data_server_cmd,
    fleet_cmd,
    model_cmd,
    project_cmd,
    relay_cmd,
    serve_cmd,
    worker_cmd,
    zoo_cmd,
)

# name -> module with `register(subparsers)`; each sets `func` on its parsers.
COMMANDS = {
    "serve": serve_cmd,
    "project": project_cmd,
    "worker": worker_cmd,
    "fleet": fleet_cmd,
    "relay": relay_cmd,
    "data": data_cmd,
    "data-server": data_server_cmd,
    "model": model_cmd,
    "closure": closure_cmd,
    "zoo": zoo_cmd,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mlitb",
        description="Machine learning in the browser: distributed training across browsers "
        "and native workers.",
    )
    parser.add_argument("--version", action="version", version=f"mlitb {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMANDS.values():
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, not at exit
    except BrokenPipeError:
        # `mlitb project show NAME | head`: the reader left. Python's documented way: point
        # stdout at devnull so the flush at exit cannot raise again, and stop quietly.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main())
