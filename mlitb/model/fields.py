"""Reading one layer definition's fields, with errors that name the field.

Specs arrive as JSON from browsers, files and remote clients, so nothing here
trusts a type: `True` is not an int, `5.5` is not a filter size, `NaN` is not a
learning rate.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from difflib import get_close_matches

from .errors import SpecError

_MISSING = object()


class FieldReader:
    """Typed access to one layer dict; remembers which keys were read."""

    def __init__(self, raw: Mapping, index: int, layer_type: str) -> None:
        self.raw = raw
        self.index = index
        self.layer_type = layer_type
        self.used: set[str] = {"type", "layer_type"}
        self.allowed: set[str] = set()  # known once check_misspelt ran: names a stray key
        # (items, in_shape) -> layers: how a block builds its sub-layers (set by mlitb.model.spec)
        self.build_block = None

    def error(self, field: str | None, expected: str, got: object = None, fix: str | None = None):
        return SpecError(self.index, self.layer_type, field, expected, got, fix)

    def has(self, name: str) -> bool:
        return name in self.raw

    def _get(self, name: str, default: object) -> object:
        self.used.add(name)
        if name in self.raw:
            return self.raw[name]
        if default is _MISSING:
            strays = [repr(k) for k in self.raw if self.allowed and k not in self.allowed | self.used]
            stray = f" (not {' or '.join(strays)}: a field of no {self.layer_type} layer)" if strays else ""
            raise self.error(name, "this field (it is required)", None, f"add '{name}'{stray}")
        return default

    def int(self, name: str, default: object = _MISSING, minimum: int = 1) -> int:
        value = self._get(name, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.error(name, f"an integer >= {minimum}", value)
        if isinstance(value, float):
            if not math.isfinite(value) or value != int(value):
                raise self.error(name, f"an integer >= {minimum}", value)
            value = int(value)
        if value < minimum:
            raise self.error(name, f"an integer >= {minimum}", value)
        return value

    def float(
        self,
        name: str,
        default: object = _MISSING,
        minimum: float | None = None,
        below: float | None = None,
    ) -> float:
        value = self._get(name, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.error(name, "a number", value)
        value = float(value)
        if not math.isfinite(value):
            raise self.error(name, "a finite number", value)
        if minimum is not None and value < minimum:
            raise self.error(name, f"a number >= {minimum}", value)
        if below is not None and value >= below:
            raise self.error(name, f"a number < {below}", value)
        return value

    def bool(self, name: str, default: object = _MISSING) -> bool:
        value = self._get(name, default)
        if not isinstance(value, bool):
            raise self.error(name, "true or false", value)
        return value

    def check_unknown(self, allowed: set[str]) -> None:
        """Refuse typos: a misspelt 'strid' would otherwise silently mean stride 1."""
        for key in self.raw:
            if key not in allowed and key not in self.used:
                raise self.unknown(key, allowed)

    def check_misspelt(self, allowed: set[str]) -> None:
        """Before any field is read: a key that is not a field but close to one is a typo, and
        says so ('filtres': did you mean 'filters'?) instead of the required field it was
        meant to be being reported missing."""
        self.allowed = set(allowed)
        for key in self.raw:
            if (
                isinstance(key, str)
                and key not in allowed
                and key not in self.used
                and get_close_matches(key, sorted(allowed - self.used), n=1)
            ):
                raise self.unknown(key, allowed)

    def unknown(self, key: object, allowed: set[str]) -> SpecError:
        known = sorted(allowed - {"type", "layer_type"})
        close = get_close_matches(str(key), known, n=1)
        return SpecError(
            self.index, self.layer_type, str(key), "one of the fields " + ", ".join(known), key,
            "remove or correct the field",
            f"unknown field {str(key)!r} (did you mean {close[0]!r}?)" if close else None,
        )  # fmt: skip
