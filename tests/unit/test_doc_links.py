"""README.md and docs/: every relative link names a file in the repository, nothing points
outside it, and the README stays short."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md")),
         *sorted((ROOT / "benchmarks").rglob("README.md"))]


def relative_links(page: Path) -> list[str]:
    return [target for target in LINK.findall(page.read_text())
            if not re.match(r"^[a-z][a-z0-9+.-]*:", target) and not target.startswith("#")]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve_inside_the_repository(page: Path) -> None:
    for target in relative_links(page):
        path = (page.parent / target.split("#", 1)[0]).resolve()
        assert path.is_relative_to(ROOT), f"{page.name}: {target} points outside the repo"
        assert path.exists(), f"{page.relative_to(ROOT)}: {target} does not exist"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_page_points_outside_the_repository(page: Path) -> None:
    text = page.read_text()
    assert "DESIGN.md" not in text
    assert "../shared" not in text


def test_the_readme_links_every_topic_and_stays_short() -> None:
    text = (ROOT / "README.md").read_text()
    assert len(text) <= 8_000
    links = relative_links(ROOT / "README.md")
    for page in ("docs/architecture.md", "docs/routing.md", "docs/lora.md", "docs/pd.md",
                 "docs/ray.md", "docs/metrics.md", "docs/ray-serve-compat.md",
                 "docs/benchmarks.md"):
        assert page in links
    assert "make test" in text  # CI runs it; the README says so
