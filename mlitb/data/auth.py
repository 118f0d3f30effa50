"""The data server's write token: who may upload, append, delete and place holds.

Reads stay open (workers on any device fetch items without credentials) except a
private project's datasets (grants.py); every write needs `Authorization: Bearer
TOKEN`. Unless one is given (`--token`, `--data-token`,
MLITB_DATA_TOKEN), the token is generated on the first start and kept in the data
directory (file `data-token`, mode 0600), so it survives restarts and whoever can read
the data directory can write to the data server anyway.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from mlitb.secret_compare import same_secret

from .errors import DataError

TOKEN_FILE = "data-token"
MIN_TOKEN_CHARS = 16


def token_path(data_dir: Path | str) -> Path:
    return Path(data_dir) / TOKEN_FILE


def load_or_create_token(data_dir: Path | str) -> str:
    """The token stored in `data_dir`, or a new one written there first (0600, atomically:
    two servers starting on one directory at once end up with the same token)."""
    path = token_path(data_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        token = path.read_text().strip()
    except FileNotFoundError:
        token = ""
    if token:
        return token
    new = secrets.token_urlsafe(32)
    while new.startswith("-"):  # `--token -abc...` would read as an option on the command line
        new = secrets.token_urlsafe(32)
    tmp = path.with_name(f".{TOKEN_FILE}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(new + "\n")
    try:
        os.link(tmp, path)  # fails if another process created it meanwhile: use theirs
    except FileExistsError:
        pass
    finally:
        tmp.unlink()
    return path.read_text().strip()


def check_token_text(token: str) -> str:
    """A token given by the operator: long enough to resist guessing over HTTP."""
    token = token.strip()
    if len(token) < MIN_TOKEN_CHARS or any(c.isspace() for c in token):
        raise ValueError(
            f"data server token: expected at least {MIN_TOKEN_CHARS} characters without spaces, "
            f"got {len(token)}; fix: leave it out to have one generated"
        )
    return token


def check_bearer(header: str, token: str) -> None:
    """401 when no bearer token came, 403 when it is not this server's."""
    scheme, _, sent = header.strip().partition(" ")
    sent = sent.strip()
    if scheme.lower() != "bearer" or not sent:
        got = "no Authorization header" if not header.strip() else f"Authorization scheme {scheme!r}"
        raise DataError(
            401,
            "writing to this data server (upload, append, delete, holds) needs its write token: "
            f"send 'Authorization: Bearer <token>' (got {got}). The token is printed when "
            "`mlitb serve` or `mlitb data-server` starts and is kept in its data directory "
            f"(file {TOKEN_FILE}); the mlitb CLI finds it in its token store, or pass --token / "
            "MLITB_DATA_TOKEN; in the dashboard, open the owner link `mlitb serve` printed or "
            "paste the token into 'data write token'",
            "unauthorized",
            {"WWW-Authenticate": 'Bearer realm="mlitb-data"'},
        )
    if not same_secret(sent, token):
        raise DataError(
            403,
            "the write token sent is not this data server's; fix: use the token printed at its "
            f"start-up (also in its data directory, file {TOKEN_FILE})",
            "forbidden",
        )
