"""The module structure the code relies on: readers of the metric state share the schema
(aggregator/schema.py), never the engine; the aggregator's modules import each other without a
circle (counting imports made only for type checking: a circle there is a circle in the design)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("aggregator", "producer")
#: The only modules that may import the engine: the process that wires it to the consumers.
ENGINE_USERS = {"aggregator.daemon"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _module_level(body: list[ast.stmt]) -> list[ast.stmt]:
    """The statements run at import (with ``if TYPE_CHECKING:`` and ``try:`` blocks), not the
    bodies of functions: an import inside a function is deliberately lazy."""
    out: list[ast.stmt] = []
    for node in body:
        out.append(node)
        if isinstance(node, ast.If):
            out += _module_level(node.body) + _module_level(node.orelse)
        elif isinstance(node, ast.Try):
            out += _module_level(node.body) + _module_level(node.orelse) + _module_level(node.finalbody)
            for handler in node.handlers:
                out += _module_level(handler.body)
    return out


def _imports() -> dict[str, set[str]]:
    modules = {_module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        found: set[str] = set()
        for node in _module_level(ast.parse(path.read_text(), str(path)).body):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # ``from package import module`` depends on the module (the package's
                # ``__init__`` runs first, but a submodule reaching its siblings that way is no
                # circle); ``from module import name`` on the module.
                submodules = [f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in modules]
                targets = submodules or [node.module]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            found |= {t for t in targets if t in modules and t != name}
        graph[name] = found
    return graph


def test_only_the_wiring_imports_the_engine() -> None:
    users = {name for name, deps in _imports().items() if "aggregator.engine" in deps}
    assert users <= ENGINE_USERS, f"read metric state through aggregator.schema, not the engine: {users - ENGINE_USERS}"


def test_no_import_circle() -> None:
    graph = _imports()
    circles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                circles.append([*path[path.index(dep) :], dep])
            elif dep not in state:
                visit(dep, [*path, dep])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert circles == [], "import circles:\n" + "\n".join(" -> ".join(c) for c in circles)


def test_references_lead_to_the_repository() -> None:
    """Facts the code relies on are cited from the repository (docs/, LiteLLM's installed code),
    not from texts outside it ("spec §2.1", "issue 3")."""
    import re

    outside = re.compile(r"spec §|\(spec §|\(spec `|§\s?\d|\bissue \d+\b", re.IGNORECASE)
    files = [ROOT / "README.md", ROOT / "CHANGELOG.md"]
    for folder, patterns in {
        "producer": ("*.py",),
        "aggregator": ("*.py", "*.lua"),
        "tests": ("*.py",),
        "bench": ("*.py",),
        "docs": ("*.md",),
        "deploy": ("*.yml", "*.yaml", "*.md"),
    }.items():
        for pattern in patterns:
            files += sorted((ROOT / folder).rglob(pattern))
    this = Path(__file__).resolve()
    found = [
        f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
        for path in files
        if path.resolve() != this
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if outside.search(line)
    ]
    assert found == [], "\n".join(found)


def test_the_high_water_mark_rule_is_written_once() -> None:
    """The scripts that keep a producer's mark share aggregator/hwm.lua; none repeats its loop."""
    from aggregator.scripts import script

    for name in ("apply.lua", "gaps.lua"):
        text = (ROOT / "aggregator" / name).read_text()
        assert "advance_mark(" in text and "ZREMRANGEBYRANK" not in text, name
        assert script(name).startswith((ROOT / "aggregator" / "hwm.lua").read_text()), name
