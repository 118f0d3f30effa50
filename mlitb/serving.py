"""Assembling what `mlitb serve` runs: the master app, the data server mounted at /data
(unless an external one is named), and optionally the MNIST demo."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from fastapi import FastAPI

from mlitb.data.limits import DEFAULT_LIMITS, Limits


def build_app(
    data_dir: str | Path,
    local_url: str,
    external_data_url: str | None = None,
    data_token: str | None = None,
    demo: bool | str = False,
    demo_workers: int = 1,
    demo_target: float | None = None,
    limits: Limits = DEFAULT_LIMITS,
    public_url: str | None = None,
    announce: Callable[[str], None] | None = None,
    token_urls: tuple[str, ...] = (),
) -> FastAPI:
    """`local_url`: how this process reaches itself (http://127.0.0.1:PORT). `data_token`:
    the built-in data server's write token (None: the one kept in `data_dir`, created on
    the first start), or an external data server's token. The master uses it to place
    holds on its projects' datasets and the demo to upload MNIST; `app.state.data_token`
    tells the caller (serve prints it and stores it for the CLI). `public_url`: the address
    volunteers use (GET /api names it; the demo prints its links with it); `announce`:
    where the demo's progress lines go (the terminal); `token_urls`: more server URLs to
    store the demo's owner token under."""
    from mlitb.data.app import create_app as create_data_app
    from mlitb.master.server.app import create_master_app

    data_dir = Path(data_dir)
    if external_data_url:
        data_app = None
        internal = public = external_data_url.rstrip("/")
    else:
        data_app = create_data_app(data_dir, limits, token=data_token)
        data_token = data_app.state.write_token
        internal, public = f"{local_url}/data", "/data"
    hooks = []
    if demo:
        from mlitb.demo import DEMOS, run_demo

        which = DEMOS["mnist" if demo is True else demo]  # `demo`: True or a demo's name

        async def demo_hook(app: FastAPI) -> None:
            await run_demo(
                app, local_url, internal, data_dir, demo_workers, data_token, demo_target,
                public_url=public_url, say=announce, token_urls=token_urls, demo=which,
            )  # fmt: skip

        hooks.append(demo_hook)
    app = create_master_app(
        data_dir, internal, public, data_app, hooks, data_token=data_token, public_url=public_url
    )
    app.state.data_token = data_token
    return app
