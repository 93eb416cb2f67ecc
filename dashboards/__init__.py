"""Grafana dashboards for llmserve, written with grafana-foundation-sdk (see build.py)."""
