"""``modelyard endpoint metrics NAME``: an endpoint's monitoring numbers, as tables.

Thin: one call to ``GET /api/endpoints/{name}/metrics`` (see
`modelyard.server.metrics_routes`) and rich tables narrow enough for an
80-column terminal: deployments and instances now, traffic and latency over
the window (the endpoint, then each deployment), and the last buckets.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import typer
from rich.table import Table

from .remote import call_api, console

#: How many of the newest buckets the per-bucket table shows.
LAST_BUCKETS = 15


def _num(value: Any, fmt: str = "{:,.0f}") -> str:
    return "–" if value is None else fmt.format(value)


def _ms(value: float | None) -> str:
    return _num(value, "{:,.0f}") if value is None or value >= 10 else _num(value, "{:.1f}")


def _pct(value: float | None) -> str:
    return _num(None if value is None else value * 100, "{:.1f}%")


def _when(iso: str, bucket_s: int) -> str:
    t = datetime.fromisoformat(iso)
    if bucket_s >= 86400:
        return t.strftime("%Y-%m-%d")
    return t.strftime("%m-%d %H:%M" if bucket_s >= 3600 else "%H:%M:%S" if bucket_s % 60 else "%H:%M")


def _now_table(body: dict[str, Any]) -> Table:
    now = body["now"]
    gw = now.get("gateway") or {}
    caption = f"gateway: {now['in_flight']} in flight"
    if gw:
        caption += f", cpu {_num(gw.get('cpu_percent'), '{:.0f}%')}, rss {_num(gw.get('rss_mb'))} MB"
    table = Table(title=f"{body['endpoint']} now", caption=caption)
    for col in ("deployment", "model", "state", "in-flight", "queue", "instances ready"):
        table.add_column(col, justify="left" if col in ("deployment", "model", "state") else "right")
    for dep in now["deployments"]:
        instances = dep["instances"]
        ready = sum(1 for i in instances if i["state"] == "ready")
        table.add_row(dep["name"], dep.get("model") or "", dep["state"], _num(dep["in_flight"]),
                      _num(dep["queue_length"]), "hosted" if dep.get("hosted") else f"{ready}/{len(instances)}")
    return table


def _instances_table(body: dict[str, Any]) -> Table:
    instances = [inst for dep in body["now"]["deployments"] for inst in dep["instances"]]
    table = Table(title="instances", caption="cpu: % of one core since the previous call")
    _label_column(table, "instance", [inst["name"] for inst in instances])
    for col in ("state", "pid", "restarts", "in-flight", "cpu", "rss MB", "pss MB"):
        table.add_column(col, justify="left" if col == "state" else "right")
    for inst in instances:
        table.add_row(inst["name"], inst["state"], _num(inst["pid"], "{}"), _num(inst["restarts"]),
                      _num(inst.get("in_flight")), _num(inst["cpu_percent"], "{:.0f}%"), _num(inst["rss_mb"]),
                      _num(inst["pss_mb"]))
    return table


def _rows(body: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """("(endpoint)", totals) then one (deployment, totals) per deployment."""
    rows = [("(endpoint)", body["series"]["totals"])]
    for name, series in body["by_deployment"].items():
        rows.append((f"{name} (shadow)" if series.get("include_mirrored") else name, series["totals"]))
    return rows


def _label_column(table: Table, title: str, labels: list[str]) -> None:
    """A left-aligned first column wide enough for its longest label (names are what a reader looks for)."""
    table.add_column(title, no_wrap=True, min_width=max([len(title), *map(len, labels)]))


def _traffic_table(body: dict[str, Any]) -> Table:
    rows = _rows(body)
    table = Table(title=f"traffic, last {body['window']}",
                  caption="errors: 5xx, 408, 429 · shadow: a mirrored deployment's own calls")
    _label_column(table, "deployment", [label for label, _ in rows])
    for col in ("requests", "req/min", "2xx", "4xx", "5xx", "errors", "cost USD"):
        table.add_column(col, justify="right")
    for i, (label, t) in enumerate(rows):
        status = t["by_status"]
        table.add_row(label, _num(t["requests"]), _num(t["requests_per_min"], "{:,.2f}"), _num(status["2xx"]),
                      _num(status["4xx"]), _num(status["5xx"]), _pct(t["error_rate"]), _num(t["cost_usd"], "{:.6f}"),
                      style="bold" if i == 0 else None)
    return table


def _speed_table(body: dict[str, Any]) -> Table:
    rows = _rows(body)
    table = Table(title=f"latency and tokens, last {body['window']}",
                  caption="ms, over all requests · tok/s while generating")
    _label_column(table, "deployment", [label for label, _ in rows])
    for col in ("p50", "p95", "p99", "TTFT p50", "tokens in", "tokens out", "tok/s"):
        table.add_column(col, justify="right")
    for i, (label, t) in enumerate(rows):
        lat, ttft = t["latency_ms"], t["ttft_ms"] or {}
        table.add_row(label, _ms(lat["p50"]), _ms(lat["p95"]), _ms(lat["p99"]), _ms(ttft.get("p50")),
                      _num(t["prompt_tokens"]), _num(t["completion_tokens"]), _num(t["tokens_per_s"], "{:,.1f}"),
                      style="bold" if i == 0 else None)
    return table


def _buckets_table(body: dict[str, Any]) -> Table:
    points = body["series"]["series"][-LAST_BUCKETS:]
    table = Table(title=f"last {len(points)} buckets of {body['bucket_s']}s, whole endpoint")
    for col in ("start (UTC)", "requests", "2xx", "4xx", "5xx", "errors", "p95 ms"):
        table.add_column(col, justify="left" if col == "start (UTC)" else "right")
    for p in points:
        status = p["by_status"]
        table.add_row(_when(p["t"], body["bucket_s"]), _num(p["requests"]), _num(status["2xx"]), _num(status["4xx"]),
                      _num(status["5xx"]), _num(p["errors"]), _ms(p["latency_ms"]["p95"]))
    return table


def endpoint_metrics(
    name: str = typer.Argument(..., help="endpoint name"),
    window: str = typer.Option("1h", "--window", "-w", help="how far back: 15m, 1h, 6h, 24h, 7d…"),
    deployment: str = typer.Option(None, "--deployment", "-d", help="show only this deployment"),
    bucket: int = typer.Option(None, "--bucket", help="bucket size in seconds (default: from the window)"),
    as_json: bool = typer.Option(False, "--json", help="print the API's JSON instead of tables"),
) -> None:
    """Requests, errors, latency, TTFT, tokens, cost, in-flight, queue and instance CPU/memory of an endpoint."""
    params: dict[str, Any] = {"window": window}
    if deployment:
        params["deployment"] = deployment
    if bucket:
        params["bucket"] = bucket
    body = call_api("GET", f"/api/endpoints/{name}/metrics", params=params)
    if as_json:
        print(json.dumps(body, indent=2))
        return
    for table in (_now_table(body), _instances_table(body), _traffic_table(body), _speed_table(body),
                  _buckets_table(body)):
        console.print(table)
