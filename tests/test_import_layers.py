"""The ds2d2 package imports one way (issue 22): no module imports, at module level or inside a function, a
module that imports it back, directly or through others. A function-level import cannot hide a circle
here: the graph below holds every import of a ds2d2 module wherever it is written, and the subpackage
__init__ files each import runs first (importing ds2d2.data.own runs ds2d2/data/__init__.py)."""
import ast
import os
from typing import Dict, List, Optional, Set

PACKAGE_DIR = os.path.join(os.path.dirname(__file__), "..", "projects", "DS2D2", "ds2d2")
PACKAGE = "ds2d2"


def _modules(package_dir: str) -> Dict[str, str]:
    """Dotted module name -> file, for every .py under ``package_dir`` (a package is its __init__.py)."""
    found = {}
    for folder, _, files in os.walk(package_dir):
        rel = os.path.relpath(folder, package_dir)
        parts = [PACKAGE] + ([] if rel == "." else rel.split(os.sep))
        for name in files:
            if name.endswith(".py"):
                dotted = parts if name == "__init__.py" else parts + [name[:-3]]
                found[".".join(dotted)] = os.path.join(folder, name)
    return found


def _imports(module: str, path: str, modules: Dict[str, str]) -> Set[str]:
    """The ds2d2 modules ``module`` (file ``path``) imports anywhere in its body: the target of each
    ``import ds2d2.x``, and of each ``from [.|..|ds2d2.]x import y``: ``x.y`` when y is a module, else x."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    targets: Set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                targets.add(submodule if submodule in modules else source)
    return {t for t in targets if t in modules and t != module}


def _enclosing_packages(module: str) -> Set[str]:
    """The subpackages holding ``module`` (the root package left out): ds2d2.a.b.c -> {ds2d2.a, ds2d2.a.b}."""
    parts = module.split(".")
    return {".".join(parts[:i]) for i in range(2, len(parts))}


def import_graph(package_dir: str = PACKAGE_DIR) -> Dict[str, Set[str]]:
    """module -> the ds2d2 modules it imports (see ``_imports``), and the subpackages (their __init__) each
    import runs first: those holding the target but not the importer, whose own package has started
    already. The root package, which imports its subpackages and holds every module, is left out."""
    modules = _modules(package_dir)
    graph = {}
    for module, path in modules.items():
        targets = _imports(module, path, modules)
        runs = {p for t in targets for p in _enclosing_packages(t)} - _enclosing_packages(module) - {module}
        graph[module] = targets | runs
    return graph


def find_cycle(graph: Dict[str, Set[str]]) -> Optional[List[str]]:
    """One cycle of ``graph`` as [a, b, ..., a], or None when it is acyclic (depth-first search)."""
    state: Dict[str, int] = {}  # 1: on the current path, 2: done
    path: List[str] = []

    def visit(node: str) -> Optional[List[str]]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            cycle = visit(start)
            if cycle:
                return cycle
    return None


def test_find_cycle_reports_a_cycle_and_accepts_a_dag():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_import_graph_sees_relative_absolute_and_function_level_imports(tmp_path):
    pkg = tmp_path / PACKAGE
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from . import sub\n")
    (pkg / "sub" / "__init__.py").write_text("from .leaf import x\n")
    (pkg / "sub" / "leaf.py").write_text("def f():\n    from ..top import y\n")
    (pkg / "top.py").write_text("import ds2d2.sub.leaf\nfrom ds2d2 import sub\n")
    graph = import_graph(str(pkg))
    assert graph == {
        "ds2d2": {"ds2d2.sub"},
        "ds2d2.sub": {"ds2d2.sub.leaf"},
        "ds2d2.sub.leaf": {"ds2d2.top"},
        "ds2d2.top": {"ds2d2.sub.leaf", "ds2d2.sub"},
    }
    assert find_cycle(graph) == ["ds2d2.sub", "ds2d2.sub.leaf", "ds2d2.top", "ds2d2.sub"]


def test_import_graph_runs_the_subpackage_init_of_each_import(tmp_path):
    """b imports a.m, which runs a/__init__, which imports b back: a circle no import statement spells."""
    pkg = tmp_path / PACKAGE
    (pkg / "a" / "deep").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from . import a, b\n")
    (pkg / "a" / "__init__.py").write_text("from .. import b\nfrom . import m\n")
    (pkg / "a" / "m.py").write_text("from .deep import leaf\n")  # inside a: a has started already
    (pkg / "a" / "deep" / "__init__.py").write_text("")
    (pkg / "a" / "deep" / "leaf.py").write_text("")
    (pkg / "b.py").write_text("from ds2d2.a.m import x\n")
    graph = import_graph(str(pkg))
    assert graph["ds2d2.b"] == {"ds2d2.a.m", "ds2d2.a"}
    assert graph["ds2d2.a.m"] == {"ds2d2.a.deep.leaf", "ds2d2.a.deep"}
    assert graph["ds2d2.a"] == {"ds2d2.b", "ds2d2.a.m"}
    assert find_cycle(graph) == ["ds2d2.a", "ds2d2.b", "ds2d2.a"]


def test_ds2d2_modules_import_one_way():
    graph = import_graph()
    assert "ds2d2.config" in graph and "ds2d2.distill.fitnet" in graph  # the package was found
    cycle = find_cycle(graph)
    assert cycle is None, "import circle: " + " -> ".join(cycle)
