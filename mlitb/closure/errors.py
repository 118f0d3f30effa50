"""Why a closure file was refused or failed verification, in words a user can act on."""

from __future__ import annotations

from mlitb.model.errors import FormatError


class ClosureError(FormatError):
    """A closure that cannot be read: not a zip, a missing or oversized member, an
    unknown format version, arrays of the wrong size. `member` names the culprit."""

    def __init__(self, message: str, member: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.member = member
