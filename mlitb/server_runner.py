"""Running an ASGI app on uvicorn: from the CLI (blocking) or in a thread (tests, benchmarks).

We bind the socket ourselves so port 0 works (the OS picks a free port) and the
real URL is known and printed before the first request can arrive.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import threading
import time

import uvicorn

from mlitb import log_redaction


class BindError(OSError):
    """The socket could not be bound; the message says which address, why, and the fix
    (the CLI prints it as one line instead of a traceback)."""

    def __str__(self) -> str:
        return self.strerror


def bind(host: str, port: int, other_port: str = "--port N") -> socket.socket:
    """`other_port`: how the caller's user picks another port (named when this one is taken)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise BindError(exc.errno, _bind_message(host, port, exc, other_port)) from None
    sock.listen(2048)  # listening before the URL is printed: a client may connect at once
    sock.set_inheritable(True)
    return sock


def _bind_message(host: str, port: int, exc: OSError, other_port: str) -> str:
    where = f"port {port} on {host}"
    if exc.errno == errno.EADDRINUSE:
        return f"{where} is already in use (another server runs there); fix: pick another port: {other_port}"
    if exc.errno == errno.EACCES:
        return f"{where}: permission denied (ports below 1024 need root); fix: --port 8000 or higher"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"{where}: no interface of this machine has that address; fix: --host 0.0.0.0 or 127.0.0.1"
    return f"{where}: cannot listen there ({exc.strerror or exc})"


def url_of(sock: socket.socket, scheme: str = "http") -> str:
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    return f"{scheme}://{shown}:{port}"


def make_config(
    app,
    log_level: str,
    max_frame: int = 256 << 20,
    *,
    sock: socket.socket | None = None,
    access_log: bool = True,
    certfile: str | None = None,
    keyfile: str | None = None,
) -> uvicorn.Config:
    """`sock`: the bound socket, so uvicorn's own start-up line names the real address;
    `certfile`/`keyfile`: serve https."""
    extra = {}
    if sock is not None:
        host, port = sock.getsockname()[:2]
        extra = {"host": host, "port": port}
    # permessage-deflate off: it makes 400 KB tensor frames ~4x slower in Chromium.
    config = uvicorn.Config(
        app,
        log_level=log_level,
        ws_per_message_deflate=False,
        ws_max_size=max_frame,
        lifespan="on",
        access_log=access_log,
        ssl_certfile=certfile,
        ssl_keyfile=keyfile,
        **extra,
    )
    # after Config: its logging set-up ran; tokens and keys in a query never reach the log
    log_redaction.install()
    return config


class Server(uvicorn.Server):
    """uvicorn with one more listener, without TLS: `mlitb serve --tls` keeps the master's
    own requests (to its data server at /data, the demo's uploads and local workers) on a
    loopback port in plain http, so nothing local has to trust the certificate, whichever
    names it holds."""

    def __init__(self, config: uvicorn.Config, plain: socket.socket | None = None) -> None:
        super().__init__(config)
        self.plain = plain

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.plain is None or self.should_exit:
            return
        config = self.config

        def protocol() -> asyncio.Protocol:  # as uvicorn's own create_protocol
            return config.http_protocol_class(
                config=config, server_state=self.server_state, app_state=self.lifespan.state
            )

        loop = asyncio.get_running_loop()
        self.servers.append(await loop.create_server(protocol, sock=self.plain, backlog=config.backlog))


def serve_blocking(app, host: str, port: int, log_level: str = "info", name: str = "mlitb") -> None:
    sock = bind(host, port)
    print(f"{name} listening on {url_of(sock)}", flush=True)
    uvicorn.Server(make_config(app, log_level, sock=sock)).run(sockets=[sock])


class BackgroundServer:
    """uvicorn in a daemon thread on a free port; `url` is ready when the constructor returns."""

    def __init__(
        self, app=None, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning", factory=None
    ) -> None:
        """`factory(url) -> app` when the app must know its own URL (the master does)."""
        self.sock = bind(host, port)
        self.url = url_of(self.sock)
        self.app = factory(self.url) if factory else app
        self.server = uvicorn.Server(make_config(self.app, log_level))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("server did not start")
            time.sleep(0.01)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=20)
        self.sock.close()

    def __enter__(self) -> BackgroundServer:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
