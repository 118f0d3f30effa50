"""Read grants: who may read a private dataset's items.

A dataset held by a project with a join key is private (`PUT /datasets/{id}/holds/
{holder}?private=1`): its items, images and sources are served only to a caller with the
write token or with that dataset's read grant, HMAC-SHA256(write token, "read:{id}") in
hex, sent as header `X-Read-Grant` (or `?grant=`). The master, which knows the write
token, puts the grant in the allocation messages of the project's workers, who got in
with the join key; nobody else can compute it. Without a write token the data server is
open and cannot keep anything private (it says so in its log).
"""

from __future__ import annotations

import hashlib
import hmac

from mlitb.secret_compare import same_secret

GRANT_HEADER = "X-Read-Grant"


def read_grant(token: str, dataset: int) -> str:
    return hmac.new(token.encode(), f"read:{int(dataset)}".encode(), hashlib.sha256).hexdigest()


def grant_ok(token: str, dataset: int, grant: str | None) -> bool:
    return bool(grant) and same_secret(grant.strip(), read_grant(token, dataset))
