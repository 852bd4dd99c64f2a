"""The catalog's management API (``/api/catalog``): cards with availability, and pulling weights with
progress, against the fake Hugging Face Hub (see conftest.py). What the console's deploy wizard uses."""

from __future__ import annotations

import os
import time

import pytest
import yaml
from starlette.testclient import TestClient

from modelyard.server.app import create_app
from modelyard.settings import Settings

REPO = "test-org/tiny-model-GGUF"
FILE = "tiny-model-q4_k_m.gguf"


def _write_card(settings: Settings, file: str = FILE, model_id: str = "tiny") -> None:
    settings.catalog_dir.mkdir(parents=True, exist_ok=True)
    card = {"id": model_id, "family": "tiny", "task": "chat", "format": "gguf", "license": "mit", "size_bytes": 300_000_000,
            "context_length": 2048, "source": {"type": "hub", "repo": REPO, "file": file, "revision": "main"}}
    (settings.catalog_dir / f"{model_id}.yaml").write_text(yaml.safe_dump([card]))


@pytest.fixture
def api(settings: Settings):
    _write_card(settings)
    _write_card(settings, file="not-on-the-hub.gguf", model_id="missing")
    app = create_app(settings)
    with TestClient(app) as client:
        client.headers["Authorization"] = f"Bearer {app.state.gateway.admin_key}"
        yield client


def _wait(api, model_id: str) -> dict:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        job = api.get(f"/api/catalog/{model_id}/pull").json()
        if job["state"] != "running":
            return job
        time.sleep(0.05)
    raise AssertionError(f"pull of {model_id} still running: {job}")


def test_catalog_lists_cards_with_availability_memory_and_deployments(api):
    cards = {c["id"]: c for c in api.get("/api/catalog").json()["data"]}
    assert cards["tiny"]["available"] is False and cards["tiny"]["availability"] == "not pulled"
    assert cards["tiny"]["memory_mb"] == 300 + 120  # weights + llama.cpp's runtime
    assert cards["gpt-4o"]["memory_mb"] is None and cards["gpt-4o"]["price"]["input_per_1m"] > 0
    assert cards["gemma-3-270m"]["deployments"] == []  # nothing runs in this app
    assert api.get("/api/catalog/nope").json()["error"]["code"] == "model_not_found"


def test_pull_reports_progress_and_makes_the_model_available(api, fake_hub):
    payload = os.urandom(256 * 1024)
    fake_hub.add(REPO, FILE, payload)
    started = api.post("/api/catalog/tiny/pull")
    assert started.status_code == 202 and started.json()["object"] == "catalog.pull"
    job = _wait(api, "tiny")
    assert job["state"] == "succeeded", job
    assert job["bytes_done"] == job["bytes_total"] == len(payload)
    assert job["files"] == {FILE: {"done": len(payload), "total": len(payload)}}
    assert api.get("/api/catalog/tiny").json()["available"] is True
    again = api.post("/api/catalog/tiny/pull")  # already here: nothing to do
    assert again.status_code == 200 and again.json()["state"] == "succeeded"


def test_a_failed_pull_is_an_openai_error_and_leaves_no_file(api, fake_hub, settings):
    assert api.post("/api/catalog/missing/pull").status_code == 202
    job = _wait(api, "missing")
    assert job["state"] == "failed"
    assert job["error"]["code"] == "download_failed" and "not-on-the-hub.gguf" in job["error"]["message"]
    hub = settings.models_dir / "hub"
    assert not [p for p in hub.rglob("*.gguf")] if hub.exists() else True
    assert api.get("/api/catalog/missing").json()["available"] is False


def test_pull_refuses_hosted_models_and_needs_the_admin_key(api):
    hosted = api.post("/api/catalog/gpt-4o/pull")
    assert hosted.status_code == 400 and hosted.json()["error"]["code"] == "hosted_model"
    assert api.get("/api/catalog/tiny/pull").status_code == 404
    anonymous = api.get("/api/catalog", headers={"Authorization": ""})
    assert anonymous.status_code == 401
