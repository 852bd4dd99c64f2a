"""Monitoring data of one endpoint as JSON: ``GET /api/endpoints/{name}/metrics``.

What the console charts and ``modelyard endpoint metrics`` prints: the state
*now* (in-flight requests, queue length, each instance's CPU and memory) and
time series over a window (requests by status class, latency and TTFT
percentiles, tokens, cost) for the endpoint and for each deployment. The
series come from the usage records (`modelyard.store.metrics`, where every
number is defined); CPU and memory from ``/proc`` (`modelyard.runtime.procstats`).
Each point of a deployment's series also has ``instances``: the most
instances it ran during the bucket (from the deployment event log,
`modelyard.store.events`; ``None`` for a hosted model), so a chart shows
autoscaling next to the load that caused it.

Query parameters: ``window`` (``15m``, ``1h``, ``6h``, ``24h``, ``7d``…; default
``1h``, at most 31 days), ``bucket`` (seconds; by default the smallest of
1, 2, 3, 5, 10, 15, 30 minutes, 1, 2, 3, 6, 12, 24 hours that gives at most
120 points) and ``deployment`` (only that deployment in ``now`` and
``by_deployment``). Needs the admin key, like every ``/api`` route.
"""

from __future__ import annotations

import asyncio
import math
import os
from datetime import timedelta
from typing import Any

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from ..errors import invalid, not_found
from ..runtime.procstats import CpuMeter
from ..store.metrics import parse_window, timeseries_by_deployment
from ..store.models import utcnow
from .http import int_param, json_response
from .admin import require_admin
from .openapi import query

router = APIRouter(prefix="/api")

#: The longest window the route serves.
MAX_WINDOW = timedelta(days=31)
#: The most points a default bucket size gives.
TARGET_POINTS = 120
#: The most points an explicit ``bucket`` may give (each series is about 400 bytes a point).
MAX_POINTS = 1500
#: Bucket sizes chosen by default, in seconds ("nice" values for a chart's axis).
DEFAULT_BUCKETS = (60, 120, 180, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400)


def default_bucket(window: timedelta) -> int:
    """The smallest of `DEFAULT_BUCKETS` that cuts ``window`` into at most `TARGET_POINTS` buckets."""
    seconds = window.total_seconds()
    for bucket in DEFAULT_BUCKETS:
        if seconds / bucket <= TARGET_POINTS:
            return bucket
    return DEFAULT_BUCKETS[-1]


#: the query parameters `_parse_params` reads, for /openapi.json
PARAMS = [
    query("window", "how far back: a number and a unit, e.g. 15m, 1h, 24h, 7d (default 1h, at most 31 days)"),
    query("bucket", f"seconds per point (by default at most {TARGET_POINTS} points; at most {MAX_POINTS})",
          type="integer", minimum=1, maximum=int(MAX_WINDOW.total_seconds())),
    query("deployment", "only this deployment"),
]


def _parse_params(request: Request) -> tuple[str, timedelta, int]:
    text = request.query_params.get("window", "1h")
    try:
        window = parse_window(text)
    except ValueError as exc:
        raise invalid(str(exc), param="window") from None
    if window > MAX_WINDOW:
        raise invalid(f"window {text!r} is longer than the {MAX_WINDOW.days} days served", param="window")
    if request.query_params.get("bucket") in (None, ""):
        return text, window, default_bucket(window)
    # seconds; a bucket longer than the longest window means nothing (and past 64 bits cannot be served)
    bucket = int_param(request, "bucket", 0, 1, int(MAX_WINDOW.total_seconds()))
    points = math.ceil(window.total_seconds() / bucket) + 1
    if points > MAX_POINTS:
        raise invalid(f"bucket={bucket} cuts a {text} window into {points} points (at most {MAX_POINTS}); "
                      "use larger buckets", param="bucket")
    return text, window, bucket


def _meter(request: Request) -> CpuMeter:
    """One `CpuMeter` per app, so CPU percentages are measured between successive calls."""
    meter = getattr(request.app.state, "cpu_meter", None)
    if meter is None:
        meter = request.app.state.cpu_meter = CpuMeter()
    return meter


def _gateway_in_flight(gateway: Any) -> int:
    """Requests the gateway is answering now (the ``modelyard_requests_in_flight`` gauge)."""
    value = gateway.metrics.registry.get_sample_value("modelyard_requests_in_flight")
    return int(value or 0)


def _now(deployments: list[Any], meter: CpuMeter) -> list[dict[str, Any]]:
    """Deployments with their instances' CPU and memory (reads /proc: run in a thread)."""
    out = []
    for dep in deployments:
        instances = []
        for inst in dep.instances:
            info = inst.describe()
            stats = meter.sample(info["pid"]) if info["pid"] and inst.state != "stopped" else None
            instances.append({
                "name": info["name"], "pid": info["pid"], "state": info["state"], "restarts": info["restarts"],
                "in_flight": info["in_flight"],
                "cpu_percent": stats["cpu_percent"] if stats else None,
                "rss_mb": stats["rss_mb"] if stats else None,
                "pss_mb": stats["pss_mb"] if stats else None,
            })
        out.append({
            "name": dep.name,
            "model": dep.card.id,
            "state": dep.state,
            "hosted": dep.is_hosted,
            # Requests waiting for a free instance slot (`Deployment._acquire`).
            "queue_length": int(getattr(dep, "waiting", 0) or 0),
            # A hosted deployment has no instances but counts its own requests.
            "in_flight": int(getattr(dep, "in_flight", None) or sum(i["in_flight"] for i in instances)),
            "instances": instances,
        })
    return out


def _gateway_process(meter: CpuMeter) -> dict[str, Any] | None:
    stats = meter.sample(os.getpid())
    if stats is None:
        return None
    return {"pid": stats["pid"], "cpu_percent": stats["cpu_percent"], "rss_mb": stats["rss_mb"],
            "pss_mb": stats["pss_mb"]}


@router.get("/endpoints/{name}/metrics", openapi_extra={"parameters": PARAMS})
async def endpoint_metrics(request: Request, name: str, gateway=Depends(require_admin)) -> Response:
    """State now and time series over ``?window=`` for one endpoint and its deployments."""
    endpoint = gateway.endpoints.get(name)  # 404 for an unknown endpoint
    window_text, window, bucket_s = _parse_params(request)
    only = request.query_params.get("deployment") or None
    deployments = list(endpoint.deployments.values())
    if only is not None:
        deployments = [d for d in deployments if d.name == only]

    meter = _meter(request)
    now_deployments, gateway_process = await asyncio.to_thread(
        lambda: (_now(deployments, meter), _gateway_process(meter)))

    await gateway.writer.flush()  # the records of requests answered a moment ago
    until = utcnow()
    since = until - window
    series, by_deployment = await asyncio.to_thread(
        timeseries_by_deployment, gateway.db, endpoint=name, since=since, until=until, bucket_s=bucket_s,
        deployments=[d.name for d in deployments])
    if only is not None:
        if only not in by_deployment:
            raise not_found(f"Endpoint '{name}' has no deployment '{only}' (running or in the last {window_text}).",
                            param="deployment", code="deployment_not_found")
        by_deployment = {only: by_deployment[only]}
    if gateway.events is not None:
        counts = await asyncio.to_thread(
            gateway.events.instance_series, name, since=since, until=until, bucket_s=bucket_s,
            current={d.name: len(d.instances) for d in deployments if not d.is_hosted})
        for dep_name, dep_series in by_deployment.items():
            values = counts.get(dep_name) or [None] * len(dep_series["series"])
            for point, value in zip(dep_series["series"], values):
                point["instances"] = value

    return json_response({
        "endpoint": name,
        "window": window_text,
        "bucket_s": bucket_s,
        "since": series["since"],
        "until": series["until"],
        "now": {
            "in_flight": _gateway_in_flight(gateway),
            "gateway": gateway_process,
            "deployments": now_deployments,
        },
        "series": series,
        "by_deployment": by_deployment,
    })
