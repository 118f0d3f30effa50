"""Errors of the data server, each carrying the HTTP status the sender gets.

A message says what was expected, what arrived and the fix, because uploads come
from people dragging zips into a browser: "bad request" helps nobody.
"""

from __future__ import annotations


class DataError(Exception):
    """Bad input to the data server; `status` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str, code: str = "bad_request") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code

    def to_json(self) -> dict:
        return {"error": self.code, "detail": self.message}


def bad_request(message: str, code: str = "bad_request") -> DataError:
    return DataError(400, message, code)


def too_large(message: str, code: str = "too_large") -> DataError:
    return DataError(413, message, code)


def not_found(message: str) -> DataError:
    return DataError(404, message, "not_found")


def unprocessable(message: str, code: str = "unprocessable") -> DataError:
    return DataError(422, message, code)
