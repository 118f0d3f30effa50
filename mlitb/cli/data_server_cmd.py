"""`mlitb data-server`: the data server on its own (`mlitb serve` also mounts it at /data)."""

from __future__ import annotations

import argparse
import logging
import os
from dataclasses import replace


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data-server", help="run the data server (dataset uploads and item serving)")
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8001, help="port (default 8001; 0 picks a free one)")
    p.add_argument("--dir", default="data", help="data directory (SQLite + arrays; default ./data)")
    p.add_argument(
        "--token",
        default=os.environ.get("MLITB_DATA_TOKEN"),
        help="if set, uploads and deletes need 'Authorization: Bearer TOKEN' (env MLITB_DATA_TOKEN)",
    )
    p.add_argument("--max-upload-mb", type=int, default=None, help="largest zip accepted, MiB (default 2048)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mlitb.data.app import create_app
    from mlitb.data.limits import DEFAULT_LIMITS, MiB
    from mlitb.server_runner import serve_blocking

    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    limits = DEFAULT_LIMITS
    if args.max_upload_mb:
        limits = replace(limits, max_upload_bytes=args.max_upload_mb * MiB)
    app = create_app(args.dir, limits, token=args.token)
    serve_blocking(app, args.host, args.port, args.log_level, name="mlitb data server")
    return 0
