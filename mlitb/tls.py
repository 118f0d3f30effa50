"""`mlitb serve --tls`: https, because browsers give the camera (and a few other APIs) only
to a secure context: https, or http on localhost. A phone on the LAN therefore needs https
to classify photos from its camera.

Without --certfile/--keyfile, a self-signed certificate is made with `openssl` on the first
start and kept in DIR/tls (the `cryptography` package is no dependency of mlitb), so each
device accepts the browser's warning once. It names localhost, 127.0.0.1, ::1 and the
server's addresses; when those change (a new LAN address), a new one is made.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
from pathlib import Path


class TLSError(ValueError):
    """No certificate could be had; the message says why and what to do."""


def certificate(data_dir: str | Path, hosts: list[str]) -> tuple[Path, Path]:
    """(certfile, keyfile) of a self-signed certificate for `hosts`, kept in DATA_DIR/tls."""
    folder = Path(data_dir) / "tls"
    cert, key, names = folder / "cert.pem", folder / "key.pem", folder / "hosts.txt"
    wanted = sorted({h.strip("[]") for h in [*hosts, "localhost", "127.0.0.1", "::1"] if h})
    if cert.exists() and key.exists():
        held = names.read_text().split() if names.exists() else []
        if set(wanted) <= set(held):
            return cert, key
    openssl = shutil.which("openssl")
    if not openssl:
        raise TLSError(
            "--tls without --certfile/--keyfile makes a self-signed certificate with openssl, which is "
            "not installed here; install it (apt-get install openssl, brew install openssl) or pass "
            "--certfile FILE --keyfile FILE"
        )
    folder.mkdir(parents=True, exist_ok=True)
    san = ",".join(f"IP:{h}" if _is_ip(h) else f"DNS:{h}" for h in wanted)
    new_cert, new_key = folder / "cert.pem.tmp", folder / "key.pem.tmp"
    # What iOS and Chrome ask of a server certificate: SAN, serverAuth, <= 825 days, SHA-256.
    cmd = [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256", "-days", "825",
           "-keyout", str(new_key), "-out", str(new_cert), "-subj", "/CN=mlitb (self-signed)",
           "-addext", f"subjectAltName={san}", "-addext", "extendedKeyUsage=serverAuth",
           "-addext", "basicConstraints=critical,CA:FALSE"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise TLSError(f"openssl could not make a certificate: {done.stderr.strip()[-400:]}")
    os.chmod(new_key, 0o600)
    new_key.replace(key)
    new_cert.replace(cert)
    names.write_text("\n".join(wanted) + "\n")
    return cert, key


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
