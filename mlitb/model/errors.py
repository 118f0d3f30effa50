"""Errors of the model core.

Every error says what was expected, what arrived and, where we know it, how to
fix it, because specs and model files come from users and remote clients:
a bare "invalid spec" helps nobody.
"""

from __future__ import annotations


class ModelError(ValueError):
    """Base of every error raised by `mlitb.model` for bad input."""


class SpecError(ModelError):
    """A layer definition is invalid; names the layer index, its type and the field."""

    def __init__(
        self,
        index: int | str | None,  # "3.1": layer 1 of the block that is layer 3
        layer_type: str | None,
        field: str | None,
        expected: str,
        got: object = None,
        fix: str | None = None,
        problem: str | None = None,
    ) -> None:
        """`problem`: what is wrong, said first when `expected` alone would bury it (an
        unknown field close to a known one: "unknown field 'filtres' (did you mean ...)")."""
        self.index = index
        self.layer_type = layer_type
        self.field = field
        self.expected = expected
        self.got = got
        self.fix = fix
        where = "spec"
        if index is not None:
            where = f"layer {index}" + (f" ({layer_type})" if layer_type else "")
        if field and not problem:
            where += f", field '{field}'"
        msg = f"{where}: {problem}; expected {expected}" if problem else f"{where}: expected {expected}"
        if got is not None:
            msg += f", got {_short(got)}"
        if fix:
            msg += f"; fix: {fix}"
        super().__init__(msg)


class FormatError(ModelError):
    """A model file is not in a supported format, or is inconsistent."""


def _short(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
