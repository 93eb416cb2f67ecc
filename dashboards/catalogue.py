"""The metric catalogue in docs/metrics.md: every metric's name, type and labels."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "metrics.md"
_ROW = re.compile(r"^\| `(?P<name>[a-z0-9_:]+)` \| (?P<type>counter|gauge|histogram) \| "
                  r"(?P<labels>[^|]*) \|")


@dataclass(frozen=True)
class CatalogueEntry:
    name: str
    type: str
    labels: tuple[str, ...]


def read_catalogue(path: Path = DOC) -> dict[str, CatalogueEntry]:
    entries: dict[str, CatalogueEntry] = {}
    for line in path.read_text().splitlines():
        match = _ROW.match(line)
        if match:
            labels = tuple(re.findall(r"`([a-z0-9_]+)`", match["labels"]))
            entries[match["name"]] = CatalogueEntry(match["name"], match["type"], labels)
    return entries


def series_names(entry: CatalogueEntry) -> set[str]:
    """The series names a metric exposes (a histogram's _bucket, _sum and _count)."""
    if entry.type == "histogram":
        return {entry.name + s for s in ("_bucket", "_sum", "_count")}
    return {entry.name}
