"""The layers, read from the source: no import cycles in daemon/, replication/ and harness/, the engine never
imports the service, the installed packages never import the harness, the role state machine imports
neither, and no module reaches into another's private names.

Every import counts: at module level, inside functions (the lazy subcommand imports) and under
`if TYPE_CHECKING:`. A cycle that only type checking sees is still two modules that cannot be read,
tested or moved one without the other; name what one needs of the other with a Protocol instead
(daemon/exposure.py's Listener, daemon/store/verifier.py's StoreParts).
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
INSTALLED = ("daemon", "replication")
PACKAGES = (*INSTALLED, "harness")  # the no-Docker compose runner: not installed, held to the same rules
STATE_MACHINE = "daemon.roles"
STATE_MACHINE_MAY_IMPORT = {"daemon.epochs"}  # a constant (the largest epoch), no I/O, no roles


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def source_modules() -> dict[str, Path]:
    return {
        module_name(path): path for package in PACKAGES for path in sorted((ROOT / package).rglob("*.py"))
    }


def imported_names(name: str, path: Path) -> set[str]:
    """Every dotted name `path` imports anywhere in its body, relative imports resolved; `from a import b`
    yields both `a` and `a.b` (b may be a module)."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package[: len(package) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = source_modules()
    return {
        name: {other for other in imported_names(name, path) if other in modules and other != name}
        for name, path in modules.items()
    }


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(graph.get(node, ())):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def describe(graph: dict[str, set[str]], components: Iterable[list[str]]) -> str:
    lines = []
    for component in components:
        members = set(component)
        edges = [f"{a} -> {b}" for a in component for b in sorted(graph[a] & members)]
        lines.append(f"{' <-> '.join(component)}: {', '.join(edges)}")
    return "\n".join(lines)


def test_the_cycle_finder_sees_a_cycle_and_a_self_contained_chain() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_graph_reads_lazy_and_type_checking_imports() -> None:
    """The reader must see imports inside functions and under TYPE_CHECKING, or the checks see little."""
    graph = import_graph()
    assert "daemon.drill.cli" in graph["daemon.cli"]  # only inside a function there
    assert "daemon.config" in graph["daemon.store.verifier"]  # only under TYPE_CHECKING there


def test_no_import_cycles() -> None:
    graph = import_graph()
    found = cycles(graph)
    assert not found, "import cycles:\n" + describe(graph, found)


def test_replication_never_imports_daemon() -> None:
    graph = import_graph()
    wrong = {
        name: sorted(m for m in imports if m.split(".")[0] == "daemon")
        for name, imports in graph.items()
        if name.split(".")[0] == "replication"
    }
    assert not {name: imports for name, imports in wrong.items() if imports}


def test_installed_packages_never_import_the_harness_or_the_tests() -> None:
    modules = {name: path for name, path in source_modules().items() if name.split(".")[0] in INSTALLED}
    wrong = {
        name: sorted(
            m for m in imported_names(name, path) if m.split(".")[0] in ("harness", "tests", "bench")
        )
        for name, path in modules.items()
    }
    assert not {name: imports for name, imports in wrong.items() if imports}


def test_the_role_state_machine_imports_neither_io_nor_the_engine() -> None:
    imports = import_graph()[STATE_MACHINE]
    assert imports <= STATE_MACHINE_MAY_IMPORT, sorted(imports - STATE_MACHINE_MAY_IMPORT)


def private_uses(path: Path) -> list[str]:
    """`from x import _name` and `module._name` on an imported module of ours: another module's internals."""
    tree = ast.parse(path.read_text(), str(path))
    modules: set[str] = set()
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            ours = (node.module or "").split(".")[0] in PACKAGES or node.level > 0
            for alias in node.names:
                if ours and alias.name.startswith("_") and not alias.name.startswith("__"):
                    found.append(f"from {node.module} import {alias.name}")
                elif ours:
                    modules.add(alias.asname or alias.name)
        elif isinstance(node, ast.Import):
            modules.update(
                a.asname or a.name.split(".")[0] for a in node.names if a.name.split(".")[0] in PACKAGES
            )
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in modules
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
        ):
            found.append(f"{node.value.id}.{node.attr}")
    return found


def test_no_module_reaches_into_another_modules_private_names() -> None:
    wrong = {name: uses for name, path in source_modules().items() if (uses := private_uses(path))}
    assert not wrong, wrong
