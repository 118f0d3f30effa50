"""Errors of the data server, each carrying the HTTP status the sender gets.

A message says what was expected, what arrived and the fix, because uploads come
from people dragging zips into a browser: "bad request" helps nobody.
"""

from __future__ import annotations


class DataError(Exception):
    """Bad input to the data server; `status` is the HTTP status to answer with, `headers`
    extra response headers (Retry-After on a 503, WWW-Authenticate on a 401), `extra` more
    fields of the JSON answer for programs (the holders of a dataset that is in use)."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str = "bad_request",
        headers: dict[str, str] | None = None,
        extra: dict | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.headers = headers or {}
        self.extra = extra or {}

    def to_json(self) -> dict:
        return {"error": self.code, "detail": self.message, **self.extra}


def bad_request(message: str, code: str = "bad_request") -> DataError:
    return DataError(400, message, code)


def too_large(message: str, code: str = "too_large") -> DataError:
    return DataError(413, message, code)


def not_found(message: str) -> DataError:
    return DataError(404, message, "not_found")


def unprocessable(message: str, code: str = "unprocessable") -> DataError:
    return DataError(422, message, code)


def busy(message: str, retry_after_s: int, code: str = "busy") -> DataError:
    """503: the upload is fine but the server has no room for it now; try again later."""
    return DataError(503, message, code, {"Retry-After": str(retry_after_s)})
