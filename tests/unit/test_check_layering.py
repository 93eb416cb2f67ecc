"""The layering check finds import cycles, also through function-local imports."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


def checker() -> ModuleType:
    spec = importlib.util.spec_from_file_location("check_layering",
                                                  ROOT / ".ci" / "check_layering.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write(root: Path, files: dict[str, str]) -> list[Path]:
    paths = []
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        paths.append(path)
    return paths


def test_a_cycle_closed_inside_a_function_is_found(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    check = checker()
    monkeypatch.setattr(check, "ROOT", tmp_path)
    paths = write(tmp_path, {
        "llmserve/__init__.py": "",
        "llmserve/a.py": "from llmserve.b import thing\n",
        "llmserve/b.py": "def thing():\n    from llmserve import c\n",
        "llmserve/c.py": "import llmserve.a\n",
        "llmserve/d.py": "from llmserve import a\n",
    })
    graph = check.import_graph(paths)
    assert graph["llmserve.d"] == {"llmserve.a"}
    assert check.import_cycles(graph) == [["llmserve.a", "llmserve.b", "llmserve.c"]]
    assert "import cycle among 3 modules" in check.cycle_errors(graph)[0]


def test_the_repository_has_no_cycle() -> None:
    check = checker()
    paths = [p for package in ("llmserve", "routing", "engines")
             for p in sorted((ROOT / package).rglob("*.py"))]
    assert check.import_cycles(check.import_graph(paths)) == []
