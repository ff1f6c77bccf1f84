"""The project's import structure, read from the source with `ast`: clients never
import the server, and no import cycle joins the project's modules.

Every import counts, at module level or inside a function (a function-level
import only fails when that code runs, so a cycle or a forbidden import
there would show late), and so does importlib.import_module / __import__
with a constant name. Cycles are looked for among the imports that run
(not those under `if TYPE_CHECKING:`); clients may not import the server
even for type checking. fastaudio's Cython source is read for its Python
`import` statements (its `cimport`s are C-level and import no project module).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Iterator, Optional

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("server", "clients", "bench", "fastaudio")
# A Python import statement in a .pyx file: `import x` or `from x import ...` (parenthesized
# names may span lines); `cimport` lines do not match.
_PYX_IMPORT = re.compile(r"^[ \t]*(import[ \t][^\n]*|from[ \t]+\S+[ \t]+import[ \t]+(?:\([^)]*\)|[^\n]*))",
                         re.MULTILINE)


def modules(root: Path, packages=PACKAGES) -> dict[str, Path]:
    """Dotted module name -> source file, for every .py and .pyx of `packages` under `root`."""
    found = {}
    for package in packages:
        for path in sorted((root / package).rglob("*")):
            if path.suffix not in (".py", ".pyx") or "node_modules" in path.parts:
                continue
            parts = path.relative_to(root).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _tree(path: Path) -> ast.AST:
    """The module's syntax tree; of a .pyx, only its Python import statements."""
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".pyx":
        text = "\n".join(m.group(1).strip() for m in _PYX_IMPORT.finditer(text) if "cimport" not in m.group(1))
    return ast.parse(text, filename=str(path))


def _constant_import(node: ast.Call) -> Optional[str]:
    """The module name of importlib.import_module("x") or __import__("x"), else None."""
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
    if name in ("import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant) \
            and isinstance(node.args[0].value, str):
        return node.args[0].value
    return None


def _is_type_checking(node: ast.AST) -> bool:
    """An `if TYPE_CHECKING:` (or `typing.TYPE_CHECKING`) block: read by type checkers, never run."""
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        isinstance(test, ast.Name) and test.id == "TYPE_CHECKING"
        or isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _nodes(tree: ast.AST, runtime_only: bool) -> Iterator[ast.AST]:
    """Every node of `tree` (ast.walk's), without `if TYPE_CHECKING:` blocks when `runtime_only`."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        todo.extend(child for child in ast.iter_child_nodes(node)
                    if not (runtime_only and _is_type_checking(child)))


def imported_names(module: str, path: Path, known, runtime_only: bool = False) -> Iterator[str]:
    """Every dotted name `module` imports, anywhere in its source (`runtime_only`: not
    under `if TYPE_CHECKING:`). `from a import b` gives a.b when that is one of the
    `known` modules, else a (b is a name defined in a)."""
    package = module if path.stem == "__init__" else module.rpartition(".")[0]
    for node in _nodes(_tree(path), runtime_only):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: up from this module's package
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            yield from (f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names)
        elif isinstance(node, ast.Call) and (name := _constant_import(node)):
            yield name


def import_graph(root: Path, packages=PACKAGES) -> dict[str, set[str]]:
    """Module -> the project modules it imports when it runs. Imports for type checkers
    only are left out (they never execute, so they cannot deadlock an import). A
    package's __init__ counts only when imported by name: Python initializes a module's
    parent packages first, and a submodule importing its siblings while its package
    initializes is no cycle."""
    known = modules(root, packages)
    return {module: {name for name in imported_names(module, path, known, runtime_only=True)
                     if name in known and name != module}
            for module, path in known.items()}


def find_cycle(graph: dict[str, set[str]]) -> Optional[list[str]]:
    """One import cycle as [a, b, ..., a], or None when the graph is acyclic."""
    state: dict[str, str] = {}  # "open" while on the current path, "done" when fully explored
    path: list[str] = []

    def visit(node: str) -> Optional[list[str]]:
        state[node] = "open"
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                return path[path.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_the_graph_holds_every_package_and_their_imports():
    graph = import_graph(REPO)
    assert {m.split(".")[0] for m in graph} == set(PACKAGES)
    # Known edges of each kind: module level, function level, `from pkg import module`, and the .pyx.
    assert "server.config" in graph["server.app"]
    assert {"bench.floor", "bench.live", "bench.fastaudio"} <= graph["bench.cli"]
    assert "fastaudio._fallback" in graph["fastaudio"] and "fastaudio._fastaudio" in graph["fastaudio"]
    assert graph["fastaudio._fastaudio"] == {"fastaudio._errors"}


def test_no_client_module_imports_the_server():
    known = modules(REPO)
    offenders = {module: sorted(n for n in imported_names(module, path, known) if n.split(".")[0] == "server")
                 for module, path in known.items() if module.split(".")[0] == "clients"}
    assert not {m: names for m, names in offenders.items() if names}, \
        "clients import the server (benchmarks and fixtures that need it belong in bench/)"


def test_the_project_has_no_import_cycle():
    cycle = find_cycle(import_graph(REPO))
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_a_cycle_through_a_function_level_import_is_found(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from typing import TYPE_CHECKING\nfrom pkg.b import thing\n"
                                  "if TYPE_CHECKING:\n    from pkg.c import unused\n")
    (package / "b.py").write_text("def thing():\n    from . import c\n")
    (package / "c.py").write_text("import importlib\nimportlib.import_module('pkg.a')\n")
    graph = import_graph(tmp_path, ("pkg",))
    assert graph == {"pkg": set(), "pkg.a": {"pkg.b"}, "pkg.b": {"pkg.c"}, "pkg.c": {"pkg.a"}}
    assert find_cycle(graph) == ["pkg.a", "pkg.b", "pkg.c", "pkg.a"]
    (package / "c.py").write_text("import pkg.b\n")  # pkg.b -> pkg.c -> pkg.b, pkg.a outside it
    assert find_cycle(import_graph(tmp_path, ("pkg",))) == ["pkg.b", "pkg.c", "pkg.b"]
