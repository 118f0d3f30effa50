"""One-time sign-in codes: how an owner link signs a browser in without a token in a URL.

A browser keeps every address it opens in its history database (Chromium: even after the
page rewrote it with history.replaceState) and offers it again in address-bar
suggestions, so an owner link that carried the owner token (`#/signin/PROJECT/TOKEN`)
left the token on the disk of every browser that opened it. The link now carries a code
(`#/signin-code/CODE`) that the page exchanges once, by POST with the code in the body,
for the owner token and, where the CLI passed it along, the data server's write token.

The master keeps no copy of a code or of the tokens it hands out: only the SHA-256 of
the code, and the tokens sealed with a keystream derived from the code (SHAKE-256) and
an HMAC tag, in its SQLite store, so a link survives a master restart and a copy of the
database alone opens nothing. A code is 192 random bits (guessing is infeasible),
expires (24 h by default) and works once: redemption deletes it in the same transaction.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import time
from dataclasses import dataclass

from mlitb.master.server.store import MasterStore

DEFAULT_TTL_S = 24 * 3600
MIN_TTL_S, MAX_TTL_S = 60, 7 * 86400
MAX_CODE_CHARS = 100
CODE_CHARS = re.compile(r"[A-Za-z0-9_-]+")  # secrets.token_urlsafe's alphabet
_TAG = 32


class SigninCodeError(Exception):
    """A code that cannot be redeemed: `status` (400, 404, 410), `code` for the page."""

    def __init__(self, status: int, message: str, code: str) -> None:
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


@dataclass(frozen=True)
class Redeemed:
    project: str
    owner_token: str
    data_token: str | None


def _digest(label: bytes, code: str) -> bytes:
    return hashlib.sha256(b"mlitb signin " + label + b":" + code.encode()).digest()


def code_hash(code: str) -> str:
    return _digest(b"id", code).hex()


def seal(code: str, payload: dict) -> bytes:
    plain = json.dumps(payload).encode()
    stream = hashlib.shake_256(b"mlitb signin key:" + code.encode()).digest(len(plain))
    cipher = bytes(a ^ b for a, b in zip(plain, stream, strict=True))
    return hmac.new(_digest(b"mac", code), cipher, hashlib.sha256).digest() + cipher


def unseal(code: str, sealed: bytes) -> dict:
    tag, cipher = sealed[:_TAG], sealed[_TAG:]
    if not hmac.compare_digest(tag, hmac.new(_digest(b"mac", code), cipher, hashlib.sha256).digest()):
        raise ValueError("sealed tokens do not match the code")
    stream = hashlib.shake_256(b"mlitb signin key:" + code.encode()).digest(len(cipher))
    return json.loads(bytes(a ^ b for a, b in zip(cipher, stream, strict=True)))


class SigninCodes:
    def __init__(self, store: MasterStore) -> None:
        self.store = store

    def mint(
        self, project: str, owner_token: str, data_token: str | None = None, ttl_s: float = DEFAULT_TTL_S
    ) -> tuple[str, float]:
        """A new code for `project` and its expiry (unix time). The caller checked the token."""
        code = secrets.token_urlsafe(24)
        expires = time.time() + ttl_s
        payload = {"owner_token": owner_token, "data_token": data_token or None}
        self.store.put_signin_code(code_hash(code), project, seal(code, payload), expires)
        return code, expires

    def redeem(self, code: str) -> Redeemed:
        """The tokens behind `code`, which is used up; SigninCodeError if it cannot be."""
        if not isinstance(code, str) or not 0 < len(code) <= MAX_CODE_CHARS or not CODE_CHARS.fullmatch(code):
            raise SigninCodeError(
                400,
                f'expected {{"code": "<the code from the owner link>"}} (1-{MAX_CODE_CHARS} characters), '
                f"got {type(code).__name__}{f' of {len(code)} characters' if isinstance(code, str) else ''}",
                "bad_signin_code",
            )
        row = self.store.take_signin_code(code_hash(code))
        if row is None:
            raise SigninCodeError(
                404, _gone("was already used, has expired or was never issued"), "signin_used"
            )
        project, sealed, expires = row
        if expires < time.time():
            raise SigninCodeError(410, _gone(f"for project {project!r} has expired"), "signin_expired")
        try:
            payload = unseal(code, sealed)
        except ValueError:
            raise SigninCodeError(404, _gone("does not match its record"), "signin_used") from None
        return Redeemed(project, payload["owner_token"], payload.get("data_token"))


def _gone(what: str) -> str:
    return (
        f"this sign-in link {what}: each link works once. Fix: run `mlitb project link PROJECT` "
        "where the project was created (it prints a fresh link), or paste the owner token at #/signin"
    )
