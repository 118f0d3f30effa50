"""Input shapes of datasets: height x width x channels, channels 1 (grey) or 3 (RGB)."""

from __future__ import annotations

from .errors import bad_request

MAX_SIDE = 4096


def parse_shape(text: str | tuple | list) -> tuple[int, int, int]:
    """'28x28x1' (or a 3-sequence) -> (28, 28, 1); refuses anything else with the fix."""
    is_seq = isinstance(text, (tuple, list))
    parts = list(text) if is_seq else str(text).lower().replace("*", "x").split("x")
    try:
        if len(parts) != 3:
            raise ValueError
        h, w, c = (int(p) for p in parts)
    except (TypeError, ValueError):
        raise bad_request(
            f"shape: expected HEIGHTxWIDTHxCHANNELS such as 28x28x1 or 32x32x3, got {text!r}",
            "bad_shape",
        ) from None
    if not (1 <= h <= MAX_SIDE and 1 <= w <= MAX_SIDE):
        raise bad_request(f"shape: height and width must be 1..{MAX_SIDE}, got {h}x{w}x{c}", "bad_shape")
    if c not in (1, 3):
        raise bad_request(
            f"shape: channels must be 1 (grayscale) or 3 (RGB), got {c}; fix: use {h}x{w}x1 or {h}x{w}x3",
            "bad_shape",
        )
    return h, w, c


def format_shape(shape: tuple[int, int, int]) -> str:
    return "x".join(str(s) for s in shape)
