"""Running an ASGI app on uvicorn: from the CLI (blocking) or in a thread (tests, benchmarks).

We bind the socket ourselves so port 0 works (the OS picks a free port) and the
real URL is known and printed before the first request can arrive.
"""

from __future__ import annotations

import socket
import threading
import time

import uvicorn


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)  # listening before the URL is printed: a client may connect at once
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"


def make_config(app, log_level: str, max_frame: int = 256 << 20) -> uvicorn.Config:
    # permessage-deflate off: it makes 400 KB tensor frames ~4x slower in Chromium.
    return uvicorn.Config(
        app, log_level=log_level, ws_per_message_deflate=False, ws_max_size=max_frame, lifespan="on"
    )


def serve_blocking(app, host: str, port: int, log_level: str = "info", name: str = "mlitb") -> None:
    sock = bind(host, port)
    print(f"{name} listening on {url_of(sock)}", flush=True)
    uvicorn.Server(make_config(app, log_level)).run(sockets=[sock])


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
