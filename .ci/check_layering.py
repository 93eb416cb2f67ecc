"""Import-layering rules.

- ``routing`` imports nothing from ``llmserve`` or ``engines``.
- ``engines`` imports nothing from ``llmserve``.
- only ``engines/<backend>`` imports that backend's packages (vllm, sglang, torch),
  and nothing imports them at module top level outside those files.
- no import cycle among the modules of ``llmserve``, ``routing`` or ``engines``; every
  import counts, also one inside a function or under ``TYPE_CHECKING``.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEAVY = {"vllm": "vllm", "sglang": "sglang", "torch": None}


def imported_modules(tree: ast.AST) -> list[tuple[str, int]]:
    found: list[tuple[str, int]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, node.lineno))
    return found


def check_file(path: Path) -> list[str]:
    rel = path.relative_to(ROOT)
    package = rel.parts[0]
    errors: list[str] = []
    tree = ast.parse(path.read_text(), filename=str(rel))
    for module, line in imported_modules(tree):
        top = module.split(".")[0]
        if package == "routing" and top in {"llmserve", "engines"}:
            errors.append(f"{rel}:{line}: routing must not import {module}")
        if package == "engines" and top == "llmserve":
            errors.append(f"{rel}:{line}: engines must not import {module}")
        if top in HEAVY:
            backend = rel.parts[1] if package == "engines" and len(rel.parts) > 2 else None
            allowed = {HEAVY[top]} if HEAVY[top] else {"vllm", "sglang"}
            if backend not in allowed:
                errors.append(f"{rel}:{line}: only engines/<backend> may import {module}")
    return errors


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_graph(paths: list[Path]) -> dict[str, set[str]]:
    """Module -> the project modules it imports (``from pkg import name`` counts as an
    import of ``pkg.name`` when that is a module, else of ``pkg``)."""
    modules = {module_name(p): p for p in paths}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                targets |= {alias.name for alias in node.names if alias.name in modules}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                if node.module not in modules:
                    continue
                for alias in node.names:
                    sub = f"{node.module}.{alias.name}"
                    targets.add(sub if sub in modules else node.module)
        targets.discard(name)
        graph[name] = targets
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(graph) + 100))
    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def cycle_errors(graph: dict[str, set[str]]) -> list[str]:
    errors = []
    for cycle in import_cycles(graph):
        members = set(cycle)
        edges = "; ".join(f"{m} -> {', '.join(sorted(graph[m] & members))}" for m in cycle)
        errors.append(f"import cycle among {len(cycle)} modules: {edges}")
    return errors


def main() -> int:
    errors: list[str] = []
    paths: list[Path] = []
    for package in ("routing", "engines", "llmserve"):
        for path in sorted((ROOT / package).rglob("*.py")):
            errors += check_file(path)
            paths.append(path)
    errors += cycle_errors(import_graph(paths))
    for error in errors:
        print(error)
    print(f"layering: {'FAILED' if errors else 'ok'} ({len(errors)} violations)")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
