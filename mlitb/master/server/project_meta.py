"""What the master knows of a project besides its training: what it is for, when it was
made, who owns it, whether it is private and where its data lives.

The Engine trains and knows none of this, so none of it is set on an Engine: the
ProjectManager keeps a `Project` record per project (runner + meta) and the routes ask
it (`manager.meta_of(runner)`). The values live in the store's projects table and come
back from it at start-up.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlitb.master.server.runner import ProjectRunner
    from mlitb.master.server.store import ProjectRecord


@dataclasses.dataclass(frozen=True)
class ProjectMeta:
    description: str
    created: float  # time.time() at creation; the same value in the store (closures record it)
    owner_hash: str  # token_hash of the owner token given at creation
    join_key_hash: str  # token_hash of the join key; '' = an open project
    data_url: str  # where workers fetch items (public; relative to the master when it starts with /)

    @property
    def private(self) -> bool:
        """A project with a join key: its name, details and data are for key or owner holders."""
        return bool(self.join_key_hash)

    @classmethod
    def stored(cls, rec: ProjectRecord) -> ProjectMeta:
        return cls(rec.description, rec.created, rec.owner_hash, rec.join_key_hash, rec.data_url)


@dataclasses.dataclass(eq=False)
class Project:
    """One project of the master: its runner (and through it the Engine), its meta, and
    the closures exported of it lately (closures.export: scoring a claim is not cheap)."""

    runner: ProjectRunner
    meta: ProjectMeta
    closure_cache: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.runner.name
