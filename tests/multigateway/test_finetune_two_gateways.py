"""Fine-tuning with two gateways on one PostgreSQL and one home: a job created through a gateway that does not
train runs on the one that does, and the tuned model it publishes reaches the other gateway's catalog by change
notice (no restart). Training is `tests/finetune/fake_worker.py`."""

from __future__ import annotations

import signal
import subprocess
import time

import pytest

from tests.finetune.ft_helpers import GATEWAY_ENV, catalog, create, wait_job
from tests.multigateway.conftest import start_gateway


@pytest.fixture(scope="module")
def trainer_and_server(tmp_path_factory, postgres_base_url):
    """A trains (MODELYARD_FINETUNE_ENABLED), B does not; a slow fallback timer, so B learns by notice."""
    home = tmp_path_factory.mktemp("mgw-ft") / "home"
    home.mkdir()
    catalog(home)
    env = {**GATEWAY_ENV, "DATABASE_URL": postgres_base_url, "MODELYARD_LEASE_TTL_S": "3",
           "MODELYARD_KEYS_RELOAD_S": "60"}
    a = start_gateway(home, "a", {**env, "MODELYARD_FINETUNE_ENABLED": "true"})
    try:
        b = start_gateway(home, "b", {**env, "MODELYARD_FINETUNE_ENABLED": "false"})
    except Exception:
        a.stop()
        raise
    yield a, b
    for server in (a, b):
        server.process.send_signal(signal.SIGTERM)
    for server in (a, b):
        try:
            server.process.wait(30)
        except subprocess.TimeoutExpired:
            server.process.kill()


def test_a_job_created_through_a_gateway_that_does_not_train_is_trained_by_the_other_and_served_by_both(
        trainer_and_server, tmp_path):
    a, b = trainer_and_server
    client_b = b.openai()
    job = create(client_b, tmp_path, n=12, suffix="shared")
    done = wait_job(client_b, job.id, timeout=90)
    assert done.status == "succeeded", done.error
    tuned = done.fine_tuned_model
    assert tuned.startswith("tiny-chat:ft-shared-")

    deadline = time.monotonic() + 2.0  # the catalog notice, not B's 60 s timer and not a restart
    while True:
        seen = b.api("GET", f"/api/catalog/{tuned}")
        if seen.status_code == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert seen.status_code == 200, f"gateway B does not know {tuned}: {seen.status_code} {seen.text}"
    assert seen.json()["adapter"]["base"] == "tiny-chat"
