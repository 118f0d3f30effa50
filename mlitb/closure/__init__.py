"""Research closures: one file that reproduces, verifies and continues a result
(paper sections 2.3, 3.6, 6.4). Format reference: docs/closure.md."""

from .build import ProjectState, build_closure
from .closure import FORMAT_VERSION, Closure
from .errors import ClosureError
from .testset import Score, TestSet, score
from .verify import Report, verify


def load_model(path):
    """The model in `path`: a research closure (.mlitb, a zip) or a JSON model file."""
    from pathlib import Path

    from mlitb.model import Model

    with open(Path(path), "rb") as f:
        zipped = f.read(2) == b"PK"
    return Closure.load(path).model() if zipped else Model.load(path)


__all__ = [
    "FORMAT_VERSION",
    "Closure",
    "ClosureError",
    "ProjectState",
    "Report",
    "Score",
    "TestSet",
    "build_closure",
    "load_model",
    "score",
    "verify",
]
