"""Helpers for the batch tests: a real gateway (`modelyard up` in a subprocess) whose hosted deployments call a
scripted OpenAI stub, driven by the official `openai` client and the CLI.

Batch lines cannot carry HTTP headers, so the stub's scripted behaviour
(``x-stub-status``, ``x-stub-fail-times`` …, see tests/openai_stub.py) is
asked for in the request body instead: a line whose ``user`` field is
``"stub:status=503,fail_times=2,key=k1,delay_ms=50"`` reaches the stub with
those headers. `ScriptedStub` turns the one into the other in front of the
unchanged stub.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path
from typing import Any, Callable

from tests.cards import hosted_card
from tests.live_gateway import Server, write_catalog
from tests.openai_stub import StubServer

TERMINAL = {"completed", "failed", "cancelled", "expired"}


class ScriptedStub:
    """ASGI wrapper: reads the body, turns ``user: "stub:k=v,..."`` into ``x-stub-k: v`` headers."""

    def __init__(self) -> None:
        self.stub = StubServer()
        self.lock = threading.Lock()
        self.bodies: list[dict[str, Any]] = []

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            return await self.stub(scope, receive, send)
        raw = b""
        more = True
        while more:
            message = await receive()
            raw += message.get("body", b"")
            more = message.get("more_body", False)
        headers = list(scope["headers"])
        try:
            body = json.loads(raw)
        except ValueError:
            body = {}
        with self.lock:
            self.bodies.append(body)
        user = body.get("user") if isinstance(body, dict) else None
        if isinstance(user, str) and user.startswith("stub:"):
            for item in user[5:].split(","):
                name, _, value = item.partition("=")
                headers.append((f"x-stub-{name.replace('_', '-')}".encode(), value.encode()))
        sent = False

        async def replay() -> dict:
            nonlocal sent
            if sent:
                return {"type": "http.disconnect"}
            sent = True
            return {"type": "http.request", "body": raw, "more_body": False}

        await self.stub({**scope, "headers": headers}, replay, send)

    def count(self, predicate: Callable[[dict[str, Any]], bool] = lambda b: True) -> int:
        with self.lock:
            return sum(1 for b in self.bodies if predicate(b))


def serve_in_thread(app: Any) -> tuple[str, Callable[[], None]]:
    """Serve an ASGI app on a free port of 127.0.0.1 in a daemon thread; returns (root URL, stop)."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.01)

    def stop() -> None:
        server.should_exit = True
        thread.join(timeout=5)
        sock.close()

    return f"http://127.0.0.1:{port}", stop


def stub_catalog(home: Path, stub_root: str) -> None:
    """Hosted cards on the stub: `stub-chat` (chat, priced) and `stub-embed` (embeddings)."""
    write_catalog(home, hosted_card("stub-chat", f"{stub_root}/v1", price=(1.0, 2.0)),
                  hosted_card("stub-embed", f"{stub_root}/v1", task="embedding", context_length=512))


def make_endpoint(srv: Server, name: str, *deployments: tuple[str, str], concurrency: int | None = None,
                  traffic: dict[str, int] | None = None) -> None:
    r = srv.api("POST", "/api/endpoints", json={"name": name})
    assert r.status_code == 201, r.text
    for dep, model in deployments:
        spec: dict[str, Any] = {"name": dep, "model": model}
        if concurrency:
            spec["request_settings"] = {"max_concurrent_requests_per_instance": concurrency, "max_retries": 0}
        else:
            spec["request_settings"] = {"max_retries": 0}
        r = srv.api("POST", f"/api/endpoints/{name}/deployments", json=spec)
        assert r.status_code == 201, r.text
    if traffic is not None:
        r = srv.api("PATCH", f"/api/endpoints/{name}", json={"traffic": traffic})
        assert r.status_code == 200, r.text


def chat_line(custom_id: str, *, model: str = "chat", url: str = "/v1/chat/completions", **body: Any) -> dict:
    return {"custom_id": custom_id, "method": "POST", "url": url,
            "body": {"model": model, "messages": [{"role": "user", "content": f"question {custom_id}"}],
                     "max_tokens": 8, **body}}


def write_jsonl(path: Path, lines: list[Any]) -> Path:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def wait_batch(client: Any, batch_id: str, statuses: set[str] = TERMINAL, timeout: float = 120) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        batch = client.batches.retrieve(batch_id)
        if batch.status in statuses:
            return batch
        if time.monotonic() > deadline:
            raise AssertionError(f"batch {batch_id} still {batch.status} after {timeout}s: {batch}")
        time.sleep(0.1)


def read_jsonl(client: Any, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    return [json.loads(line) for line in client.files.content(file_id).text.splitlines() if line.strip()]


def submit(client: Any, path: Path, endpoint: str = "/v1/chat/completions", **extra: Any) -> Any:
    with open(path, "rb") as f:
        uploaded = client.files.create(file=f, purpose="batch")
    return client.batches.create(input_file_id=uploaded.id, endpoint=endpoint, completion_window="24h", **extra)


#: small limits so the tests can reach them
GATEWAY_ENV = {"MODELYARD_BATCH_RETRY_BACKOFF_S": "0.05", "MODELYARD_BATCH_MAX_FILE_BYTES": str(64 * 1024),
               "MODELYARD_BATCH_MAX_LINES": "500", "MODELYARD_USAGE_FLUSH_S": "0.1"}
