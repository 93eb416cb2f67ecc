"""Panel specifications: the PromQL each dashboard panel runs, independent of Grafana.

Queries use two Grafana variables: ``$model_name`` (a regex over the models) and
``$__rate_interval``. :func:`concrete` replaces them for running a query elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass

M = 'model_name=~"$model_name"'
RATE = "[$__rate_interval]"


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str


@dataclass(frozen=True)
class PanelSpec:
    title: str
    queries: tuple[Query, ...]
    unit: str = "short"
    description: str = ""


@dataclass(frozen=True)
class RowSpec:
    """A row header: the panels after it, up to the next row, belong to it."""

    title: str


def quantiles(histogram: str, by: str = "", selector: str = M) -> tuple[Query, ...]:
    """p50, p90 and p99 of a histogram, optionally per label ``by``."""
    group = f"le, {by}" if by else "le"
    suffix = f" {{{{{by}}}}}" if by else ""
    return tuple(
        Query(f"histogram_quantile({q}, sum by ({group}) "
              f"(rate({histogram}_bucket{{{selector}}}{RATE})))", f"p{round(q * 100)}{suffix}")
        for q in (0.5, 0.9, 0.99))


def rate_by(counter: str, by: str, selector: str = M) -> Query:
    return Query(f"sum by ({by}) (rate({counter}{{{selector}}}{RATE}))",
                 "{{" + by.split(", ")[-1] + "}}" if by else counter)


def concrete(expr: str, rate_interval: str = "1m") -> str:
    """The query as Prometheus runs it once Grafana filled in the variables (all models)."""
    return expr.replace("$__rate_interval", rate_interval).replace("$model_name", ".*")
