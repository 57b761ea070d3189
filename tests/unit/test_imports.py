"""zsvc's import graph: no cycle anywhere, and the layers import only downwards.

The graph is read from the source with :mod:`ast`, nothing is imported. Every
import statement counts, wherever it stands: at module level, inside a
function (a lazy import is still a dependency, it only comes later), and under
``if TYPE_CHECKING:`` (a dependency of the design even if not of the run).
``from x import y`` is an import of ``x.y`` when ``y`` is a submodule, else of
``x``. Importing ``x.y`` also runs ``x/__init__``, as Python does for every
submodule; that implicit edge to a parent package is not counted, or every
package whose ``__init__`` imports one of its children would be a cycle.

Why it matters: a cycle means two modules that cannot be understood (or
loaded) one without the other, and a lazy import that hides one is the
first thing to break when someone moves an import to the top. The layers:
the task side runs in every task process (cheap, and never the daemon's
code); the daemon talks to task hosts only through :mod:`zsvc.hostwire`.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "zsvc"

Graph = dict[str, set[str]]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _imported(
    node: ast.Import | ast.ImportFrom, here: str, is_package: bool, modules: set[str]
) -> set[str]:
    """The modules one import statement imports: ``from x import y`` is of ``x.y`` when that
    is a module, else (``y`` is a name defined in ``x``) of ``x``. Relative ones resolved."""
    if isinstance(node, ast.Import):
        return {alias.name for alias in node.names}
    base = node.module or ""
    if node.level:
        package = here.split(".") if is_package else here.split(".")[:-1]
        anchor = package[: len(package) - (node.level - 1)]
        base = ".".join([*anchor, *([base] if base else [])])
    found = set()
    for alias in node.names:
        submodule = f"{base}.{alias.name}"
        found.add(submodule if submodule in modules else base)
    return found


def _import_nodes(tree: ast.AST, *, at_import: bool) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement; with *at_import*, only those that run when the module is
    imported: not inside a function (a lazy import runs when, and in the process where, the
    function is called) nor under ``if TYPE_CHECKING:``."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif not (at_import and (_is_function(node) or _is_type_checking(node))):
            yield from _import_nodes(node, at_import=at_import)


def _is_function(node: ast.AST) -> bool:
    return isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)


def _is_type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and ast.unparse(node.test) in (
        "TYPE_CHECKING",
        "typing.TYPE_CHECKING",
    )


def import_graph(*, at_import: bool = False) -> Graph:
    """Module -> the zsvc modules it imports, by every import statement in its source
    (with *at_import*, only by those that run when it is imported)."""
    modules = _modules()
    graph: Graph = {name: set() for name in modules}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in _import_nodes(tree, at_import=at_import):
            imported = _imported(node, name, path.name == "__init__.py", set(modules))
            graph[name].update(n for n in imported if n in modules and n != name)
    return graph


def cycles(graph: Graph) -> list[list[str]]:
    """One concrete cycle per strongly connected component with more than one module."""
    found: list[list[str]] = []
    for component in _components(graph):
        if len(component) > 1:
            found.append(_cycle_in(graph, component))
    return found


def _components(graph: Graph) -> list[set[str]]:
    """Tarjan's strongly connected components, iteratively (no recursion limit)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    result: list[set[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = set()
                    while (member := stack.pop()) != node:
                        component.add(member)
                        on_stack.discard(member)
                    component.add(node)
                    on_stack.discard(node)
                    result.append(component)
            elif child not in index:
                index[child] = low[child] = len(index)
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(graph[child]))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return result


def _cycle_in(graph: Graph, component: set[str]) -> list[str]:
    """A shortest cycle through the component's first module (breadth-first), start repeated."""
    start = min(component)
    parents: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following: list[str] = []
        for node in frontier:
            for child in sorted(graph[node] & component):
                if child == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(parents[path[-1]])
                    return [start, *reversed(path[:-1]), start]
                if child not in parents:
                    parents[child] = node
                    following.append(child)
        frontier = following
    raise AssertionError(f"no cycle in the component {sorted(component)}")


def reachable(graph: Graph, start: str) -> dict[str, list[str]]:
    """Every module *start* loads, directly or not, with one import chain that leads to it."""
    chains = {start: [start]}
    pending = [start]
    while pending:
        node = pending.pop()
        for child in sorted(graph[node]):
            if child not in chains:
                chains[child] = [*chains[node], child]
                pending.append(child)
    return chains


def _within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def _violations(graph: Graph, importers: str, forbidden: tuple[str, ...]) -> list[str]:
    """Import chains from a module of *importers* to one of *forbidden*, direct or not."""
    found = []
    for module in sorted(m for m in graph if _within(m, importers)):
        for target, chain in reachable(graph, module).items():
            if any(_within(target, package) for package in forbidden):
                found.append(" -> ".join(chain))
    return found


@pytest.fixture(scope="module")
def graph() -> Graph:
    return import_graph()


def test_the_scan_sees_the_imports_it_must(graph: Graph) -> None:
    """The scanner itself: a lazy import, a relative one and ``from pkg import module``."""
    assert "zsvc.task.api" in graph["zsvc"], "the lazy import in zsvc.__getattr__"
    assert "zsvc.task.host" in graph["zsvc.task.__main__"]
    assert "zsvc.hostwire" in graph["zsvc.procs"]
    assert "zsvc.protocol" in graph["zsvc.client"], "from zsvc import protocol"
    assert "zsvc" not in graph["zsvc.client"], "a submodule import is not one of its package"
    assert "zsvc.task.api" not in import_graph(at_import=True)["zsvc"], "only when called"


def test_no_import_cycle(graph: Graph) -> None:
    found = cycles(graph)
    assert not found, "import cycles in zsvc/:\n" + "\n".join(" -> ".join(c) for c in found)


def test_the_cycle_finder_names_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set()}
    assert cycles(graph) == [["a", "b", "c", "a"]]


def test_the_task_side_never_loads_the_daemon_or_the_runners(graph: Graph) -> None:
    """A task process loads none of the daemon's or the runners' code, not even indirectly."""
    found = _violations(graph, "zsvc.task", ("zsvc.daemon", "zsvc.runners"))
    assert not found, "\n".join(found)


def test_the_daemon_never_imports_the_task_host(graph: Graph) -> None:
    """The daemon talks to task hosts through zsvc.hostwire, never their implementation."""
    found = [
        f"{module} -> {target}"
        for module in sorted(m for m in graph if _within(m, "zsvc.daemon"))
        for target in sorted(graph[module])
        if _within(target, "zsvc.task")
    ]
    assert not found, "\n".join(found)


def test_the_zygote_loads_the_task_host_only_in_its_own_process() -> None:
    """The zygote imports the task host inside the functions its own process runs (see its
    docstring): importing the module, as a daemon-side process may, never loads the task side."""
    at_import = import_graph(at_import=True)
    loaded = reachable(at_import, "zsvc.runners.zygote")
    assert not [" -> ".join(c) for t, c in loaded.items() if _within(t, "zsvc.task")]
    assert "zsvc.task.host" in import_graph()["zsvc.runners.zygote"], "it does, lazily"


def test_the_wire_format_is_a_leaf(graph: Graph) -> None:
    """zsvc.hostwire: standard library only (and zsvc.states, itself standard library only)."""
    assert graph["zsvc.hostwire"] <= {"zsvc.states"}
    tree = ast.parse((PACKAGE / "hostwire.py").read_text())
    outside = {
        alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    } | {
        node.module.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module and not node.level
    }
    assert outside - {"zsvc"} <= set(sys.stdlib_module_names) | {"__future__"}
