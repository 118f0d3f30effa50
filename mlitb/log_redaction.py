"""Secrets never land in a server log: uvicorn's access lines (`uvicorn.access`) and its
WebSocket lines (`uvicorn.error`: `"WebSocket /api/projects/P/stream?token=..." [accepted]`)
print the request's path with its query string, and an old dashboard, a hand-made URL or
a script may still put a token there. This filter rewrites the value of every query
parameter that can carry a credential to `REDACTED` before a handler formats the record,
so the log keeps the request (who, which route, which status) without the secret.

Installed by `server_runner.make_config` for every server the CLI starts (serve,
data-server, relay) and by the tests' background servers.
"""

from __future__ import annotations

import logging
import re

SECRET_PARAMS = ("token", "key", "data", "owner_token", "join_key", "grant", "code", "data_token")
REDACTED = "REDACTED"
_QUERY_SECRET = re.compile(
    r"([?&;](?:" + "|".join(re.escape(p) for p in SECRET_PARAMS) + r")=)[^&;#\s\"']*", re.IGNORECASE
)
LOGGERS = ("uvicorn.access", "uvicorn.error", "uvicorn")


def redact(text: str) -> str:
    """`text` with the values of credential query parameters replaced."""
    return _QUERY_SECRET.sub(lambda m: m.group(1) + REDACTED, text)


class RedactSecrets(logging.Filter):
    """Rewrites a record's message and string arguments; never drops a record."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and "=" in record.msg:
            record.msg = redact(record.msg)
        args = record.args
        if isinstance(args, tuple) and any(isinstance(a, str) and "=" in a for a in args):
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in args)
        elif isinstance(args, dict):
            record.args = {k: redact(v) if isinstance(v, str) else v for k, v in args.items()}
        return True


def install(loggers: tuple[str, ...] = LOGGERS) -> None:
    """Put the filter on each logger once (records are filtered where they are made: a
    logger's filter does not see its children's records, so each logger gets its own)."""
    for name in loggers:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactSecrets) for f in logger.filters):
            logger.addFilter(RedactSecrets())
