"""Constant-time comparison of secrets that came from outside (tokens, keys, grants).

`secrets.compare_digest` raises TypeError on a str with non-ASCII characters, and
`str.encode()` raises on a lone surrogate ("\\ud800" is valid JSON): either turned a
stray byte in an Authorization header or a join message into a 500 or a dropped
socket instead of a plain "wrong token". Everything is compared as UTF-8 bytes, lone
surrogates passed through, so a wrong secret is only ever wrong.
"""

from __future__ import annotations

import hmac


def as_bytes(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


def same_secret(sent: object, expected: str) -> bool:
    """Whether `sent` (anything a client sent) equals `expected`, in constant time."""
    return isinstance(sent, str) and hmac.compare_digest(as_bytes(sent), as_bytes(expected))
