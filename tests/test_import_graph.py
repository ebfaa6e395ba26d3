"""The package's import graph (every ``import`` statement, module level or inside a function): no cycles, no
module importing from a layer above its own (``data`` never imports ``train``, ``ops`` never imports ``model``), and
the tools around the model side by side: no tool imports another (what they share lives in ``inference``)."""
from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "maskspec_fast"
# Lower layers first; a module may import its own layer and the ones before it. Top-level modules not listed are
# the front doors (cli-like entry points) and may import anything below them.
LAYERS = [
    {"_version", "config", "serialization", "ops"},
    {"frontend", "layers", "fused", "backends", "interop", "hub"},
    {"model", "viz", "convert", "inference"},
    {"data"},
    {"train", "embed", "export", "hear", "xares"},
]
# The tools around the model and the training package: peers on the top layer, none importing another.
TOOLS = {"train", "embed", "export", "hear", "xares", "convert"}


def _name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def import_graph() -> dict[str, set[str]]:
    modules = {_name(p): p for p in PKG.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for mod, path in modules.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):  # every import counts, TYPE_CHECKING ones too (a cycle in the design)
            targets: list[str] = []
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join(anchor + ([base] if base else []))
                targets = [f"{base}.{a.name}" for a in node.names] + [base]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            for t in targets:
                while t and t not in modules:
                    t = t.rpartition(".")[0]
                if t and t != mod and t.startswith("maskspec_fast") and not mod.startswith(t + "."):
                    graph[mod].add(t)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
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

    for v in graph:
        if v not in index:
            visit(v)
    return out


def _layer(mod: str) -> int | None:
    parts = mod.split(".")
    top = parts[1] if len(parts) > 1 else ""
    for i, layer in enumerate(LAYERS):
        if top in layer:
            return i
    return None


def test_no_import_cycles():
    assert _cycles(import_graph()) == []


def test_no_upward_imports():
    bad = [(m, t) for m, ts in import_graph().items() for t in ts
           if _layer(m) is not None and _layer(t) is not None and _layer(t) > _layer(m)]
    assert bad == []


def _top(mod: str) -> str:
    parts = mod.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_tools_side_by_side():
    bad = [(m, t) for m, ts in import_graph().items() for t in ts
           if _top(m) in TOOLS and _top(t) in TOOLS and _top(m) != _top(t)]
    assert bad == []
