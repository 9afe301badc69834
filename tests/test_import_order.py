"""Imports go one way: the stages of the data flow, declared once here (``STAGES``), and a
walk of every ``autoprune`` import with ``ast`` that fails on any edge against that order.

Every module of the package is read; every ``import autoprune...`` and ``from autoprune...
import`` counts, at the top of a module, inside a function and under ``TYPE_CHECKING``.
Importing ``autoprune.a.b`` also runs the package ``autoprune.a``, so that edge counts too
(unless the importer is inside ``autoprune.a`` itself).

- A module imports only its own stage or earlier ones.
- Within a stage, modules import each other without a circle (runtime imports: at the top or
  inside functions). Imports under ``TYPE_CHECKING`` never run: they may close a circle within
  a stage (a backend's ``prepare`` is annotated with the ``Target`` that checks backend names)
  and may point backwards only where ``TYPE_ONLY_BACKWARD`` says so.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

import autoprune

PACKAGE = Path(autoprune.__file__).parent

# The data flow, first stage first (README "Architecture"). An entry names a module or a
# package (all its modules); ``autoprune`` names the package's own ``__init__`` only.
STAGES: list[tuple[str, tuple[str, ...]]] = [
    # plain data and helpers that import nothing of autoprune's but each other
    ("neutral", ("autoprune._errors", "autoprune._paths", "autoprune._inputs", "autoprune._lock",
                 "autoprune._attention", "autoprune._stored", "autoprune._cpus", "autoprune._tp", "autoprune.schedule")),  # fmt: skip
    ("tasks", ("autoprune.tasks",)),  # the model, its data and how it is judged (perplexity tasks too)
    ("preflight", ("autoprune.preflight",)),  # the dependency graph: prunable groups, read only
    ("executor", ("autoprune.oneshot", "autoprune.decoder", "autoprune.untraced", "autoprune.executor", "autoprune.prunable")),  # surgery; its check
    ("evaluation", ("autoprune.evaluation",)),  # metrics, size, MACs, latency and speedup
    ("config", ("autoprune.config",)),  # the search's settings (checks a target by parsing it)
    ("space", ("autoprune.space",)),  # units -> trial parameters -> Schedule
    ("sensitivity", ("autoprune.sensitivity",)),  # each unit of a space pruned alone; allocation
    ("lm", ("autoprune.lm",)),  # the language-model allocation search and its summary
    ("study", ("autoprune.study",)),  # the Optuna study: references, trials, results
    ("output", ("autoprune.report", "autoprune.export")),  # the report; saving a pruned model
    ("cli", ("autoprune.commands", "autoprune.cli", "autoprune")),  # the commands; the public names
    ("testing", ("autoprune.testing",)),  # fixtures for tests and docs, above everything
]

# A type-only import that points backwards: the space is annotated with the Sensitivity it
# reads (its greedy path) while the scan builds on the space's units.
TYPE_ONLY_BACKWARD = {("autoprune.space", "autoprune.sensitivity")}

# ``__version__`` is set in ``autoprune/__init__.py`` before that module imports anything, so
# ``from autoprune import __version__`` runs nothing (it is the one place the version is written).
ROOT_NAMES_THAT_RUN_NOTHING = {"__version__"}


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    line: int
    kind: str  # "top", "function" or "type" (under TYPE_CHECKING)

    def __str__(self) -> str:
        return f"{self.source} -> {self.target} ({self.kind}, {_path(self.source)}:{self.line})"


def _modules(package: Path = PACKAGE) -> dict[str, Path]:
    out = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _path(module: str) -> str:
    return str(MODULES[module].relative_to(PACKAGE.parent))


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _targets(module: str, node: ast.Import | ast.ImportFrom) -> list[str]:
    """The autoprune modules an import statement runs (not their parent packages)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name == "autoprune" or a.name.startswith("autoprune.")]
    if node.level:  # relative: from the importer's package
        base = module.split(".") if MODULES[module].name == "__init__.py" else module.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        name = ".".join(base + ([node.module] if node.module else []))
    else:
        name = node.module or ""
    if name != "autoprune" and not name.startswith("autoprune."):
        return []
    out = []
    for alias in node.names:
        if f"{name}.{alias.name}" in MODULES:  # from package import submodule
            out.append(f"{name}.{alias.name}")
        elif not (name == "autoprune" and alias.name in ROOT_NAMES_THAT_RUN_NOTHING):
            out.append(name)
    return out


def imports_of(module: str, source: str | None = None) -> list[Edge]:
    """Every autoprune import of ``module``: top level, in functions, under TYPE_CHECKING;
    with the packages that importing a submodule runs."""
    tree = ast.parse(MODULES[module].read_text() if source is None else source)
    edges: list[Edge] = []

    def visit(node: ast.AST, kind: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                for target in _targets(module, child):
                    parts = target.split(".")
                    for k in range(1, len(parts) + 1):  # autoprune, autoprune.a, autoprune.a.b, ...
                        ran = ".".join(parts[:k])
                        own_package = module == ran or module.startswith(ran + ".")
                        if ran in MODULES and ran != module and (k == len(parts) or not own_package):
                            edges.append(Edge(module, ran, child.lineno, kind))
            elif isinstance(child, ast.If) and _is_type_checking(child.test):
                for stmt in child.body:
                    visit(ast.Module(body=[stmt], type_ignores=[]), "type")
                for stmt in child.orelse:
                    visit(ast.Module(body=[stmt], type_ignores=[]), kind)
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                visit(child, "type" if kind == "type" else "function")
            else:
                visit(child, kind)

    visit(tree, "top")
    return edges


def stage_of(module: str) -> int:
    """The index in STAGES of the most specific entry that names ``module``."""
    best, best_len = None, -1
    for index, (_, entries) in enumerate(STAGES):
        for entry in entries:
            matches = module == entry or (entry != "autoprune" and module.startswith(entry + "."))
            if matches and len(entry) > best_len:
                best, best_len = index, len(entry)
    if best is None:
        raise LookupError(f"{module} ({_path(module)}) is in no stage; add it to STAGES in {__file__}")
    return best


def backward_edges(edges: list[Edge]) -> list[Edge]:
    bad = []
    for e in edges:
        if stage_of(e.target) <= stage_of(e.source):
            continue
        if e.kind == "type" and any(
            (e.source == s or e.source.startswith(s + ".")) and (e.target == t or e.target.startswith(t + "."))
            for s, t in TYPE_ONLY_BACKWARD
        ):
            continue
        bad.append(e)
    return bad


def circles(edges: list[Edge]) -> list[list[str]]:
    """The import circles among runtime edges (one per strongly connected component)."""
    graph: dict[str, set[str]] = {}
    for e in edges:
        if e.kind != "type":
            graph.setdefault(e.source, set()).add(e.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(v: str) -> None:  # Tarjan's algorithm
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                connect(w)
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
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return found


def all_edges() -> list[Edge]:
    return [e for module in MODULES for e in imports_of(module)]


# ---------------------------------------------------------------------------- the package


def test_every_module_has_a_stage() -> None:
    missing = []
    for module in MODULES:
        try:
            stage_of(module)
        except LookupError as exc:
            missing.append(str(exc))
    assert not missing, "\n".join(missing)


def test_imports_follow_the_stages() -> None:
    bad = backward_edges(all_edges())
    names = [name for name, _ in STAGES]
    lines = [f"{e}: stage {names[stage_of(e.source)]!r} imports the later stage {names[stage_of(e.target)]!r}"
             for e in bad]  # fmt: skip
    assert not bad, "imports against the order of STAGES:\n" + "\n".join(lines)


def test_no_import_circles() -> None:
    found = circles(all_edges())
    assert not found, "import circles (runtime imports):\n" + "\n".join(" <-> ".join(c) for c in found)


# ---------------------------------------------------------------------------- the walker itself


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("from autoprune.study import load_study\n", [("autoprune.study", "top")]),
        ("def f():\n    from autoprune.report import report\n", [("autoprune.report", "function")]),
        ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from autoprune.space import SearchSpace\n",
         [("autoprune.space", "type")]),  # fmt: skip
        ("import autoprune.study._run\n", [("autoprune.study", "top"), ("autoprune.study._run", "top")]),
        ("from autoprune import __version__\n", []),
        ("import autoprune\n", [("autoprune", "top")]),
        ("from autoprune import report\n", [("autoprune.report", "top")]),
    ],
)
def test_the_walker_sees_each_kind_of_import(source: str, expected: list[tuple[str, str]]) -> None:
    edges = imports_of("autoprune.schedule", source)
    assert [(e.target, e.kind) for e in edges] == expected


def test_a_backward_import_is_caught() -> None:
    """The schedule (neutral) importing the study, in a function, is against the order."""
    edges = imports_of("autoprune.schedule", "def f():\n    from autoprune.study import load_study\n")
    assert [str(e).split(" (")[0] for e in backward_edges(edges)] == ["autoprune.schedule -> autoprune.study"]


def test_a_circle_within_a_stage_is_caught() -> None:
    edges = [Edge("autoprune.study._run", "autoprune.study._objective", 1, "top"),
             Edge("autoprune.study._objective", "autoprune.study._run", 1, "function"),
             Edge("autoprune.evaluation._backends", "autoprune.evaluation._target", 1, "type"),
             Edge("autoprune.evaluation._target", "autoprune.evaluation._backends", 1, "top")]  # fmt: skip
    assert circles(edges) == [["autoprune.study._objective", "autoprune.study._run"]]
