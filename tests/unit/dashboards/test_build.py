"""`make dashboards` writes the JSON; `make check` (build --check) fails when it is stale."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dashboards import build
from dashboards.definitions import DASHBOARDS


def test_check_passes_on_fresh_json_and_fails_on_stale(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(build, "OUT", tmp_path)
    assert build.main(["--check"]) == 1  # nothing written yet
    assert build.main([]) == 0
    assert sorted(p.stem for p in tmp_path.glob("*.json")) == sorted(DASHBOARDS)
    assert build.main(["--check"]) == 0
    overview = tmp_path / "overview.json"
    overview.write_text(overview.read_text().replace("Request rate", "Old title"))
    assert build.main(["--check"]) == 1


def test_committed_json_is_current_and_panels_have_queries() -> None:
    assert build.main(["--check"]) == 0
    for name in DASHBOARDS:
        board = json.loads((build.OUT / f"{name}.json").read_text())
        assert board["uid"] == f"llmserve-{name}"
        assert all(p["targets"] and all(t["expr"] for t in p["targets"])
                   for p in board["panels"] if p["type"] != "row")
