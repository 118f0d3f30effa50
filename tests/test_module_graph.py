"""The package's import graph: no circles (imports inside functions count: a lazy import
hides a circle, it does not remove it), and imports go one way (workers never import
master code; the master's sans-I/O core never imports its server; plug-ins never import
the engine). Parsed from the source, so a module that is never imported is checked too."""

from __future__ import annotations

import ast
from pathlib import Path

import mlitb

ROOT = Path(mlitb.__file__).parent
MAX_MASTER_LINES = 450  # "about 400": a module past it wants splitting by concern


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in ROOT.rglob("*.py")}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The mlitb modules `name` imports anywhere in its source (relative ones resolved)."""
    is_package = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".")
                anchor = anchor if is_package else anchor[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            # `from pkg import sub` imports the submodule pkg.sub when there is one
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        out.update(t for t in targets if t in known and t != name)
    return out


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {name: imports_of(name, path, known) for name, path in mods.items()}


def find_cycle(g: dict[str, set[str]]) -> list[str] | None:
    WHITE, GREY, BLACK = 0, 1, 2
    color = dict.fromkeys(g, WHITE)
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        color[n] = GREY
        stack.append(n)
        for m in sorted(g[n]):
            if color[m] == GREY:
                return [*stack[stack.index(m) :], m]
            if color[m] == WHITE and (found := visit(m)):
                return found
        stack.pop()
        color[n] = BLACK
        return None

    for n in sorted(g):
        if color[n] == WHITE and (found := visit(n)):
            return found
    return None


def test_the_graph_is_read_from_the_source():
    g = graph()
    assert "mlitb.master.server.runner" in g["mlitb.master.server.projects"]
    assert "mlitb.master.project.engine" in g["mlitb.master.server.runner"]
    # a cycle is found where there is one
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_circle_among_the_packages_modules():
    cycle = find_cycle(graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])


def test_imports_go_one_way():
    g = graph()
    rules = [
        ("mlitb.worker", ("mlitb.master", "mlitb.relay")),  # workers never import master code
        ("mlitb.master.project", ("mlitb.master.server",)),  # the sans-I/O core has no I/O
        ("mlitb.master.learning", ("mlitb.master.project", "mlitb.master.server", "mlitb.master.trust")),
        ("mlitb.master.trust", ("mlitb.master.project", "mlitb.master.server")),
        ("mlitb.master.privacy", ("mlitb.master.project", "mlitb.master.server", "mlitb.master.trust")),
        ("mlitb.master.sched", ("mlitb.master.project", "mlitb.master.server", "mlitb.master.trust")),
        ("mlitb.model", ("mlitb.master", "mlitb.closure", "mlitb.relay", "mlitb.worker")),
    ]
    wrong = [
        f"{mod} imports {dep}"
        for prefix, forbidden in rules
        for mod, deps in g.items()
        if mod == prefix or mod.startswith(prefix + ".")
        for dep in deps
        if any(dep == f or dep.startswith(f + ".") for f in forbidden)
    ]
    assert not wrong, wrong


def test_no_master_module_is_past_about_400_lines():
    long = {
        str(p.relative_to(ROOT)): n
        for p in (ROOT / "master").rglob("*.py")
        if (n := len(p.read_text().splitlines())) > MAX_MASTER_LINES
    }
    assert not long, f"split these by concern: {long}"
