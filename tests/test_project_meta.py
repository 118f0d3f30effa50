"""A project's meta (description, created, owner token hash, join key hash, data server)
is the ProjectManager's, kept next to the runner, never set on the Engine from outside
(issue 24): the Engine trains and knows none of it. The meta comes back from the store
when a manager starts again on the same data directory."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
from test_learning_integration import FC_SPEC

from mlitb.master.project.engine import Engine
from mlitb.master.server.project_meta import ProjectMeta
from mlitb.master.server.projects import ProjectError, ProjectManager
from mlitb.master.server.store import MasterStore, token_hash

META = ("created", "description", "owner_hash", "join_key_hash", "data_url")
LABELS = [str(d) for d in range(10)]


def _no_meta_on(engine: Engine) -> None:
    for attr in META:
        assert not hasattr(engine, attr), f"Engine.{attr} was set from outside"
        assert not hasattr(Engine, attr), f"Engine has a class attribute {attr}"


async def _create_then_restart(state: Path) -> tuple[ProjectMeta, ProjectMeta, str]:
    store = MasterStore(state / "master.sqlite")
    manager = ProjectManager(store, "http://127.0.0.1:9/data", "/data")  # no datasets: never asked
    try:
        body = {"name": "meta", "description": "what it is for", "spec": FC_SPEC, "labels": LABELS}
        runner, token, warnings = await manager.create({**body, "join_key": "k"})
        assert warnings == []
        _no_meta_on(runner.engine)
        before = manager.meta_of(runner)
        assert manager.open_runners() == []  # private: a join key
        manager.check_owner(runner, token)
        manager.check_reader(runner, None, "k")
    finally:
        await manager.close()
        store.close()

    store = MasterStore(state / "master.sqlite")
    manager = ProjectManager(store, "http://127.0.0.1:9/data", "/data")
    try:
        await manager.load_all()
        runner = manager.get("meta")
        _no_meta_on(runner.engine)
        after = manager.meta_of(runner)
        await manager.delete(runner)
        try:
            manager.meta_of(runner)
            raise AssertionError("a deleted project's meta is still served")
        except ProjectError as exc:
            assert exc.status == 404
    finally:
        await manager.close()
        store.close()
    return before, after, token


def test_meta_is_the_managers_and_survives_a_restart(tmp_path: Path):
    before, after, token = asyncio.run(_create_then_restart(tmp_path))
    assert before == after
    assert before.description == "what it is for" and before.created > 0
    assert before.owner_hash == token_hash(token) and before.join_key_hash == token_hash("k")
    assert before.private and before.data_url == "/data"


def test_details_over_http_after_a_master_restart(master):
    """The API shows the same meta before and after a restart of the master (the Engine
    holds none of it)."""
    body = {"name": "m2", "description": "digits", "spec": FC_SPEC, "labels": LABELS, "join_key": "k2"}
    resp = httpx.post(f"{master.url}/api/projects", json=body, timeout=60)
    assert resp.status_code == 201, resp.text
    first = resp.json()["project"]
    assert first["description"] == "digits" and first["join_key"] is True and first["data_url"] == "/data"
    _no_meta_on(master.manager.get("m2").engine)
    master.restart()
    resp = httpx.get(f"{master.url}/api/projects/m2", headers={"X-Join-Key": "k2"}, timeout=60)
    assert resp.status_code == 200, resp.text
    again = resp.json()
    for key in ("description", "created", "join_key", "data_url"):
        assert again[key] == first[key], key
    _no_meta_on(master.manager.get("m2").engine)
    assert httpx.get(f"{master.url}/api/projects/m2", timeout=60).status_code == 403
