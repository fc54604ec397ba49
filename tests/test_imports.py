"""The package's import graph: dependencies point one way, and package modules are imported at the top.

The graph is read from the source with `ast` (nothing is imported): every `import segdiff...`,
`from segdiff... import` and relative import in every module under src/segdiff, at module level
or inside a function. An edge A -> B means A imports B; `from .data import x` is an edge to
`segdiff.data`, and `from . import plots` to `segdiff.plots`. Importing a submodule is not counted
as importing its parent packages (every module would otherwise import `segdiff`).

Rules (README, "Layout"): no import cycles, counting imports inside functions too
(a function-local import that closes a cycle is a cycle deferred, not removed); no function-local
import of a segdiff module; no PEP 562 module `__getattr__` re-exporting names.
"""

from __future__ import annotations

import ast
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "segdiff"

# Imports that break the rules on purpose, each with its reason. None today: keep it that way.
KNOWN_EXCEPTIONS: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Edge:
    importer: str
    imported: str
    line: int
    local: bool  # inside a function


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES: dict[str, Path] = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _resolve(name: str) -> str | None:
    """The segdiff module `name` refers to (a name imported from a module is that module)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


class _Imports(ast.NodeVisitor):
    def __init__(self, module: str, is_package: bool) -> None:
        self.module, self.edges, self.depth = module, [], 0
        self.package = module if is_package else module.rpartition(".")[0]

    def _function(self, node: ast.AST) -> None:
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _function

    def _add(self, name: str, line: int) -> None:
        target = _resolve(name)
        if target is not None and target != self.module:
            self.edges.append(Edge(self.module, target, line, self.depth > 0))

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(alias.name, node.lineno)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            base = self.package.split(".")
            base = base[:len(base) - (node.level - 1)]
            origin = ".".join(base + ([node.module] if node.module else []))
        else:
            origin = node.module or ""
        for alias in node.names:  # `from . import plots` imports the submodule segdiff.plots
            full = f"{origin}.{alias.name}"
            self._add(full if full in MODULES else origin, node.lineno)


def _edges() -> list[Edge]:
    edges = []
    for module, path in MODULES.items():
        visitor = _Imports(module, path.name == "__init__.py")
        visitor.visit(ast.parse(path.read_text(), str(path)))
        edges += visitor.edges
    return edges


EDGES = _edges()


def _strongly_connected(edges: list[Edge]) -> list[list[str]]:
    """Tarjan's algorithm: the strongly connected components with more than one module."""
    graph: dict[str, list[str]] = {m: [] for m in MODULES}
    for e in edges:
        graph[e.importer].append(e.imported)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return components


def _a_cycle(component: list[str], edges: list[Edge]) -> str:
    """One cycle through the component's first module, with the line of each import."""
    inside = set(component)
    out: dict[str, list[Edge]] = {}
    for e in edges:
        if e.importer in inside and e.imported in inside:
            out.setdefault(e.importer, []).append(e)
    start = component[0]
    path: list[Edge] = []
    seen: set[str] = set()

    def search(v: str) -> bool:
        for e in out.get(v, []):
            path.append(e)
            if e.imported == start or (e.imported not in seen and (seen.add(e.imported) or search(e.imported))):
                return True
            path.pop()
        return False

    search(start)
    steps = [f"{e.importer} (line {e.line}{', in a function' if e.local else ''})" for e in path]
    return " -> ".join([*steps, start])


def _cycle_key(component: list[str]) -> str:
    return "cycle: " + ", ".join(component)


def _local_key(edge: Edge) -> str:
    return f"local import: {edge.importer} -> {edge.imported}"


def test_the_graph_sees_the_package():
    assert {"segdiff", "segdiff.data", "segdiff.data.reading", "segdiff.device", "segdiff.cli"} <= set(MODULES)
    top = {(e.importer, e.imported) for e in EDGES if not e.local}
    assert ("segdiff.data.vaihingen", "segdiff.data.reading") in top  # relative, sibling
    assert ("segdiff.data", "segdiff.config") in top  # `from ..config import`
    assert ("segdiff.metrics", "segdiff.metrics_boundary") in top  # absolute


def test_no_import_cycles_beyond_the_known_ones():
    components = _strongly_connected(EDGES)
    new = [c for c in components if _cycle_key(c) not in KNOWN_EXCEPTIONS]
    assert not new, "import cycles:\n" + "\n".join(_a_cycle(c, EDGES) for c in new)
    found = {_cycle_key(c) for c in components}
    fixed = sorted(k for k in KNOWN_EXCEPTIONS if k.startswith("cycle: ") and k not in found)
    assert not fixed, f"no longer cycles; delete them from KNOWN_EXCEPTIONS: {fixed}"


def test_segdiff_modules_are_imported_at_module_top():
    local = sorted({_local_key(e): e for e in EDGES if e.local}.items())
    new = [f"{MODULES[e.importer].relative_to(SRC)}:{e.line}: {key}" for key, e in local
           if key not in KNOWN_EXCEPTIONS]
    assert not new, "function-local imports of segdiff modules (import them at the top):\n" + "\n".join(new)
    found = {key for key, _ in local}
    fixed = sorted(k for k in KNOWN_EXCEPTIONS if k.startswith("local import: ") and k not in found)
    assert not fixed, f"no longer imported inside a function; delete them from KNOWN_EXCEPTIONS: {fixed}"


def test_no_module_re_exports_names_through_a_module_getattr():
    shims = [str(path.relative_to(SRC)) for path in MODULES.values()
             if any(isinstance(node, ast.FunctionDef) and node.name == "__getattr__"
                    for node in ast.parse(path.read_text()).body)]
    assert not shims, f"PEP 562 module __getattr__ in {shims}"


def test_dataset_modules_never_import_the_data_package():
    """data/__init__ imports the dataset modules; they import reading/base/augment, not it."""
    back = [f"{e.importer} (line {e.line})" for e in EDGES
            if e.importer.startswith("segdiff.data.") and e.imported == "segdiff.data"]
    assert not back, f"import segdiff.data (the package) from inside it: {back}"


@pytest.mark.parametrize("old", ["data.py", "monuseg.py", "cityscapes.py", "augment.py", "synthetic.py"])
def test_old_top_level_dataset_modules_are_gone(old):
    assert not (PACKAGE / old).exists()
    if old != "data.py":  # segdiff.data is now the package
        assert importlib.util.find_spec(f"segdiff.{old.removesuffix('.py')}") is None
