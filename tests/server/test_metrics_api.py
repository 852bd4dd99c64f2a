"""Monitoring through a real gateway: ``GET /api/endpoints/{name}/metrics`` and
``modelyard endpoint metrics``, after real requests to the embedded model.

The counting test starts its own gateway, so it knows every request made;
the others use the shared session gateway."""

from __future__ import annotations

import httpx
import openai
import pytest
import typer
from typer.testing import CliRunner

from modelyard.cli.metrics import endpoint_metrics

pytestmark = pytest.mark.model

DEPLOYMENT = "gemma-3-270m"
ASK = {"model": "default", "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 8, "temperature": 0}


@pytest.fixture
def busy_gateway(start_gateway):
    """A fresh gateway that has answered three chat requests, one stream and one bad request (n=2)."""
    srv = start_gateway(None)
    client = srv.openai()
    for _ in range(3):
        client.chat.completions.create(**ASK)
    for _ in client.chat.completions.create(**ASK, stream=True):
        pass
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(**ASK, n=2)  # the llama.cpp backend answers one choice only
    return srv


def test_metrics_count_requests_by_status_and_show_latency_and_instances(busy_gateway):
    srv = busy_gateway
    r = srv.api("GET", "/api/endpoints/default/metrics", params={"window": "15m"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["endpoint"], body["window"], body["bucket_s"]) == ("default", "15m", 60)
    assert 15 <= len(body["series"]["series"]) <= 16

    totals = body["series"]["totals"]
    assert totals["requests"] == 5
    assert totals["by_status"] == {"2xx": 4, "4xx": 1, "5xx": 0}
    assert totals["errors"] == 0  # a caller's bad request is not the service's error
    assert totals["latency_ms"]["p50"] > 0 and totals["latency_ms"]["p99"] >= totals["latency_ms"]["p50"]
    assert totals["ttft_ms"] is not None and totals["ttft_ms"]["p50"] > 0  # from the stream
    assert totals["completion_tokens"] > 0 and totals["tokens_per_s"] > 0
    assert sum(p["requests"] for p in body["series"]["series"]) == 5

    assert list(body["by_deployment"]) == [DEPLOYMENT]
    assert body["by_deployment"][DEPLOYMENT]["totals"]["requests"] == 5

    now = body["now"]
    assert now["in_flight"] == 0
    (deployment,) = now["deployments"]
    assert (deployment["name"], deployment["state"], deployment["in_flight"], deployment["queue_length"]) == \
        (DEPLOYMENT, "ready", 0, 0)
    (instance,) = deployment["instances"]
    assert instance["rss_mb"] > 0 and instance["cpu_percent"] is not None
    status = srv.api("GET", "/api/status").json()
    default = next(e for e in status["endpoints"] if e["name"] == "default")
    assert instance["pid"] == default["deployments"][0]["instances"][0]["pid"]


def test_metrics_refuse_bad_parameters_by_name(server):
    srv = server
    bad_window = srv.api("GET", "/api/endpoints/default/metrics", params={"window": "soon"})
    assert bad_window.status_code == 400 and bad_window.json()["error"]["param"] == "window"
    bad_bucket = srv.api("GET", "/api/endpoints/default/metrics", params={"window": "1h", "bucket": "0"})
    assert bad_bucket.status_code == 400 and bad_bucket.json()["error"]["param"] == "bucket"
    tiny_buckets = srv.api("GET", "/api/endpoints/default/metrics", params={"window": "7d", "bucket": "1"})
    assert tiny_buckets.status_code == 400 and tiny_buckets.json()["error"]["param"] == "bucket"
    unknown = srv.api("GET", "/api/endpoints/nope/metrics")
    assert unknown.status_code == 404
    unknown_deployment = srv.api("GET", "/api/endpoints/default/metrics", params={"deployment": "nope"})
    assert unknown_deployment.status_code == 404 and unknown_deployment.json()["error"]["param"] == "deployment"
    assert httpx.get(srv.url + "/api/endpoints/default/metrics").status_code == 401


def test_cli_endpoint_metrics_prints_the_deployment(server, monkeypatch):
    server.openai().chat.completions.create(**ASK)
    for k, v in server.env().items():
        monkeypatch.setenv(k, v)
    app = typer.Typer()

    @app.callback()
    def main() -> None:
        """endpoint commands"""

    app.command("metrics")(endpoint_metrics)
    result = CliRunner().invoke(app, ["metrics", "default", "--window", "15m"], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    assert DEPLOYMENT in result.output
    assert "(endpoint)" in result.output and "last 15m" in result.output

    missing = CliRunner().invoke(app, ["metrics", "nope"])
    assert missing.exit_code == 1 and "nope" in missing.output
