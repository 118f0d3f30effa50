"""`mlitb data-server`: the data server on its own (`mlitb serve` also mounts it at /data).

Writes need its write token: generated on the first start and kept in DIR/data-token,
printed at start-up and stored for the mlitb CLI on this machine (mlitb/local_tokens.py)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from dataclasses import replace


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "data-server",
        help="run the data server on its own (dataset uploads and item serving); `mlitb serve` "
        "already has one at /data",
        description="The data server on its own port (default 8001). Clients then name it: "
        "mlitb data list --server http://HOST:8001 (mlitb data defaults to http://127.0.0.1:8000/data, "
        "the data server inside `mlitb serve`), mlitb serve --data-server http://HOST:8001.",
    )
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    p.add_argument(
        "--port",
        type=int,
        default=8001,
        help="port (default 8001; 0 picks a free one); clients use --server http://HOST:PORT",
    )
    p.add_argument("--dir", default="data", help="data directory (SQLite + arrays; default ./data)")
    p.add_argument(
        "--token",
        help="write token: uploads, deletes and holds need 'Authorization: Bearer TOKEN' (default: "
        "MLITB_DATA_TOKEN, else one generated on the first start and kept in DIR/data-token)",
    )
    add_limit_args(p)
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--access-log", action="store_true", help="log every HTTP request (off by default)")
    p.set_defaults(func=run)


def add_limit_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-upload-mb", type=int, default=None, help="largest zip accepted, MiB (default 2048)")
    p.add_argument(
        "--max-members", type=int, default=None, help="most members (files and folders) in one zip (200000)"
    )


def limits_from(args: argparse.Namespace):
    from mlitb.data.limits import DEFAULT_LIMITS, MiB

    limits = DEFAULT_LIMITS
    if args.max_upload_mb:
        limits = replace(limits, max_upload_bytes=args.max_upload_mb * MiB)
    if args.max_members:
        limits = replace(limits, max_members=args.max_members)
    return limits


def store_token(token: str, urls: list[str], where: str) -> str:
    """Store the write token for the CLI under each URL, before the URL is printed (so a
    script that waits for the URL finds it stored), and return the line that shows it.
    Best effort: a server whose home directory is read-only still starts."""
    from mlitb import local_tokens as tokens

    try:
        saved = f"; saved for the mlitb CLI in {tokens.save_data_token(urls, token)}"
    except OSError as exc:
        saved = f"; not saved for the CLI ({exc})"
    return f"  write token: {token} (uploads and deletes; {where}{saved})"


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from mlitb.data.app import create_app
    from mlitb.data.auth import token_path
    from mlitb.lan import local_url
    from mlitb.server_runner import BindError, bind, make_config, url_of

    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    given = args.token or os.environ.get("MLITB_DATA_TOKEN")
    try:
        sock = bind(args.host, args.port)
    except BindError as exc:
        print(f"mlitb: {exc}", file=sys.stderr)
        return 2
    try:
        app = create_app(args.dir, limits_from(args), token=given)
    except ValueError as exc:
        sock.close()
        print(f"mlitb: {exc}", file=sys.stderr)
        return 2
    url = url_of(sock)
    local = local_url(url)
    where = "given by --token / MLITB_DATA_TOKEN" if given else f"kept in {token_path(args.dir)}"
    token_line = store_token(app.state.write_token, sorted({url, local}), where)
    print(f"mlitb data server listening on {url}", flush=True)
    print(token_line, flush=True)
    print(f"  clients:     mlitb data list --server {local}", flush=True)
    config = make_config(app, args.log_level, sock=sock, access_log=args.access_log)
    uvicorn.Server(config).run(sockets=[sock])
    return 0
