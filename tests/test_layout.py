"""The package's import graph, read from the source with `ast` (nothing is imported): no cycle between modules, no
cycle between the sub-packages and modules that share a parent package, and the emulator never reaches into the
generator (the generator drives the emulator, never the reverse). Imports inside functions and under
`if TYPE_CHECKING:` count as much as module-level ones: a type named from another module is a dependency on it.

The tree is mapped to `medport.*` names through pyproject's `[tool.setuptools.package-dir]`, as the wheel is."""

from __future__ import annotations

import ast
import tomllib
from collections import defaultdict
from pathlib import Path

from tests.paths import ROOT


def module_files() -> dict[str, Path]:
    """Every module of the package: dotted name -> file."""
    with open(ROOT / "pyproject.toml", "rb") as f:
        mapping = tomllib.load(f)["tool"]["setuptools"]["package-dir"]
    modules: dict[str, Path] = {}
    for package, folder in mapping.items():
        base = ROOT / folder
        for path in base.rglob("*.py"):
            rel = path.relative_to(base).with_suffix("")
            if "__pycache__" in rel.parts or not all(
                (base / Path(*rel.parts[:i]) / "__init__.py").is_file() for i in range(len(rel.parts))
            ):
                continue  # not inside a package of the tree (a script folder, a cache)
            parts = [p for p in rel.parts if p != "__init__"]
            modules[".".join([package, *parts])] = path
    return modules


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules `name` imports, at module level or inside functions."""
    tree = ast.parse(path.read_text("utf-8"), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            # `from pkg import mod` imports the module pkg.mod; `from mod import name` imports mod
            targets = [f"{source}.{a.name}" if f"{source}.{a.name}" in known else source for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:  # `import a.b.c` of a name inside a module -> that module
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    files = module_files()
    known = set(files)
    return {name: imports_of(name, path, known) for name, path in files.items()}


def cycles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """The strongly connected components with more than one node (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[frozenset[str]] = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(frozenset(component))
    return found


def sibling_graphs(graph: dict[str, set[str]]) -> dict[str, dict[str, set[str]]]:
    """For each package, the graph between its children (sub-packages and modules): an import from anywhere under
    child A of anything under child B is an edge A -> B. Imports of the package itself (its `__init__`) are not
    edges between siblings."""
    packages = {name for name in graph if any(other.startswith(name + ".") for other in graph)}
    result: dict[str, dict[str, set[str]]] = {p: defaultdict(set) for p in packages}

    def child_of(package: str, name: str) -> str | None:
        if not name.startswith(package + "."):
            return None
        return package + "." + name[len(package) + 1 :].split(".")[0]

    for source, targets in graph.items():
        for target in targets:
            for package in packages:
                a, b = child_of(package, source), child_of(package, target)
                if a and b and a != b:
                    result[package][a].add(b)
    return result


def describe(component: frozenset[str], graph: dict[str, set[str]]) -> str:
    return "; ".join(f"{m} -> {', '.join(sorted(graph[m] & component))}" for m in sorted(component))


GRAPH = import_graph()


def test_the_scan_sees_the_package():
    """The graph is the real one: every sub-package is read and known edges are in it."""
    assert {
        "medport.testing",
        "medport.generator.cli.main",
        "medport.emulator.medplum.backend",
        "medport.emulator.metriport.backend",
    } <= set(GRAPH)
    assert "medport.generator.generation.config" in GRAPH["medport.generator.generation.render"]
    # a function-level import counts: `medport.testing` imports the stack inside its functions only
    assert "medport.generator.local.stack" in GRAPH["medport.testing"]
    # the Medplum backend's parts take the lower-level parts, not the backend
    assert "medport.emulator.medplum.fhir.system" in GRAPH["medport.emulator.medplum.bots"]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [frozenset("abc")]


def test_no_import_cycle_between_modules():
    found = cycles(GRAPH)
    assert not found, "import cycles: " + " | ".join(describe(c, GRAPH) for c in found)


def test_no_cycle_between_siblings_of_a_package():
    """No two sub-packages (or modules) of one package import each other, directly or around a loop: the layers
    inside generator/ (generation < options, progress, statefile < remote < console < local < cli), emulator/ and
    each service stay ordered."""
    problems = []
    for package, graph in sorted(sibling_graphs(GRAPH).items()):
        for component in cycles(dict(graph)):
            problems.append(f"in {package}: {describe(component, graph)}")
    assert not problems, "\n".join(problems)


def test_the_emulator_never_imports_the_generator():
    wrong = sorted(
        f"{m} -> {t}"
        for m, targets in GRAPH.items()
        if m.startswith("medport.emulator")
        for t in targets
        if t.startswith("medport.generator")
    )
    assert not wrong, wrong
