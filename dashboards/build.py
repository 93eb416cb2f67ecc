"""Write the Grafana dashboards' JSON from :mod:`dashboards.definitions`.

``python -m dashboards.build`` regenerates ``dashboards/grafana/*.json`` (``make
dashboards``); ``--check`` fails when the committed JSON differs (``make check``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from grafana_foundation_sdk.builders.dashboard import (
    Dashboard,
    DatasourceVariable,
    QueryVariable,
    Row,
)
from grafana_foundation_sdk.builders.prometheus import Dataquery
from grafana_foundation_sdk.builders.timeseries import Panel as Timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import DataSourceRef, VariableRefresh

from dashboards.definitions import DASHBOARDS
from dashboards.panels import PanelSpec, RowSpec

OUT = Path(__file__).resolve().parent / "grafana"
DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
REF_IDS = "ABCDEFGH"


def panel(spec: PanelSpec, panel_id: int) -> Timeseries:
    built = (Timeseries().id(panel_id).title(spec.title).description(spec.description)
             .unit(spec.unit).datasource(DATASOURCE).height(8).span(12))
    for ref_id, query in zip(REF_IDS, spec.queries, strict=False):
        built = built.with_target(Dataquery().expr(query.expr).legend_format(query.legend)
                                  .ref_id(ref_id).datasource(DATASOURCE))
    return built


def dashboard(name: str) -> Dashboard:
    title, specs = DASHBOARDS[name]
    board = (Dashboard(title).uid(f"llmserve-{name}").tags(["llmserve"]).refresh("10s")
             .time("now-30m", "now").timezone("browser")
             .with_variable(DatasourceVariable("datasource").label("Data source")
                            .type("prometheus"))
             .with_variable(QueryVariable("model_name").label("Model")
                            .datasource(DATASOURCE)
                            .query("label_values(llmserve_requests_in_flight, model_name)")
                            .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
                            .include_all(True).all_value(".*").multi(True)))
    for panel_id, spec in enumerate(specs, start=1):
        if isinstance(spec, RowSpec):
            board = board.with_row(Row(spec.title).id(panel_id))
        else:
            board = board.with_panel(panel(spec, panel_id))
    return board


def render(name: str) -> str:
    return JSONEncoder(sort_keys=True, indent=2).encode(dashboard(name).build()) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true",
                        help="fail when the committed JSON is not what the code generates")
    args = parser.parse_args(argv)
    stale = []
    for name in DASHBOARDS:
        path = OUT / f"{name}.json"
        text = render(name)
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(str(path))
        else:
            OUT.mkdir(exist_ok=True)
            path.write_text(text)
    if stale:
        print("stale dashboards (run `make dashboards` and commit):", *stale, sep="\n  ")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
