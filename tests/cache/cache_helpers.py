"""Helpers for the cache's HTTP tests: a gateway on the echo stub, requests, usage rows and metrics."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import httpx

from tests.cards import hosted_card
from tests.live_gateway import start_server, write_catalog
from tests.openai_stub import StubServer


def hosted_catalog(home: Path, stub: StubServer) -> None:
    """A hosted chat card `stub-chat` on the echo stub ($1 / $2 per million tokens), as a user catalog file."""
    write_catalog(home, hosted_card("stub-chat", f"{stub.root}/v1", price=(1.0, 2.0)))


def stub_gateway(home: Path, stub: StubServer, **kwargs):
    hosted_catalog(home, stub)
    return start_server(home, "--no-defaults", **kwargs)


def cached_endpoint(srv, name: str, cache: dict, model: str = "stub-chat") -> None:
    """An endpoint with one deployment of `model` and the given cache settings."""
    r = srv.api("POST", "/api/endpoints", json={"name": name, "cache": cache})
    assert r.status_code == 201, r.text
    r = srv.api("POST", f"/api/endpoints/{name}/deployments", json={"name": "main", "model": model})
    assert r.status_code == 201, r.text
    if cache.get("mode", "off") != "off":
        wait_until_warm(srv, name)


def wait_until_warm(srv, name: str, timeout: float = 60.0) -> None:
    """Wait until the endpoint's cache store has opened (a request meanwhile is answered, marked ``warming``:
    on a busy machine opening can take longer than the second a request waits for it)."""
    deadline = time.monotonic() + timeout
    while True:
        stats = srv.api("GET", f"/api/endpoints/{name}/cache").json()
        if not stats.get("warming"):
            return
        assert time.monotonic() < deadline, f"the cache of {name} is still warming after {timeout} s"
        time.sleep(0.1)


PRICE = (10 * 1.0 + 20 * 2.0) / 1e6  # the stub card's price for 10 prompt + 20 completion tokens


def ask(question: str, **kw) -> dict:
    return {"messages": [{"role": "user", "content": question}], "temperature": 0, "max_tokens": 50, **kw}


def calls(stub: StubServer) -> int:
    """How many requests the stub has had."""
    return stub.seen


def usage_rows(srv, endpoint: str) -> list[dict]:
    srv.api("GET", "/api/usage")  # flushes the usage writer
    with sqlite3.connect(srv.home / "modelyard.db") as db:
        db.row_factory = sqlite3.Row
        return [dict(r) for r in db.execute("select * from usage_records where endpoint = ? order by id", (endpoint,))]


def metric(srv, name: str, **labels) -> float:
    text = srv.api("GET", "/metrics").text
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no {name}{{{want}}} in /metrics")


def raw(client, endpoint: str, **body):
    return client.chat.completions.with_raw_response.create(model=endpoint, **body)
