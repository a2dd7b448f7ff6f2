"""The Grafana dashboard (deploy/grafana/herald-dashboard.json) parses and charts only
metrics herald exports: every `herald_*` name in a query is declared in
services/herald/src/metrics.rs, and every SPEC §7 series has a panel.

    .venv/bin/python -m pytest deploy/helm/tests/test_dashboard.py
"""

from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
DASHBOARD = ROOT / "deploy" / "grafana" / "herald-dashboard.json"
METRICS_RS = ROOT / "services" / "herald" / "src" / "metrics.rs"
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
# SPEC §7: sessions by dialect, events received/delivered/dropped, e2e latency, slow
# consumers, auth failures, NATS connection state, replayed events.
SPEC_SERIES = {
    "herald_sessions",
    "herald_events_received_total",
    "herald_events_delivered_total",
    "herald_events_dropped_total",
    "herald_delivery_latency_seconds",
    "herald_slow_consumers_total",
    "herald_auth_failures_total",
    "herald_bus_connected",
    "herald_events_replayed_total",
}


def exported_metrics() -> set[str]:
    return set(re.findall(r'"(herald_[a-z_]+)"', METRICS_RS.read_text()))


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def queried_metrics(board: dict) -> set[str]:
    names = set()
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            names.update(re.findall(r"\b(herald_[a-z_]+)", target["expr"]))
    for variable in board["templating"]["list"]:
        query = variable.get("query")
        if isinstance(query, dict):
            names.update(re.findall(r"\b(herald_[a-z_]+)", query["query"]))
    return names


def base_name(name: str, exported: set[str]) -> str:
    if name in exported:
        return name
    for suffix in HISTOGRAM_SUFFIXES:
        if name.endswith(suffix) and name[: -len(suffix)] in exported:
            return name[: -len(suffix)]
    return name


def test_the_dashboard_is_valid_json_with_unique_panel_ids() -> None:
    board = dashboard()
    assert board["uid"] and board["title"]
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids)), ids
    for panel in board["panels"]:
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        for key in ("h", "w", "x", "y"):
            assert isinstance(panel["gridPos"][key], int)


def test_every_queried_metric_is_exported_by_herald() -> None:
    exported = exported_metrics()
    assert "herald_sessions" in exported, "metrics.rs moved? the test reads names from it"
    unknown = {
        name for name in queried_metrics(dashboard()) if base_name(name, exported) not in exported
    }
    assert not unknown, f"dashboard queries metrics herald does not export: {sorted(unknown)}"


def test_every_spec_series_has_a_panel() -> None:
    exported = exported_metrics()
    charted = {base_name(name, exported) for name in queried_metrics(dashboard())}
    assert SPEC_SERIES <= exported, sorted(SPEC_SERIES - exported)
    assert SPEC_SERIES <= charted, f"no panel for {sorted(SPEC_SERIES - charted)}"
