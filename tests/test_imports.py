"""No import cycle among the modules of dmdl.

The import graph is read from the package's source files with ``ast`` (nothing is imported): every
``import`` / ``from ... import`` statement counts, at module level or inside a function, a class or an
``if``/``try``, relative imports resolved against the importing module. An edge goes to the module
named, not to its parent packages (Python has those in ``sys.modules`` already while a child
imports), and ``from package import name`` goes to ``package.name`` when that is a module, else to
the package's ``__init__``. The cycles are the strongly connected components (Tarjan) of more than
one module, or of one module that imports itself.
"""

from __future__ import annotations

import ast
import textwrap
from pathlib import Path

import pytest

import dmdl

#: The subpackages checked for cycles among their own modules; "dmdl" means the whole package.
PACKAGES = ["dmdl", "dmdl.models", "dmdl.losses"]
#: The modules outside dmdl.methods that may import it: the package root (it registers the methods'
#: config sections) and the command line (it picks the method class it hands to the engine).
METHOD_IMPORTERS = {"dmdl", "dmdl.cli"}

Graph = dict[str, dict[str, int]]  # module -> {imported module: line of the first such import}


def module_files(package_dir: Path, package: str) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file below ``package_dir`` (``__init__.py`` is
    the package itself)."""
    modules = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = path.relative_to(package_dir).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join((package,) + parts)] = path
    return modules


def _resolve_relative(module: str, is_package: bool, level: int, target: str | None) -> str:
    """The absolute name of ``from <level dots><target> import ...`` written in ``module``."""
    parts = module.split(".") if is_package else module.split(".")[:-1]
    if level - 1 > len(parts) - 1:
        raise ValueError(f"{module}: relative import beyond the top-level package (level {level})")
    base = parts[: len(parts) - (level - 1)]
    return ".".join(base + ([target] if target else []))


def _known(name: str, modules: dict[str, Path]) -> str | None:
    """``name`` or its longest prefix that is a module of the package (``import a.b.attr``)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def import_graph(modules: dict[str, Path]) -> Graph:
    """Edges between the given modules, from their import statements (see the module docstring)."""
    graph: Graph = {name: {} for name in modules}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [_known(alias.name, modules) for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = (_resolve_relative(name, path.name == "__init__.py", node.level, node.module)
                        if node.level else node.module)
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else _known(base, modules)
                           for alias in node.names]
            else:
                continue
            for target in targets:
                if target is not None:
                    graph[name][target] = min(node.lineno, graph[name].get(target, node.lineno))
    return graph


def find_cycles(graph: Graph) -> list[list[str]]:
    """The import cycles of ``graph``: its strongly connected components (Tarjan's algorithm) of
    two or more modules, or of one module with an edge to itself; each sorted, the list sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
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
            if len(component) > 1 or v in graph.get(v, {}):
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(cycles)


def subgraph(graph: Graph, package: str) -> Graph:
    """The modules of ``package`` (itself and below) and the edges among them."""
    def inside(name: str) -> bool:
        return name == package or name.startswith(package + ".")

    return {v: {w: line for w, line in edges.items() if inside(w)} for v, edges in graph.items() if inside(v)}


def describe(graph: Graph, cycle: list[str], modules: dict[str, Path]) -> str:
    members = set(cycle)
    lines = [f"  {v} -> {w} ({modules[v].name}:{line})"
             for v in cycle for w, line in sorted(graph[v].items()) if w in members]
    return "cycle of " + ", ".join(cycle) + ":\n" + "\n".join(lines)


# ---------------------------------------------------------------------------------- the package
@pytest.fixture(scope="module")
def dmdl_graph() -> tuple[Graph, dict[str, Path]]:
    package_dir = Path(dmdl.__file__).resolve().parent
    modules = module_files(package_dir, "dmdl")
    return import_graph(modules), modules


@pytest.mark.parametrize("package", PACKAGES)
def test_no_import_cycle(dmdl_graph, package):
    graph, modules = dmdl_graph
    sub = subgraph(graph, package)
    assert len(sub) > 1, f"{package}: no modules found below {Path(dmdl.__file__).parent}"
    cycles = find_cycles(sub)
    assert not cycles, "\n".join(describe(sub, c, modules) for c in cycles)


def test_nothing_below_the_methods_imports_them(dmdl_graph):
    # the engine, the training services and everything below get the method from their caller
    graph, modules = dmdl_graph
    wrong = [f"{v} -> {w} ({modules[v].name}:{line})" for v, edges in sorted(graph.items())
             if not v.startswith("dmdl.methods") and v not in METHOD_IMPORTERS
             for w, line in sorted(edges.items()) if w == "dmdl.methods" or w.startswith("dmdl.methods.")]
    assert not wrong, "\n".join(wrong)


def test_graph_sees_the_package_imports(dmdl_graph):
    # edges written in dmdl today, one of each kind: relative from-import of a module, relative
    # from-import of a name of a package's __init__, absolute from-import
    graph, _ = dmdl_graph
    assert "dmdl.models.weights" in graph["dmdl.models.agw"]
    assert "dmdl.losses.cai" in graph["dmdl.losses"]
    assert "dmdl.errors" in graph["dmdl.models.weights"]


# ------------------------------------------------------------------------------- the checker
@pytest.mark.parametrize("graph,want", [
    ({"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 1}, "d": {"a": 1}}, [["a", "b", "c"]]),
    ({"a": {"b": 1}, "b": {"c": 1}, "c": {}, "d": {"a": 1, "c": 1}}, []),  # a DAG with a diamond
    ({"x": {"x": 1}, "y": {}}, [["x"]]),  # a module importing itself
    ({"a": {"b": 1}, "b": {"a": 1}, "c": {"d": 1}, "d": {"e": 1}, "e": {"c": 1, "a": 1}},
     [["a", "b"], ["c", "d", "e"]]),  # two cycles, one leading into the other
    ({}, []),
])
def test_find_cycles_on_hand_written_graphs(graph, want):
    assert find_cycles(graph) == want


def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text), encoding="utf-8")


def test_import_graph_of_a_small_package(tmp_path):
    _write(tmp_path / "pkg", {
        "__init__.py": "from .a import f\nfrom . import sub\n",
        "a.py": "import os\nfrom .b import g\n",
        "b.py": "def g():\n    from pkg.sub.c import h  # inside a function\n    return h\n",
        "sub/__init__.py": "",
        "sub/c.py": "from .. import a\nfrom ..b import g\nimport pkg.sub\nfrom . import missing_name\n",
    })
    modules = module_files(tmp_path / "pkg", "pkg")
    assert sorted(modules) == ["pkg", "pkg.a", "pkg.b", "pkg.sub", "pkg.sub.c"]
    graph = import_graph(modules)
    assert {v: sorted(e) for v, e in graph.items()} == {
        "pkg": ["pkg.a", "pkg.sub"],
        "pkg.a": ["pkg.b"],  # os is not a module of the package
        "pkg.b": ["pkg.sub.c"],
        "pkg.sub": [],
        "pkg.sub.c": ["pkg.a", "pkg.b", "pkg.sub"],
    }
    assert graph["pkg.b"]["pkg.sub.c"] == 2
    # a -> b -> sub.c -> a: found in the whole package and in no subpackage alone
    assert find_cycles(graph) == [["pkg.a", "pkg.b", "pkg.sub.c"]]
    assert find_cycles(subgraph(graph, "pkg.sub")) == []
    assert "pkg.sub.c -> pkg.a (c.py:1)" in describe(graph, ["pkg.a", "pkg.b", "pkg.sub.c"], modules)


def test_relative_import_beyond_the_package_is_an_error(tmp_path):
    _write(tmp_path / "pkg", {"__init__.py": "", "a.py": "from ... import x\n"})
    with pytest.raises(ValueError, match="beyond the top-level package"):
        import_graph(module_files(tmp_path / "pkg", "pkg"))
