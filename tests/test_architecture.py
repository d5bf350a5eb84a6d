"""The map and the code agree (docs/ARCHITECTURE.md, issue 11).

* The layer table is read from docs/ARCHITECTURE.md §2 — one table, the
  document's: every package under mta/ has a row, and every import between
  packages is one the row allows. Relative imports are followed. Imports
  under `if TYPE_CHECKING:` are type-only edges: they must respect the table
  too, but they are reported apart and do not count for cycles (they never
  run).
* No import cycle between modules, inside a package or across packages,
  function-level imports included (hiding a cycle in a function is still a
  cycle: it only moves the failure to run time).
* Size: no module over 450 lines, no function over 80 lines in mta/.
"""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "mta"
MAP = ROOT / "docs" / "ARCHITECTURE.md"
MAX_MODULE_LINES = 450
MAX_FUNCTION_LINES = 80

_ROW = re.compile(r"^\|\s*`mta/(\w+)/`\s*\|[^|]*\|\s*([^|]*)\|\s*$")


def layer_table() -> dict[str, set[str]]:
    """{package: packages it may import} from the map's layer table."""
    table: dict[str, set[str]] = {}
    for line in MAP.read_text().splitlines():
        m = _ROW.match(line.strip())
        if m:
            allowed = {a.strip(" `/").removeprefix("mta/") for a in m.group(2).split(",")}
            table[m.group(1)] = {a for a in allowed if a and a not in ("stdlib only", "—", "-")}
    return table


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports(name: str, path: Path, known: set[str]) -> list[tuple[str, bool]]:
    """(imported mta module, type_only) for every import in the module,
    relative ones resolved; `from pkg import mod` counts as pkg.mod when that
    is a module."""
    tree = ast.parse(path.read_text())
    is_pkg = path.name == "__init__.py"
    out: list[tuple[str, bool]] = []
    type_only_nodes: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for sub in node.body:
                for inner in ast.walk(sub):
                    type_only_nodes.add(id(inner))
    for node in ast.walk(tree):
        type_only = id(node) in type_only_nodes
        if isinstance(node, ast.Import):
            for a in node.names:
                out.append((a.name, type_only))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_pkg else name.split(".")[:-1]
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for a in node.names:
                sub = f"{target}.{a.name}"
                out.append((sub if sub in known else target, type_only))
    return [(t, type_only) for t, type_only in out if t == "mta" or t.startswith("mta.")]


def graph() -> tuple[dict[str, set[str]], list[tuple[str, str]]]:
    mods = modules()
    known = set(mods)
    runtime: dict[str, set[str]] = defaultdict(set)
    type_only: list[tuple[str, str]] = []
    for name, path in mods.items():
        for target, is_type in imports(name, path, known):
            # the nearest module that exists (mta.x.y.Name -> mta.x.y)
            while target not in known and "." in target:
                target = target.rsplit(".", 1)[0]
            if target == name or target not in known:
                continue
            if is_type:
                type_only.append((name, target))
            else:
                runtime[name].add(target)
    return runtime, type_only


def package(module: str) -> str:
    """The layer a module belongs to; "" for mta/__init__ and mta/__main__
    (the entry points above every layer)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and (PKG / parts[1]).is_dir()) \
        else ""


def test_every_package_has_a_row_in_the_map():
    table = layer_table()
    assert table, f"no layer table found in {MAP}"
    pkgs = {p.name for p in PKG.iterdir() if (p / "__init__.py").exists()}
    assert pkgs == set(table), (f"packages without a row: {sorted(pkgs - set(table))}; "
                                f"rows without a package: {sorted(set(table) - pkgs)}")


def test_imports_follow_the_layer_table(report):
    table = layer_table()
    runtime, type_only = graph()
    bad = [f"{a} imports {b}" for a, targets in runtime.items() for b in sorted(targets)
           if package(b) and package(b) != package(a) and package(a)
           and package(b) not in table.get(package(a), set())]
    bad_types = [f"{a} imports {b} (type-only)" for a, b in type_only
                 if package(b) != package(a) and package(b) not in table.get(package(a), set())]
    crossing = sorted({f"{package(a)} -> {package(b)}" for a, b in type_only
                       if package(a) != package(b)})
    report(f"layers: {sum(len(t) for t in runtime.values())} import edges between modules, "
           f"{len(type_only)} type-only ({', '.join(crossing) or 'none across packages'})")
    assert not bad + bad_types, "\n".join(bad + bad_types)


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in list(edges):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle_between_modules():
    runtime, _ = graph()
    # A package's __init__ re-exporting its modules is not a cycle with them:
    # the modules must not import their own package's __init__, checked here.
    edges = {a: {b for b in targets} for a, targets in runtime.items()}
    cycles = _cycles(edges)
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_the_cycle_finder_finds_cycles():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


@pytest.mark.parametrize("path", sorted(PKG.rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT)))
def test_module_and_function_sizes(path):
    text = path.read_text()
    lines = text.count("\n")
    assert lines <= MAX_MODULE_LINES, f"{path.name}: {lines} lines (at most {MAX_MODULE_LINES})"
    long = [f"{node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for node in ast.walk(ast.parse(text))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long, f"{path.name}: functions over {MAX_FUNCTION_LINES} lines: {long}"
