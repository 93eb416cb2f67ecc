"""The shipped Prometheus and Grafana files work as shipped: they parse, Prometheus' own
``promtool`` accepts the scrape configuration, they point at the gateway's routes and its
default port, and the Grafana provisioning finds the dashboards where README.md's command
mounts them."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from dashboards.build import OUT
from dashboards.definitions import DASHBOARDS
from llmserve.openai.routes import ROUTE_TEMPLATES

ROOT = Path(__file__).resolve().parents[3]
SHIPPED = ROOT / "dashboards"
PROMETHEUS_YML = SHIPPED / "prometheus" / "prometheus.yml"
GATEWAY = "localhost:8000"  # `llmserve serve`'s default port


def load(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict), path
    return data


def jobs(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {job["job_name"]: job for job in config["scrape_configs"]}


def code_blocks(path: Path, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", path.read_text(), re.S)


def test_prometheus_config_scrapes_the_gateway_and_its_engines() -> None:
    found = jobs(load(PROMETHEUS_YML))
    gateway = found["llmserve"]
    assert gateway["static_configs"] == [{"targets": [GATEWAY]}]
    assert gateway.get("metrics_path", "/metrics") in ROUTE_TEMPLATES
    (sd,) = found["llmserve-engines"]["http_sd_configs"]
    assert sd["url"] == f"http://{GATEWAY}/metrics/engines"
    assert "/metrics/engines" in ROUTE_TEMPLATES


@pytest.mark.skipif(shutil.which("promtool") is None,
                    reason="needs Prometheus' promtool (.ci/run installs Debian's prometheus)")
def test_promtool_accepts_the_shipped_prometheus_config() -> None:
    promtool = shutil.which("promtool")
    assert promtool is not None
    result = subprocess.run([promtool, "check", "config", str(PROMETHEUS_YML)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("doc", ["README.md", "docs/metrics.md"])
def test_documented_scrape_configuration_is_the_shipped_one(doc: str) -> None:
    blocks = [b for b in code_blocks(ROOT / doc, "yaml") if "scrape_configs" in b]
    assert blocks, f"{doc} shows no scrape configuration"
    shipped = jobs(load(PROMETHEUS_YML))
    for block in blocks:
        shown = jobs(yaml.safe_load(block))
        assert set(shown) == set(shipped)
        for name, job in shown.items():
            for key, value in job.items():
                if key == "http_sd_configs":
                    assert [c["url"] for c in value] == [
                        c["url"] for c in shipped[name][key]]
                else:
                    assert shipped[name][key] == value, (doc, name, key)


def readme_grafana_mounts() -> dict[str, str]:
    """Container path -> repository folder, from README.md's `docker run` command."""
    command = next(b for b in code_blocks(ROOT / "README.md", "bash") if "grafana/grafana" in b)
    words = shlex.split(command.replace("\\\n", " ").replace("$PWD/", ""))
    mounts = [words[i + 1] for i, word in enumerate(words) if word == "-v"]
    return {target: source for source, target in (m.split(":", 1) for m in mounts)}


def test_grafana_provisioning_finds_the_dashboards_and_a_prometheus() -> None:
    mounts = readme_grafana_mounts()
    provisioning = ROOT / mounts["/etc/grafana/provisioning"]
    assert provisioning == SHIPPED / "provisioning"
    datasources = load(provisioning / "datasources" / "llmserve.yaml")
    assert datasources["apiVersion"] == 1
    (source,) = datasources["datasources"]
    # the shipped prometheus command listens on Prometheus' default address
    assert source["type"] == "prometheus" and source["url"] == "http://localhost:9090"
    providers = load(provisioning / "dashboards" / "llmserve.yaml")
    assert providers["apiVersion"] == 1
    (provider,) = providers["providers"]
    assert provider["type"] == "file"
    folder = ROOT / mounts[provider["options"]["path"]]  # mounted where it reads
    assert folder == OUT
    boards = {path.stem: json.loads(path.read_text()) for path in folder.glob("*.json")}
    assert set(boards) == set(DASHBOARDS)
    for board in boards.values():
        variables = {v["name"]: v for v in board["templating"]["list"]}
        # every panel's data source is the `datasource` variable: any Prometheus
        assert variables["datasource"]["query"] == "prometheus"
        assert all(p["datasource"]["uid"] == "${datasource}" for p in board["panels"]
                   if p["type"] != "row")
