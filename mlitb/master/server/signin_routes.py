"""REST routes for signing a browser in as a project's owner: check an owner token, mint
a one-time sign-in code for an owner link, redeem one (signin_codes.py holds the codes).

    GET    /api/projects/{name}/owner         200 if the bearer token is the owner token
    POST   /api/projects/{name}/signin-codes  (owner) a one-time code for an owner link
    POST   /api/signin                        {"code"} -> the owner token (and data token), once
"""

from __future__ import annotations

import logging
import secrets

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from mlitb.master.server.access import bearer_token, owner
from mlitb.master.server.bodies import json_body
from mlitb.master.server.errors import ProjectError
from mlitb.master.server.projects import ProjectManager
from mlitb.master.server.security_events import SecurityEvents
from mlitb.master.server.signin_codes import DEFAULT_TTL_S, MAX_TTL_S, MIN_TTL_S, SigninCodeError, SigninCodes
from mlitb.master.server.store import token_hash
from mlitb.secret_compare import same_secret

log = logging.getLogger("mlitb.master")


def signin_router(manager: ProjectManager, signin_codes: SigninCodes, security: SecurityEvents) -> APIRouter:
    router = APIRouter()

    @router.get("/api/projects/{name}/owner")
    async def check_owner_token(name: str, request: Request) -> dict:
        """200 if the bearer token is this project's owner token, else 403: the dashboard's
        sign-in checks a token before it keeps it."""
        owner(manager, request, name)
        return {"project": name, "owner": True}

    @router.post("/api/projects/{name}/signin-codes", status_code=201)
    async def mint_signin_code(name: str, request: Request):
        """A one-time code for an owner link (`#/signin-code/CODE`): the link signs a browser
        in without the owner token in any URL (signin_codes.py). Body, optional:
        {"data_token": the data server's write token to hand over too, "ttl_s": seconds}."""
        owner(manager, request, name)
        body = await json_body(request)
        data_token, ttl = body.get("data_token"), body.get("ttl_s", DEFAULT_TTL_S)
        if data_token is not None and not (isinstance(data_token, str) and 0 < len(data_token) <= 200):
            raise ProjectError(
                400, "data_token: expected the data server's write token (a string)", "bad_body"
            )
        if type(ttl) not in (int, float) or not MIN_TTL_S <= ttl <= MAX_TTL_S:
            raise ProjectError(
                400, f"ttl_s: expected seconds from {MIN_TTL_S} to {MAX_TTL_S}, got {ttl!r}", "bad_body"
            )
        own_token = manager.data.token
        if data_token and own_token and not same_secret(data_token, own_token):
            security.refused("signin_code_bad_data_token", "sign-in code for %s: a wrong data token", name)
            raise ProjectError(
                400,
                "data_token is not the write token of this master's data server; fix: leave it out, or "
                "pass the one `mlitb serve` printed (file data-token in its data directory)",
                "bad_data_token",
            )
        code, expires = signin_codes.mint(name, bearer_token(request) or "", data_token, float(ttl))
        security.count("signin_code_minted")
        log.info("sign-in code minted for project %s (expires in %.0f s)", name, ttl)
        return JSONResponse(
            {
                "project": name,
                "code": code,
                "expires": expires,
                "expires_in_s": ttl,
                "path": f"/#/signin-code/{code}",
            },
            status_code=201,
        )

    @router.post("/api/signin")
    async def redeem_signin_code(request: Request) -> dict:
        """Exchange an owner link's one-time code (in the body, never the URL) for the tokens."""
        body = await json_body(request)
        address = request.client.host if request.client else "-"
        try:
            got = signin_codes.redeem(body.get("code"))
            project = manager.projects.get(got.project)
            if project is None or not secrets.compare_digest(
                token_hash(got.owner_token), project.meta.owner_hash
            ):
                raise SigninCodeError(
                    410,
                    f"this sign-in link was for project {got.project!r}, which was deleted or made "
                    "anew since; fix: `mlitb project link PROJECT` prints a link for the project as it is",
                    "signin_project_gone",
                )
        except SigninCodeError as exc:
            security.refused(exc.code, "sign-in code from %s: %s", address, exc.message[:80])
            return JSONResponse({"error": exc.code, "detail": exc.message}, status_code=exc.status)
        security.count("signin_code_redeemed")
        log.info("sign-in code redeemed for project %s from %s", got.project, address)
        return {"project": got.project, "owner_token": got.owner_token, "data_token": got.data_token}

    return router
