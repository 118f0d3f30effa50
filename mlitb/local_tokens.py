"""Tokens kept in a local config file, so the CLI (and `serve --demo`) works without
pasting them: owner tokens (`mlitb project start NAME` after `mlitb project create`),
keyed by server URL and project name, and data server write tokens (`mlitb data upload`
against the data server that `mlitb serve` or `mlitb data-server` started here), keyed by
data server URL. Outside mlitb.cli because the demo stores its tokens too (mlitb.demo is
imported by mlitb.serving, which the CLI imports: one package circle less).
File: $MLITB_CONFIG or ~/.config/mlitb/tokens.json, mode 0600.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from urllib.parse import quote

DATA_PREFIX = "data-server "
VOLUNTEER = "volunteer key"  # this machine's volunteer key (volunteer_key)


def config_path() -> Path:
    env = os.environ.get("MLITB_CONFIG")
    if env:
        return Path(env)
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "mlitb" / "tokens.json"


def _key(server: str, project: str) -> str:
    return f"{server.rstrip('/')}#{project}"


def _data_keys(url: str) -> list[str]:
    """The keys a data server URL is looked up under: as given, then with localhost and
    127.0.0.1 swapped (the URL printed at start-up says 127.0.0.1, people type localhost)."""
    url = url.rstrip("/")
    keys = [DATA_PREFIX + url]
    for a, b in (("://localhost:", "://127.0.0.1:"), ("://127.0.0.1:", "://localhost:")):
        if a in url:
            keys.append(DATA_PREFIX + url.replace(a, b, 1))
    return keys


def load_all() -> dict:
    path = config_path()
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return {}


def _save(entries: dict[str, str]) -> Path:
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    data = load_all()
    data.update(entries)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(data, indent=1))
    os.chmod(tmp, 0o600)
    tmp.replace(path)
    return path


def save_token(server: str, project: str, token: str) -> Path:
    return _save({_key(server, project): token})


def signin_link(public_url: str, code: str) -> str:
    """The owner link (`#/signin-code/CODE`): it signs one browser in as the owner, once.
    It carries a one-time code that the page exchanges for the owner token (and the data
    write token, where the CLI handed it to the master), never a token: a browser keeps
    every address it opened in its history (mlitb.master.server.signin_codes)."""
    return f"{public_url.rstrip('/')}/#/signin-code/{quote(code, safe='')}"


def volunteer_key() -> str:
    """This machine's volunteer key (made once, kept with the tokens): native workers send
    it in their join, and the master counts their credit under a hash of it, so credit
    from this machine adds up across runs and projects (mlitb.master.project.credit)."""
    key = load_all().get(VOLUNTEER)
    if isinstance(key, str) and 16 <= len(key) <= 100:
        return key
    key = secrets.token_urlsafe(24)
    _save({VOLUNTEER: key})
    return key


def get_token(server: str, project: str) -> str | None:
    return os.environ.get("MLITB_TOKEN") or load_all().get(_key(server, project))


def save_data_token(urls: list[str], token: str) -> Path:
    """The write token of the data server reachable at each of `urls`."""
    return _save({DATA_PREFIX + u.rstrip("/"): token for u in urls})


def get_data_token(url: str) -> str | None:
    """MLITB_DATA_TOKEN, else the token stored for this data server URL, else None."""
    env = os.environ.get("MLITB_DATA_TOKEN")
    if env:
        return env
    stored = load_all()
    return next((stored[k] for k in _data_keys(url) if k in stored), None)
