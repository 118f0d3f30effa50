"""`mlitb serve`: the master with the data server mounted at /data; `--demo` also sets up
the MNIST project and starts one local trainer and one tracker. The data server's write
token is printed next to its URL and stored for the mlitb CLI (see data_server_cmd)."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from .data_server_cmd import add_limit_args, limits_from, store_token


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="run the master server (and the data server at /data)")
    p.add_argument("--host", default="127.0.0.1", help="interface (default 127.0.0.1; 0.0.0.0 for a LAN)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    p.add_argument(
        "--dir", default="data", help="state directory: SQLite files and datasets (default ./data)"
    )
    p.add_argument("--data-server", help="use this external data server instead of the built-in one")
    p.add_argument(
        "--data-token",
        help="the data server's write token (default: MLITB_DATA_TOKEN, else the built-in data server's "
        "generated on the first start and kept in DIR/data-token); with --data-server, the external "
        "server's token, which the master needs to place holds on its projects' datasets",
    )
    add_limit_args(p)
    p.add_argument(
        "--max-frame-mb", type=int, default=256, help="largest WebSocket message, MiB (default 256)"
    )
    p.add_argument("--demo", action="store_true", help="MNIST demo: data, project, a trainer and a tracker")
    p.add_argument("--demo-workers", type=int, default=1, help="local trainers the demo starts (default 1)")
    p.add_argument(
        "--demo-target",
        type=float,
        default=0.07,
        help="test error at which the demo publishes its model to the zoo (default 0.07)",
    )
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from mlitb.server_runner import bind, make_config, url_of
    from mlitb.serving import build_app

    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    from mlitb.data.auth import token_path

    given = args.data_token or os.environ.get("MLITB_DATA_TOKEN")
    sock = bind(args.host, args.port)
    url = url_of(sock)
    local = url.replace("://0.0.0.0:", "://127.0.0.1:").replace("://[::]:", "://[::1]:")
    try:
        app = build_app(
            args.dir,
            local,
            args.data_server,
            given,
            demo=args.demo,
            demo_workers=args.demo_workers,
            demo_target=args.demo_target,
            limits=limits_from(args),
        )
    except ValueError as exc:
        sock.close()
        print(f"mlitb: {exc}", file=sys.stderr)
        return 2
    data_url = args.data_server or f"{url}/data"
    if not args.data_server:
        where = "given by --data-token / MLITB_DATA_TOKEN" if given else f"kept in {token_path(args.dir)}"
        token_line = store_token(app.state.data_token, sorted({f"{url}/data", f"{local}/data"}), where)
    elif not given:
        token_line = "  (no --data-token: the master cannot place holds on its projects' datasets)"
    else:
        token_line = "  write token: given by --data-token / MLITB_DATA_TOKEN"
    print(f"mlitb master listening on {url}", flush=True)
    print(f"  dashboard:   {url}/", flush=True)
    print(f"  data server: {data_url}", flush=True)
    print(token_line, flush=True)
    print(f"  workers:     mlitb worker {url} --project NAME", flush=True)
    uvicorn.Server(make_config(app, args.log_level, args.max_frame_mb << 20)).run(sockets=[sock])
    return 0
