"""The address volunteers use: phones on the LAN cannot open http://127.0.0.1, so a
server listening on every interface (0.0.0.0 or ::) names this machine's LAN address
in its printed URLs, QR codes and volunteer links (unless --public-url says otherwise)."""

from __future__ import annotations

import contextlib
import socket
from urllib.parse import urlparse

ANY_HOST = ("0.0.0.0", "::", "")


def lan_address() -> str:
    """This machine's IPv4 address on the network its default route leaves by; 127.0.0.1
    without one. A UDP socket's connect only picks the route: no packet is sent (192.0.2.1
    is TEST-NET-1, reserved for documentation)."""
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("192.0.2.1", 9))
        address = s.getsockname()[0]
        if address and not address.startswith("0."):
            return address
    return "127.0.0.1"


def public_url(host: str, port: int, scheme: str = "http", given: str | None = None) -> str:
    """`given` (--public-url) as is, without a trailing slash; else the LAN address for a
    server on every interface, else the host it listens on."""
    if given:
        parts = urlparse(given)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(
                f"--public-url: expected an http(s) URL such as http://192.168.1.20:8000, got {given!r}"
            )
        return given.rstrip("/")
    shown = lan_address() if host in ANY_HOST else host
    if ":" in shown:
        shown = f"[{shown}]"
    return f"{scheme}://{shown}:{port}"


def local_url(url: str) -> str:
    """How this machine reaches a server listening at `url` (0.0.0.0 and :: are not addresses)."""
    return url.replace("://0.0.0.0:", "://127.0.0.1:").replace("://[::]:", "://[::1]:")
