"""The package keeps its shape (docs/architecture.md): imports only go downward between the layers, no import cycles,
no module over 400 lines and no function over 80.

Every `import` statement counts, at module level or inside a function: a lazy import is still a dependency.
"""
from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "ghostnet"

#: The layers, bottom first; a module belongs to the layer of its longest matching prefix.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("ground", ("ghostnet.constants", "ghostnet.errors", "ghostnet.utils", "ghostnet._version", "ghostnet.hardware",
                "ghostnet.tuning", "ghostnet.allocator")),
    ("layers", ("ghostnet.layers",)),
    ("models", ("ghostnet.models",)),
    ("checkpoint I/O, weights, hub", ("ghostnet.convert", "ghostnet.download", "ghostnet.weights", "ghostnet.hub",
                                      "ghostnet.hub_format")),
    ("analysis, surgery, data, dense, viz", ("ghostnet.analysis", "ghostnet.surgery", "ghostnet.data",
                                             "ghostnet.dense", "ghostnet.viz")),
    ("train, deploy", ("ghostnet.train", "ghostnet.deploy")),
    ("commands", ("ghostnet.commands", "ghostnet.cli", "ghostnet.__main__", "ghostnet")),
)
#: Siblings in one layer that must not know each other.
FORBIDDEN = (("ghostnet.deploy", "ghostnet.train", "deployment needs no trainer"),)
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 80


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _targets(module: str, node: ast.AST, is_package: bool) -> list[str]:
    """The ghostnet modules an import statement reads (`from pkg import name` reads pkg.name if it is a module)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names if alias.name.split(".")[0] == "ghostnet"]
    if not isinstance(node, ast.ImportFrom):
        return []
    if node.level:
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[:len(base) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    if target.split(".")[0] != "ghostnet":
        return []
    return [f"{target}.{a.name}" if f"{target}.{a.name}" in MODULES else target for a in node.names]


def import_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = defaultdict(set)
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            for target in _targets(module, node, path.name == "__init__.py"):
                while target not in MODULES and "." in target:
                    target = target.rsplit(".", 1)[0]
                if target != module:
                    graph[module].add(target)
    return graph


def layer_of(module: str) -> int:
    best, best_len = None, -1
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best_len:
                best, best_len = index, len(prefix)
    assert best is not None, f"{module} belongs to no layer: add it to LAYERS (and docs/architecture.md)"
    return best


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
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
                found.append(sorted(component))

    for module in sorted(MODULES):
        if module not in index:
            visit(module)
    return found


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for module, targets in sorted(graph.items()):
        for target in sorted(targets):
            if layer_of(target) > layer_of(module):
                bad.append(f"{module} ({LAYERS[layer_of(module)][0]}) imports {target} ({LAYERS[layer_of(target)][0]})")
            for low, high, why in FORBIDDEN:
                if module.startswith(low) and target.startswith(high):
                    bad.append(f"{module} imports {target}: {why}")
    return bad


def test_no_import_cycles():
    assert cycles(import_graph()) == []


def test_imports_only_go_downward():
    assert upward_imports(import_graph()) == []


def test_models_know_no_files_trainer_deployment_or_analysis():
    graph = import_graph()
    for module in (m for m in MODULES if m.startswith("ghostnet.models")):
        reached = {t for t in graph.get(module, ()) if t.split(".")[1] in ("convert", "train", "deploy", "analysis",
                                                                            "hub", "weights", "download")}
        assert not reached, (module, reached)


def test_the_checks_catch_what_they_guard():
    # An upward import and a cycle, planted in a copy of the graph, are reported.
    graph = {k: set(v) for k, v in import_graph().items()}
    graph.setdefault("ghostnet.layers.ghost", set()).add("ghostnet.train.engine")
    assert any("ghostnet.layers.ghost" in line for line in upward_imports(graph))
    graph.setdefault("ghostnet.train.engine", set()).add("ghostnet.layers.ghost")
    assert any("ghostnet.layers.ghost" in c for c in cycles(graph))


def _long_units() -> list[str]:
    found = []
    for module, path in sorted(MODULES.items()):
        text = path.read_text(encoding="utf-8")
        lines = len(text.splitlines())
        if lines > MAX_MODULE_LINES:
            found.append(f"{module}: {lines} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    found.append(f"{module}.{node.name}: {length} lines")
    return found


def test_no_long_modules_or_functions():
    assert _long_units() == []

