"""Owner tokens kept in a local config file, so `mlitb project start NAME` works after
`mlitb project create` without pasting tokens. File: $MLITB_CONFIG or
~/.config/mlitb/tokens.json, mode 0600; keyed by server URL and project name.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


def config_path() -> Path:
    env = os.environ.get("MLITB_CONFIG")
    if env:
        return Path(env)
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "mlitb" / "tokens.json"


def _key(server: str, project: str) -> str:
    return f"{server.rstrip('/')}#{project}"


def load_all() -> dict:
    path = config_path()
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return {}


def save_token(server: str, project: str, token: str) -> Path:
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    data = load_all()
    data[_key(server, project)] = token
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.chmod(tmp, 0o600)
    tmp.replace(path)
    return path


def get_token(server: str, project: str) -> str | None:
    return os.environ.get("MLITB_TOKEN") or load_all().get(_key(server, project))
