"""`mlitb relay MASTER_URL --project P`: a worker towards the master, a master towards
its own clients (mlitb/relay, docs/protocol.md "Relays")."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from urllib.parse import quote


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "relay",
        help="serve a project's volunteers at a site and send one result per iteration to the master",
        description="A relay joins the master's project as one trainer whose power is its clients' and "
        "serves them at its own address with the same protocol: it divides its share of the data among "
        "them, screens, audits and combines their results with the project's rule (banning and reporting "
        "a liar as the master would), and passes parameters down. It needs the project's owner "
        "token (--token, MLITB_OWNER_TOKEN, or the one stored by mlitb project create / serve --demo).",
    )
    p.add_argument("master", help="the master's URL, e.g. http://192.168.1.10:8000")
    p.add_argument("--project", required=True)
    p.add_argument(
        "--host", default="127.0.0.1", help="interface for the relay's clients (default 127.0.0.1)"
    )
    p.add_argument("--port", type=int, default=8100, help="port (default 8100; 0 picks a free one)")
    p.add_argument(
        "--public-url",
        default=None,
        help="the address volunteers use, e.g. http://192.168.1.20:8100 (default: this machine's LAN "
        "address with --host 0.0.0.0, else the address it listens on); shown on the master's dashboard",
    )
    p.add_argument("--token", default=None, help="the project's owner token")
    p.add_argument(
        "--join-key",
        default=None,
        help="a private project's join key (or MLITB_JOIN_KEY): the relay joins with it and refuses "
        "children without it, as the master does",
    )
    p.add_argument("--name", default="", help="the relay's name in the master's client list")
    p.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from mlitb import local_tokens as tokens
    from mlitb.lan import public_url
    from mlitb.relay.server import RelayService, build_app
    from mlitb.server_runner import BindError, bind, make_config, url_of

    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    token = args.token or os.environ.get("MLITB_OWNER_TOKEN") or tokens.get_token(args.master, args.project)
    if not token:
        print(
            f"mlitb: a relay needs the owner token of {args.project!r} (--token); none is stored for "
            f"{args.master}",
            file=sys.stderr,
        )
        return 2
    try:
        sock = bind(args.host, args.port)
    except BindError as exc:
        print(f"mlitb: {exc}", file=sys.stderr)
        return 2
    url = url_of(sock)
    try:
        public = public_url(args.host, sock.getsockname()[1], "http", args.public_url)
    except ValueError as exc:
        sock.close()
        print(f"mlitb: {exc}", file=sys.stderr)
        return 2
    join_key = args.join_key or os.environ.get("MLITB_JOIN_KEY", "")
    service = RelayService(args.master, args.project, token, args.name or f"relay {public}", public, join_key)
    print(f"mlitb relay for project {args.project} at {args.master} listening on {url}", flush=True)
    print(f"  volunteers: {public}/join/{quote(args.project)}", flush=True)
    print(f"  workers:    mlitb worker {public} --project {args.project}", flush=True)
    config = make_config(build_app(service), args.log_level, sock=sock, access_log=False)
    uvicorn.Server(config).run(sockets=[sock])
    return 0 if not service.fatal else 2
