"""The one error the master's routes turn into an HTTP answer: a status, a message
that says what to do, and a stable code clients can test. Its own module so the
modules that check a request (projects, datasets, model specs, closures) raise it
without importing one another."""

from __future__ import annotations


class ProjectError(Exception):
    def __init__(self, status: int, message: str, code: str = "bad_request") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.layer: int | None = None  # a spec's bad layer, for the layer editor (model_specs.py)
