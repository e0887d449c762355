"""Import hygiene of the package, read from the source (no module is imported): no module
imports another's private name, and the modules' imports form no cycle."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parent.parent / "jaxconv"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _type_checking_only(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _imports(tree: ast.AST):
    """Every import statement, at module level or in a function, outside
    ``if TYPE_CHECKING:`` blocks (which do not run)."""
    for node in ast.iter_child_nodes(tree):
        if _type_checking_only(node):
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        yield from _imports(node)


def _edges(name: str, path: Path) -> tuple[set[str], list[str]]:
    """The jaxconv modules ``name`` imports, and the private names it takes from them (as
    ``from jaxconv.m import _x`` or ``m._x`` on an imported module ``m``)."""
    tree = ast.parse(path.read_text())
    imported, private, aliases = set(), [], {}
    for node in _imports(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in MODULES:
                    imported.add(alias.name)
                    aliases[alias.asname or alias.name] = alias.name
            continue
        base = node.module or ""
        if node.level:  # relative: from the package of this module
            package = name if path.name == "__init__.py" else name.rpartition(".")[0]
            for _ in range(node.level - 1):
                package = package.rpartition(".")[0]
            base = f"{package}.{base}".strip(".")
        for alias in node.names:
            full = f"{base}.{alias.name}"
            if full in MODULES:  # a module: from jaxconv import m
                imported.add(full)
                aliases[alias.asname or alias.name] = full
            elif base in MODULES:
                imported.add(base)
                if alias.name.startswith("_"):
                    private.append(f"from {base} import {alias.name}")
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in aliases
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
        ):
            private.append(f"{aliases[node.value.id]}.{node.attr}")
    return imported - {name}, private


GRAPH = {name: _edges(name, path) for name, path in MODULES.items()}


def test_the_scan_finds_the_modules_and_their_imports():
    assert {"jaxconv.cli", "jaxconv.cli.args", "jaxconv.train", "jaxconv.shapes"} <= set(MODULES)
    imported, _ = GRAPH["jaxconv.cli.training_commands"]
    assert {"jaxconv.cli.args", "jaxconv.configs", "jaxconv.train"} <= imported


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_module_takes_a_private_name_of_another(name):
    _, private = GRAPH[name]
    assert private == []


def test_no_import_cycle():
    # a package's own modules import it first; that edge is not a cycle
    def parents(name: str) -> set[str]:
        parts = name.split(".")
        return {".".join(parts[:i]) for i in range(1, len(parts))}

    edges = {name: GRAPH[name][0] - parents(name) for name in MODULES}
    cycles, state = [], {}

    def visit(name: str, path: list[str]) -> None:
        state[name] = "open"
        for other in sorted(edges[name]):
            if state.get(other) == "open":
                cycles.append(" -> ".join([*path[path.index(other) :], other]))
            elif other not in state:
                visit(other, [*path, other])
        state[name] = "done"

    for name in sorted(MODULES):
        if name not in state:
            visit(name, [name])
    assert cycles == []
