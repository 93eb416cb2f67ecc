"""Import-layering rule (see DESIGN.md).

- ``routing`` imports nothing from ``llmserve`` or ``engines``.
- ``engines`` imports nothing from ``llmserve``.
- only ``engines/<backend>`` imports that backend's packages (vllm, sglang, torch),
  and nothing imports them at module top level outside those files.
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


def main() -> int:
    errors: list[str] = []
    for package in ("routing", "engines", "llmserve"):
        for path in sorted((ROOT / package).rglob("*.py")):
            errors += check_file(path)
    for error in errors:
        print(error)
    print(f"layering: {'FAILED' if errors else 'ok'} ({len(errors)} violations)")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
