"""Helpers for the batch tests: a real gateway (`modelyard up` in a subprocess) whose hosted deployments call
the OpenAI stub (tests/openai_stub.py), driven by the official `openai` client and the CLI.

Batch lines cannot carry HTTP headers, so the stub's scripted behaviour is asked for in the request body:
a line whose ``user`` field is ``"stub:status=503,fail_times=2,key=k1,delay_ms=50"`` is read by the stub
as those ``x-stub-*`` headers.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from tests.cards import hosted_card
from tests.live_gateway import Server, write_catalog

TERMINAL = {"completed", "failed", "cancelled", "expired"}


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
