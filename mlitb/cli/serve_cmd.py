"""`mlitb serve`: the master with the data server mounted at /data; `--demo` also sets up
the MNIST project and starts one local trainer and one tracker. The data server's write
token is printed next to its URL and stored for the mlitb CLI (see data_server_cmd).

Phones: `--host 0.0.0.0` listens on the LAN and prints the LAN address (mlitb.lan), the
address QR codes and volunteer links name (`--public-url` overrides it); `--tls` serves
https (the camera needs it; mlitb.tls)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from urllib.parse import urlparse

from .data_server_cmd import add_limit_args, limits_from, store_token

OTHER_PORT = "--port N, or PORT=N make run"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="run the master server (and the data server at /data)")
    p.add_argument(
        "--host", default="127.0.0.1", help="interface (default 127.0.0.1, this machine only; 0.0.0.0: LAN)"
    )
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    p.add_argument(
        "--public-url",
        help="the address volunteers use, in QR codes and volunteer links (default: with --host 0.0.0.0 "
        "or ::, http(s)://LAN-ADDRESS:PORT; else the address it listens on)",
    )
    p.add_argument(
        "--tls",
        action="store_true",
        help="serve https (phones need it for the camera) with a self-signed certificate made on the "
        "first start and kept in DIR/tls, unless --certfile/--keyfile name one",
    )
    p.add_argument("--certfile", help="TLS certificate (PEM); implies --tls")
    p.add_argument("--keyfile", help="TLS private key (PEM) of --certfile")
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
    p.add_argument(
        "--demo",
        nargs="?",
        const="mnist",
        choices=("mnist", "fashion"),
        help="a demo: data, project, a trainer and a tracker; mnist (the default) or fashion "
        "(Fashion-MNIST with a residual batch-norm net; needs the Debian package dataset-fashion-mnist)",
    )
    p.add_argument("--demo-workers", type=int, default=1, help="local trainers the demo starts (default 1)")
    p.add_argument(
        "--demo-target",
        type=float,
        default=None,
        help="test error at which the demo publishes its model to the zoo (default 0.07; fashion 0.15)",
    )
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument(
        "--access-log",
        action="store_true",
        help="log every HTTP request (off by default: the dashboard polls every few seconds)",
    )
    p.set_defaults(func=run)


def quiet_client_logs(level: str) -> None:
    """The master's own requests to its data server are in the access log already: httpx's
    line for each would log every one of them twice."""
    if level != "debug":
        for name in ("httpx", "httpcore"):
            logging.getLogger(name).setLevel(logging.WARNING)


def run(args: argparse.Namespace) -> int:
    from mlitb.data.auth import token_path
    from mlitb.lan import ANY_HOST, local_url, public_url
    from mlitb.server_runner import BindError, Server, bind, make_config, url_of
    from mlitb.serving import build_app
    from mlitb.tls import certificate

    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    quiet_client_logs(args.log_level)
    if bool(args.certfile) != bool(args.keyfile):
        print("mlitb: --certfile and --keyfile go together: pass both, or --tls alone", file=sys.stderr)
        return 2
    tls = args.tls or bool(args.certfile)
    given = args.data_token or os.environ.get("MLITB_DATA_TOKEN")
    sockets = []
    try:
        sock = bind(args.host, args.port, OTHER_PORT)
        sockets.append(sock)
        scheme = "https" if tls else "http"
        url = url_of(sock, scheme)
        public = public_url(args.host, sock.getsockname()[1], scheme, args.public_url)
        certfile, keyfile = args.certfile, args.keyfile
        plain = None
        if tls:
            if not certfile:
                names = [h for h in (args.host, urlparse(public).hostname) if h and h not in ANY_HOST]
                certfile, keyfile = certificate(args.dir, names)
            plain = bind("127.0.0.1", 0)  # the master's own requests stay in plain http (Server)
            sockets.append(plain)
            local = url_of(plain)
        else:
            local = local_url(url)
        token_urls = tuple(dict.fromkeys(u for u in (url, public, local_url(url)) if u != local))
        app = build_app(
            args.dir,
            local,
            args.data_server,
            given,
            demo=args.demo or False,
            demo_workers=args.demo_workers,
            demo_target=args.demo_target,
            limits=limits_from(args),
            public_url=public,
            announce=lambda line: print(line, flush=True),
            token_urls=token_urls,
        )
    except (BindError, ValueError) as exc:  # TLSError and --public-url errors are ValueErrors
        for s in sockets:
            s.close()
        print(f"mlitb: {exc}", file=sys.stderr)
        return 2
    data_url = args.data_server or f"{public}/data"
    if not args.data_server:
        where = "given by --data-token / MLITB_DATA_TOKEN" if given else f"kept in {token_path(args.dir)}"
        urls = sorted({f"{u}/data" for u in (url, public, local, local_url(url))})
        token_line = store_token(app.state.data_token, urls, where)
    elif not given:
        token_line = "  (no --data-token: the master cannot place holds on its projects' datasets)"
    else:
        token_line = "  write token: given by --data-token / MLITB_DATA_TOKEN"
    lines = [f"mlitb master listening on {url}", f"  dashboard:   {public}/"]
    if local_url(url) != public:
        lines.append(f"  this machine: {local_url(url)}/")
    lines += [f"  data server: {data_url}", token_line]
    lines.append(f"  workers:     mlitb worker {public} --project NAME")
    lines += _phone_lines(args, tls, public, local, certfile)
    if args.demo:
        lines.append(
            f"the dashboard is up at {public}/; the {'Fashion-MNIST' if args.demo == 'fashion' else 'MNIST'} "
            "demo starts training in a moment (the first start uploads 70,000 images first)"
        )
    print("\n".join(lines), flush=True)
    config = make_config(
        app, args.log_level, args.max_frame_mb << 20, sock=sock, access_log=args.access_log,
        certfile=str(certfile) if tls else None, keyfile=str(keyfile) if tls else None,
    )  # fmt: skip
    Server(config, plain).run(sockets=[sock])
    return 0


def _phone_lines(args: argparse.Namespace, tls: bool, public: str, local: str, certfile) -> list[str]:
    """What a person who wants phones to join needs to know next."""
    if args.host in ("127.0.0.1", "localhost", "::1") and not args.public_url:
        lines = ["  phones:      only this machine can connect; for phones on the LAN: make run HOST=0.0.0.0"]
    else:
        lines = [f"  phones:      open {public}/ on a phone on the same network, or scan a project's QR code"]
        if not tls:
            lines.append("  camera:      phones allow it only over https: add --tls")
    if tls and not args.certfile:
        lines.append(
            f"  https:       self-signed certificate {certfile}: each browser warns once; accept it "
            "(Advanced, Proceed)"
        )
    if tls:
        lines.append(f"  this machine's CLI: --server {local} (plain http, this machine only)")
    return lines
