"""Package layout rules, checked on the source (no imports of the checked modules)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "sparkann"

# Modules held to "no private name from another module" (the command line, the
# readers, the benchmarks and the jobs, and their tests).
NO_PRIVATE_IMPORTS = [
    *sorted((PACKAGE / "cli").glob("*.py")),
    PACKAGE / "readers.py",
    PACKAGE / "vectorio.py",
    *sorted((REPO / "benchmarks").glob("*.py")),
    *sorted((REPO / "jobs").glob("*.py")),
    *(REPO / "tests" / name for name in ("conftest.py", "test_cli.py", "test_readers.py",
                                         "test_shared_data.py", "test_benchmark.py",
                                         "test_layout.py")),
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def package_modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imported_modules(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The sparkann modules ``name`` imports anywhere (also inside functions)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = parts[: len(parts) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            targets = [f"{module}.{alias.name}" if f"{module}.{alias.name}" in modules
                       else module for alias in node.names]
        else:
            continue
        for target in targets:
            while target not in modules and "." in target:
                target = target.rpartition(".")[0]
            if target in modules and target != name:
                found.add(target)
    return found


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` as a list of modules, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for child in sorted(graph[node]):
            if state.get(child) == 1:
                return stack[stack.index(child):] + [child]
            if child not in state and (cycle := visit(child)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycles_in_the_package():
    modules = package_modules()
    graph = {name: imported_modules(name, path, modules) for name, path in modules.items()}
    assert find_cycle(graph) is None


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def private_uses(path: Path) -> list[str]:
    """``from m import _x`` and ``m._x`` where ``m`` names an imported module."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    module_names, uses = set(), []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                module_names.add(alias.asname or alias.name.partition(".")[0])
                if any(part.startswith("_") and not part.startswith("__")
                       for part in alias.name.split(".")):
                    uses.append(f"import {alias.name}")
        elif isinstance(node, ast.ImportFrom):
            for alias in node.names:
                if alias.name.startswith("_") and not alias.name.startswith("__"):
                    module = "." * node.level + (node.module or "")
                    uses.append(f"from {module} import {alias.name}")
                elif alias.name[:1].islower():  # perhaps a module (from sparkann import readers)
                    module_names.add(alias.asname or alias.name)
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                and node.value.id in module_names and node.attr.startswith("_")
                and not node.attr.startswith("__")):
            uses.append(f"{node.value.id}.{node.attr}")
    return uses


@pytest.mark.parametrize("path", NO_PRIVATE_IMPORTS, ids=lambda p: str(p.relative_to(REPO)))
def test_no_private_names_from_other_modules(path):
    assert private_uses(path) == []


def test_package_holds_no_benchmark_code_or_shared_data_paths():
    assert not list(PACKAGE.rglob("bench*.py"))
    shared = re.compile(r"\.\./shared|shared/data|[\"']shared[\"']\s*/\s*[\"']data[\"']")
    assert [str(p) for p in PACKAGE.rglob("*.py") if shared.search(p.read_text())] == []
