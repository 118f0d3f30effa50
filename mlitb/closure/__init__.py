"""Research closures: one file that reproduces, verifies and continues a result
(paper sections 2.3, 3.6, 6.4). Format reference: docs/closure.md."""

from .build import ProjectState, build_closure
from .closure import FORMAT_VERSION, Closure
from .errors import ClosureError
from .testset import Score, TestSet, score
from .verify import Report, verify

__all__ = [
    "FORMAT_VERSION",
    "Closure",
    "ClosureError",
    "ProjectState",
    "Report",
    "Score",
    "TestSet",
    "build_closure",
    "score",
    "verify",
]
